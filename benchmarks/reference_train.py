"""A plain single-GPU training loop, written the way a careful engineer writes one by hand: the yardstick Loom's
trainer is timed against (benchmarks/gpu_check.py runs both on the same shapes and the same GPU).

One file and no Loom import, so nothing of Loom's can make the yardstick slow or fast. What a careful engineer
does for speed on one GPU is here: the whole model under one `torch.compile`, fused AdamW, SDPA's causal flash
path (with `enable_gqa` instead of repeating K/V), fused QKV and gate/up projections, bf16 autocast, TF32 for any
fp32 matmul, synthetic tokens already on the device, gradient clipping without a host sync, and no host sync in
the timed loop. The model is given as Loom's resolved model config (`--model-json`: every key, as
benchmarks/gpu_check.py writes it from Loom's ModelConfig, which holds the defaults), the GPT-2 and Llama families
only, so both sides train exactly the same architecture size (tests/benchmarks/test_gpu_check.py checks the
parameter counts agree with Loom's).

Timing: `--warmup` steps (compilation, autotuning, allocator growth) are left out, then each of `--steps` steps is
bracketed by CUDA events (on CPU, which runs synchronously, by the host clock); tokens/s is batch x seq over the
median step time. Peak memory is torch's peak allocation for the whole run (what Loom's metrics report too).

    python benchmarks/reference_train.py --model-json gpt2_124m.json --batch 32 --seq 1024
    python benchmarks/reference_train.py --model-json llama3_1b.json --batch 8 --seq 2048

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

# Config keys whose non-default values this reference does not implement: refused rather than silently ignored.
_UNSUPPORTED = {
    "sliding_window": None,
    "attn_logit_softcap": None,
    "final_logit_softcap": None,
    "qk_norm": False,
    "moe": None,
    "norm_position": "pre",
}


@dataclass
class Shape:
    family: str  # gpt2 (LayerNorm, learned positions, GELU, biases) | llama (RMSNorm, RoPE, SwiGLU, no biases)
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    tie_embeddings: bool
    init_std: float
    max_seq_len: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None


def load_shape(cfg: dict[str, Any]) -> Shape:
    """The shape of a model config given with every key resolved (Loom's ModelConfig as a dict: what
    `--model-json` holds; benchmarks/gpu_check.py writes it), refusing what this loop does not implement."""
    name = cfg.get("name", "model")
    for key, default in _UNSUPPORTED.items():
        if cfg.get(key, default) != default:
            raise SystemExit(f"{name}: {key}={cfg[key]!r} is not implemented by the reference loop")
    if cfg["z_loss_weight"]:
        raise SystemExit(f"{name}: z_loss_weight is not implemented by the reference loop")
    gpt2 = (cfg["pos_embedding"], cfg["norm_type"], cfg["mlp_type"]) == ("learned", "layernorm", "gelu")
    llama = (cfg["pos_embedding"], cfg["norm_type"], cfg["mlp_type"]) == ("rope", "rmsnorm", "swiglu")
    if not (gpt2 or llama):
        raise SystemExit(
            f"{name}: the reference loop knows GPT-2 (learned/layernorm/gelu) and Llama "
            f"(rope/rmsnorm/swiglu) models only"
        )
    dim, n_heads = cfg["dim"], cfg["n_heads"]
    hidden = cfg.get("hidden_dim")
    if hidden is None:  # GPT-2's 4 x dim; Llama's 2/3 of 4 x dim, times the multiplier, rounded up
        if gpt2:
            hidden = 4 * dim
        else:
            hidden = int(2 * 4 * dim / 3)
            if cfg.get("ffn_dim_multiplier") is not None:
                hidden = int(cfg["ffn_dim_multiplier"] * hidden)
            multiple = cfg["multiple_of"]
            hidden = multiple * math.ceil(hidden / multiple)
    scaling = cfg.get("rope_scaling")
    return Shape(
        family="gpt2" if gpt2 else "llama",
        vocab_size=cfg["vocab_size"],
        dim=dim,
        n_layers=cfg["n_layers"],
        n_heads=n_heads,
        n_kv_heads=cfg.get("n_kv_heads") or n_heads,
        head_dim=cfg.get("head_dim") or dim // n_heads,
        hidden_dim=hidden,
        norm_eps=cfg["norm_eps"],
        tie_embeddings=cfg["tie_embeddings"],
        init_std=cfg["init_std"],
        max_seq_len=cfg["max_seq_len"],
        rope_theta=cfg["rope_theta"],
        rope_scaling=scaling if scaling and scaling.get("type", "none") != "none" else None,
    )


# ------------------------------------------------------------------------------------------------ the model
def rope_tables(shape: Shape, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [seq_len, head_dim] (rotate-half layout), with Llama 3's frequency scaling when configured."""
    inv_freq = 1.0 / shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float64) / shape.head_dim)
    s = shape.rope_scaling
    if s is not None:
        if s["type"] != "llama3":
            raise SystemExit(f"rope_scaling type {s['type']!r} is not implemented by the reference loop")
        wavelen = 2 * math.pi / inv_freq
        low, high = s["original_max_seq_len"] / s["low_freq_factor"], s["original_max_seq_len"] / s["high_freq_factor"]
        smooth = (
            (s["original_max_seq_len"] / wavelen - s["low_freq_factor"])
            / (s["high_freq_factor"] - s["low_freq_factor"])
        ).clamp(0, 1)
        blended = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
        inv_freq = torch.where(wavelen > low, inv_freq / s["factor"], torch.where(wavelen < high, inv_freq, blended))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos[:, None] + rotated * sin[:, None]).type_as(x)


