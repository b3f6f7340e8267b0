"""Loom's torch-layout step (launcher.train_modules.torch_layouts: micro batches, clipping, fused AdamW, lr schedule)
makes no host sync, alone and under FSDP2 on a 1-rank mesh, in fp32 and bf16: checked on CPU by recording every op that
would read device data on the host (benchmarks/host_sync.py); the GPU check adds CUDA's own sync debug mode."""

from __future__ import annotations

import torch
import torch.distributed as dist
from host_sync import SyncRecorder, host_syncs_in_step


def _model_config():
    from model.config import ModelConfig

    return ModelConfig(
        name="sync-test", vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64
    )


def test_fsdp_one_rank_step_has_no_host_sync():
    """(The single-process fp32/bf16 and this layout also run in gpu_check's own check, tests/benchmarks/
    test_gpu_check.py; this one keeps the promise tested if that end-to-end run is ever moved out.)"""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert host_syncs_in_step(_model_config(), torch.device("cpu"), layout="fsdp", precision="bf16") == []
    finally:
        dist.destroy_process_group()


def test_a_sync_in_the_step_is_caught(monkeypatch):
    """The check can fail: a clip that reads its norm on the host (what torch's clip with error_if_nonfinite, or
    an `if norm > max_norm:` would do) is reported with where it was written."""
    import launcher.train_modules.torch_layouts as torch_layouts

    real_clip = torch_layouts.clip_grad_norm_

    def clip_reading_the_norm(parameters, max_norm):
        norm = real_clip(parameters, max_norm)
        if norm > max_norm:  # bool() of a device tensor
            pass
        return norm

    monkeypatch.setattr(torch_layouts, "clip_grad_norm_", clip_reading_the_norm)
    found = host_syncs_in_step(_model_config(), torch.device("cpu"))
    assert len(found) == 1 and found[0].startswith("aten::_local_scalar_dense at test_host_sync.py:"), found


def test_recorder_names_each_kind_of_host_read():
    x = torch.randn(3)
    with SyncRecorder(torch.device("cpu")) as found:
        x.sum().item()
        float(x.max())
        x.tolist()
        x.cpu()
        x.nonzero()
    assert [line.split(" at ")[0] for line in found] == [
        "aten::_local_scalar_dense",
        "aten::_local_scalar_dense",
        "Tensor.tolist",
        "Tensor.cpu",
        "aten::nonzero",
    ]
