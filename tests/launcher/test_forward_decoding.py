"""Greedy decoding by full forwards (launcher/forward_decoding.py, the path of tensor and context parallel) gives
model.generation's KV-cache greedy tokens: batched prompts of different lengths right-padded to a layout's wider
and taller shape, rows ended by a stop id, by `stop_when` or by max_new_tokens. Across ranks it runs in lockstep:
a rank with no prompts runs as many forwards as the one still decoding."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from launcher.forward_decoding import decode_by_forwards
from model import build
from model.config import ModelConfig
from model.generation import generate

PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11, 12, 13, 14]]


def peaky_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(ModelConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64))
    with torch.no_grad():  # a peaky random model, so greedy choices are far from ties
        model.output.weight.mul_(20)
    return model.eval()


class PaddingModule:
    """The TrainModule surface decode_by_forwards uses, over a plain model: batches padded to a multiple of 4
    wide and one row taller (as context parallel and pipeline parallel pad them), forwards counted; `collective`
    adds an all-reduce to every forward, as a sharded layout's forward has."""

    def __init__(self, model: torch.nn.Module, collective: bool = False) -> None:
        self.model, self.collective, self.forwards = model, collective, 0
        self.env = SimpleNamespace(device=torch.device("cpu"))

    def scoring_shape(self, rows: int, width: int) -> tuple[int, int]:
        return rows + 1, -(-width // 4) * 4

    @torch.no_grad()
    def next_tokens(self, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if self.collective:
            dist.all_reduce(torch.zeros(1))
        return self.model(tokens).argmax(-1).gather(1, at[:, None]).squeeze(1)


def test_forward_decoding_equals_kv_cache_greedy_with_stops():
    model = peaky_model()
    free = generate(model, PROMPTS, 8, greedy=True)
    assert decode_by_forwards(PaddingModule(model), PROMPTS, 8) == free
    stop_id = free[0][2]  # row 0 ends at its third token (kept); row 1 at two tokens at most
    stops = [stop_id, 60]

    def stop_when(rows: list[list[int]]) -> list[bool]:
        return [index == 1 and len(row) >= 2 for index, row in enumerate(rows)]

    expected = generate(model, PROMPTS, 8, greedy=True, stop_tokens=stops, pad_id=3, stop_when=stop_when)
    module = PaddingModule(model)
    got = decode_by_forwards(module, PROMPTS, 8, stop_ids=stops, pad_id=3, stop_when=stop_when)
    assert got == expected
    assert len(got[0]) == 3 and got[0][-1] == stop_id and len(got[1]) <= 2 and 8 in map(len, got)
    assert module.forwards == max(len(row) for row in got)


def _lockstep_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        module = PaddingModule(peaky_model(), collective=True)
        got = decode_by_forwards(module, PROMPTS if rank == 0 else [], 5)
        if rank == 0:
            torch.save({"tokens": got, "forwards": module.forwards}, out)
        else:
            torch.save({"tokens": got, "forwards": module.forwards}, out + ".1")
    finally:
        dist.destroy_process_group()


def test_ranks_decode_in_lockstep(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_lockstep_worker, args=(port, out), nprocs=2, join=True)
    first, second = torch.load(out), torch.load(out + ".1")
    assert first["tokens"] == generate(peaky_model(), PROMPTS, 5, greedy=True)
    assert second["tokens"] == [] and first["forwards"] == second["forwards"] == 5