class Attention(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.s = s
        bias = s.family == "gpt2"
        self.qkv = nn.Linear(s.dim, (s.n_heads + 2 * s.n_kv_heads) * s.head_dim, bias=bias)
        self.proj = nn.Linear(s.n_heads * s.head_dim, s.dim, bias=bias)

    def forward(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        s, (b, t, _) = self.s, x.shape
        q, k, v = self.qkv(x).split(
            [s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, s.n_kv_heads * s.head_dim], dim=-1
        )
        q, k, v = (
            q.view(b, t, s.n_heads, s.head_dim),
            k.view(b, t, s.n_kv_heads, s.head_dim),
            v.view(b, t, s.n_kv_heads, s.head_dim),
        )
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            enable_gqa=s.n_kv_heads != s.n_heads,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.gated = s.family == "llama"
        self.up = nn.Linear(s.dim, (2 if self.gated else 1) * s.hidden_dim, bias=not self.gated)
        self.proj = nn.Linear(s.hidden_dim, s.dim, bias=not self.gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(self.up(x), approximate="tanh"))


def norm(s: Shape) -> nn.Module:
    return nn.LayerNorm(s.dim, eps=s.norm_eps) if s.family == "gpt2" else nn.RMSNorm(s.dim, eps=s.norm_eps)


class Block(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(s), Attention(s), norm(s), MLP(s)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, s: Shape, seq_len: int) -> None:
        super().__init__()
        if seq_len > s.max_seq_len:
            raise SystemExit(f"--seq {seq_len} exceeds the model's max_seq_len {s.max_seq_len}")
        self.s = s
        self.tok = nn.Embedding(s.vocab_size, s.dim)
        self.pos = nn.Embedding(s.max_seq_len, s.dim) if s.family == "gpt2" else None
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.norm = norm(s)
        self.head = nn.Linear(s.dim, s.vocab_size, bias=False)
        if s.tie_embeddings:
            self.head.weight = self.tok.weight
        if s.family == "llama":
            cos, sin = rope_tables(s, seq_len)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        std = self.s.init_std
        if isinstance(module, nn.Linear):
            # Residual-branch outputs smaller, by 1/sqrt(2 x layers) (GPT-2).
            scale = 1 / math.sqrt(2 * self.s.n_layers) if module.out_features == self.s.dim else 1.0
            nn.init.normal_(module.weight, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.tok(tokens)
        rope = None
        if self.pos is not None:
            x = x + self.pos(torch.arange(t, device=tokens.device))
        else:
            rope = (self.cos[:t], self.sin[:t])
        for block in self.blocks:
            x = block(x, rope)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # .parameters() yields a tied weight once


# ------------------------------------------------------------------------------------------------ training
def train(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    model_cfg = json.loads(args.model_json.read_text())
    shape = load_shape(model_cfg)
    model = GPT(shape, args.seq).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=True,
    )
    step_model = torch.compile(model, backend=args.compile_backend) if args.compile else model
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    )
    generator = torch.Generator(device).manual_seed(args.seed)
    batches = torch.randint(
        0, shape.vocab_size, (args.distinct_batches, args.batch, args.seq + 1), device=device, generator=generator
    )

    def step(i: int) -> torch.Tensor:
        batch = batches[i % len(batches)]
        with autocast:
            loss = step_model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)  # returns a tensor: no host sync
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    started = time.perf_counter()
    first_loss = float(step(0))  # a sync during warm-up is harmless
    for i in range(1, args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started

    times: list[float] = []
    wall_start = time.perf_counter()
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
        events[0].record()
        for i in range(args.steps):
            loss = step(args.warmup + i)
            events[i + 1].record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1000 for a, b in zip(events, events[1:])]
    else:
        for i in range(args.steps):
            t0 = time.perf_counter()
            loss = step(args.warmup + i)
            times.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - wall_start
    tokens = args.batch * args.seq
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _host_peak_bytes()
    return {
        "system": "reference",
        "config": model_cfg.get("name"),
        "batch": args.batch,
        "seq": args.seq,
        "precision": args.precision,
        "compile": args.compile_backend if args.compile else None,
        "params": count_parameters(model),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_time_median_s": statistics.median(times),
        "tokens_per_sec": tokens / statistics.median(times),
        "tokens_per_sec_wall": tokens * args.steps / wall_s,
        "warmup_s": warmup_s,
        "peak_mem_gib": peak / 2**30,
        "first_loss": first_loss,
        "last_loss": float(loss),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def _host_peak_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-json",
        required=True,
        type=Path,
        help="the model config with every key resolved, as JSON (GPT-2 or Llama family): e.g. the "
        "`model` section of `python -m launcher.train model=gpt2_124m --cfg job --resolve`",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--distinct-batches", type=int, default=4, help="synthetic batches cycled through")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be >= 1")
    print(json.dumps(train(args)), flush=True)


if __name__ == "__main__":
    main()
