"""A device's peak dense bf16 FLOP/s: the denominator of MFU, whose numerator is model/counting.py's FLOPs.

Kept below its users (the trainer's speed meter, the layout estimate in parallel/estimate.py, the GPU benchmark),
which may all import model/; it knows device names, nothing about layouts or runs.
"""

from __future__ import annotations

import re

# Peak dense (no sparsity) bf16 tensor-core throughput in TFLOP/s, from the vendors' datasheets. Matched in order
# against a lower-cased device name (torch.cuda.get_device_name() or a short name such as "H100 SXM"), so more
# specific patterns come first.
_PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"gh200", 989.0),
    (r"h200", 989.0),
    (r"h100.*pcie", 756.0),
    (r"h100.*nvl", 835.0),
    (r"h100", 989.0),  # SXM5 / HBM3 (torch reports "NVIDIA H100 80GB HBM3")
    (r"h800", 989.0),
    (r"b200", 2250.0),
    (r"a100", 312.0),
    (r"a800", 312.0),
    (r"l40s", 362.0),
    (r"\bl4\b", 121.0),
    (r"\ba10\b", 125.0),
    (r"mi300x", 1307.0),
    (r"mi250x", 383.0),
)


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device, or None when unknown (CPU, unlisted GPU): MFU is then undefined."""
    name = device_name.lower()
    for pattern, tflops in _PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops * 1e12
    return None
