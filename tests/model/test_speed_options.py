"""The model's speed options compute the same model: SDPA with grouped KV heads read in place, fused q/k/v and
gate/up projections, attention masks built once per forward (sliding windows, document masks; SDPA or
FlexAttention), a loss that never holds the whole batch's fp32 logits, and a vocabulary padded for the output
head's matmul. Each is compared with the plain path (fp32, outputs and gradients) on CPU; the layouts are in
tests/parallel/test_speed_options_layouts.py."""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import model.blocks.attention as attention_module
import model.blocks.attention_masks as masks_module
from model import build
from model.config import ModelConfig

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

VOCAB = 101
BASE = dict(vocab_size=VOCAB, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=96, max_seq_len=64)
TOL = dict(rtol=1e-5, atol=1e-5)


def make(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build(ModelConfig(**{**BASE, **overrides}))
    net.init_weights()
    return net


def batch(seed: int = 1, batch_size: int = 2, seq: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    seq_tokens = torch.randint(0, VOCAB, (batch_size, seq + 1), generator=gen)
    return seq_tokens[:, :-1], seq_tokens[:, 1:]


def loss_and_grads(net: torch.nn.Module, tokens, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad()
    loss = net(tokens, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def assert_same_training(got: torch.nn.Module, want: torch.nn.Module, tokens, labels, **tol) -> None:
    """Same logits, loss and every parameter's gradient (same parameter names)."""
    with torch.no_grad():
        torch.testing.assert_close(got(tokens), want(tokens), **(tol or TOL))
    got_loss, got_grads = loss_and_grads(got, tokens, labels)
    want_loss, want_grads = loss_and_grads(want, tokens, labels)
    torch.testing.assert_close(got_loss, want_loss, **(tol or TOL))
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **(tol or TOL), msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------ enable_gqa
def test_grouped_heads_reach_sdpa_unrepeated_with_the_same_result(monkeypatch):
    """The causal (flash) path and the decoding path hand SDPA the H_kv key/value heads with enable_gqa; the
    outputs equal repeating K/V as before."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape[1], k.shape[1], kwargs.get("enable_gqa", False)))
        return sdpa(q, k, v, **kwargs)

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 24, 16, generator=gen) for h in (8, 2, 2))
    inner = attention_module.ScaledDotProductAttention()
    repeated = (attention_module.repeat_kv(k, 4), attention_module.repeat_kv(v, 4))
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.testing.assert_close(inner(q, k, v), sdpa(q, *repeated, is_causal=True), rtol=1e-6, atol=1e-6)
    last = q[:, :, -1:]
    torch.testing.assert_close(inner(last, k, v, q_start=23), sdpa(last, *repeated), rtol=1e-6, atol=1e-6)
    assert seen == [(8, 2, True), (8, 2, True)]


# ------------------------------------------------------------------------------------------------ fused projections
@pytest.mark.parametrize(
    "arch",
    [dict(), dict(qkv_bias=True, mlp_bias=True, n_kv_heads=1, mlp_type="geglu"), dict(head_dim=24, qk_norm=True)],
    ids=["gqa", "mqa-biases-geglu", "headdim-qknorm"],
)
def test_fused_projections_train_like_split_ones_with_the_same_parameters(arch):
    fused, split = make(fused_projections=True, **arch), make(**arch)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [(n, p.shape) for n, p in split.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), split.state_dict().values()))
    assert_same_training(fused, split, *batch())


def test_fused_projections_are_one_matmul_per_group(monkeypatch):
    """Per layer: one matmul for q/k/v, one for gate/up, plus wo and w2 (and the head): 4 * layers + 1."""
    calls = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: (calls.append(a[1].shape), linear(*a, **k))[1])
    net = make(fused_projections=True)
    with torch.no_grad():
        net(batch()[0])
    assert len(calls) == 4 * BASE["n_layers"] + 1
    assert calls[0] == (BASE["dim"] + 2 * 2 * 16, BASE["dim"])  # 4 query heads + 2 key + 2 value heads of 16


# ------------------------------------------------------------------------------------------------ shared masks
def _count_calls(monkeypatch, module, name: str) -> list:
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    return calls


def test_sliding_window_masks_are_built_once_per_forward_not_per_layer(monkeypatch):
    """Gemma-2-like: alternating sliding (window 8) and global layers with soft-capped scores; the masks of the
    forward are built once per distinct window (2), none per layer, and give the per-layer path's numbers."""
    cfg = dict(n_layers=4, sliding_window=8, sliding_window_pattern=2, attn_logit_softcap=20.0)
    shared, per_layer = make(**cfg), make(**cfg)
    monkeypatch.setattr(per_layer, "_shared_masks", lambda tokens, h: None)  # the path before shared masks
    tokens, labels = batch()
    with torch.no_grad():
        want = per_layer(tokens)
    built = _count_calls(monkeypatch, masks_module, "build_attention_mask")
    in_layers = _count_calls(monkeypatch, attention_module, "build_attention_mask")
    with torch.no_grad():
        got = shared(tokens)
    assert (len(built), len(in_layers)) == (2, 0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_same_training(shared, per_layer, tokens, labels, rtol=0, atol=0)


def _packed(docs: list[list[int]], eos: int) -> torch.Tensor:
    return torch.tensor([t for doc in docs for t in doc + [eos]])


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize(
    "arch",
    [dict(), dict(sliding_window=6, sliding_window_pattern=2, attn_logit_softcap=20.0)],
    ids=["llama", "windows-softcap"],
)
def test_document_masking_equals_each_document_alone(backend, arch):
    """A packed row of three documents (each ending in EOS) gives, token for token, the logits of each document
    run alone: attention never crosses a document boundary (RoPE sees only relative positions, so the offset of
    a document in the row changes nothing)."""
    eos = 7
    gen = torch.Generator().manual_seed(5)
    docs = [[int(t) for t in torch.randint(8, VOCAB, (n,), generator=gen)] for n in (9, 14, 11)]
    net = make(document_mask_eos_id=eos, attention_backend=backend, **arch)
    plain = make(**arch)
    row = _packed(docs, eos)[None]
    with torch.no_grad():
        packed = net(row)[0]
        start = 0
        for doc in docs:
            alone = plain(_packed([doc], eos)[None])[0]
            torch.testing.assert_close(packed[start : start + len(doc) + 1], alone, rtol=1e-4, atol=1e-5)
            start += len(doc) + 1
        assert (net(row) - plain(row)).abs().max() > 1e-2  # without the mask, later documents see earlier ones


def test_document_mask_gradients_equal_a_dense_mask_reference():
    """Loss and gradients of document masking (a mask shared by the layers) against an independent dense
    [B, 1, T, T] mask handed to every layer, on two rows with different document boundaries."""
    eos = 3
    tokens, labels = batch(seq=32)
    tokens[tokens == eos] = eos + 1
    tokens[0, [5, 17]] = eos
    tokens[1, [11]] = eos
    net, reference = make(document_mask_eos_id=eos), make()
    q = torch.arange(32)
    doc = torch.stack(
        [torch.bucketize(q, torch.tensor([6, 18]), right=True), torch.bucketize(q, torch.tensor([12]), right=True)]
    )
    dense = (q[None, :, None] >= q[None, None, :]) & (doc[:, :, None] == doc[:, None, :])
    reference._shared_masks = lambda tokens, h: {None: dense[:, None]}
    assert_same_training(net, reference, tokens, labels)


def test_flex_attention_backend_equals_sdpa_in_outputs_and_gradients(monkeypatch):
    """FlexAttention's block masks (sliding windows, documents, softcap by score_mod) against the SDPA backend.
    torch 2.13 refuses FlexAttention's backward on CPU (NotImplementedError in flex_attention's device check), and
    the model says so itself; with both checks lifted, the eager implementation FlexAttention's kernels are generated
    from runs its backward on CPU, which is what the gradients are compared with."""
    cfg = dict(
        sliding_window=6, sliding_window_pattern=2, attn_logit_softcap=20.0, document_mask_eos_id=7, n_kv_heads=1
    )
    flex, sdpa = make(attention_backend="flex", **cfg), make(**cfg)
    tokens, labels = batch()
    tokens[:, [9, 25]] = 7
    flex_calls = _count_calls(monkeypatch, attention_module, "flex_attention")
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens), sdpa(tokens), **TOL)
    assert len(flex_calls) == BASE["n_layers"]
    with pytest.raises(NotImplementedError, match="attention_backend=sdpa on CPU"):
        flex(tokens, labels)
    import torch.nn.attention.flex_attention as torch_flex

    monkeypatch.setattr(torch_flex, "_validate_device", lambda *args: None)
    monkeypatch.setattr(masks_module, "check_flex_device", lambda q: None)
    assert_same_training(flex, sdpa, tokens, labels)


def test_every_option_compiles_as_one_graph():
    """The GPU rows run the whole model under torch.compile: with every option on (shared window and document
    masks, softcap, fused projections, padded vocabulary) it traces without a graph break (fullgraph) and trains
    like eager; FlexAttention's block masks trace too (forward: its CPU backward is refused, see above)."""
    cfg = dict(
        sliding_window=8,
        sliding_window_pattern=2,
        attn_logit_softcap=20.0,
        document_mask_eos_id=5,
        fused_projections=True,
        vocab_multiple=128,
    )
    tokens, labels = batch()
    tokens[:, [7, 20]] = 5
    eager, compiled = make(**cfg), make(**cfg)
    compiled = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    want_loss, want_grads = loss_and_grads(eager, tokens, labels)
    got_loss, got_grads = loss_and_grads(compiled, tokens, labels)
    torch.testing.assert_close(got_loss, want_loss, **TOL)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[f"_orig_mod.{name}"], grad, **TOL)
    flex = torch.compile(make(attention_backend="flex", **cfg), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens), eager(tokens), **TOL)


def test_document_ids_close_each_document_with_its_eos():
    tokens = torch.tensor([[4, 9, 0, 5, 0, 0, 6], [0, 1, 2, 3, 4, 5, 6]])
    assert masks_module.document_ids(tokens, 0).tolist() == [[0, 0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]


# ------------------------------------------------------------------------------------------------ loss memory
class Fp32LogitBytes(TorchDispatchMode):
    """Bytes of fp32 tensors of logit width (last dim `width`) created by ops and still referenced, through the
    dispatcher (current and peak), and the largest such tensor's element count."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.live: dict[int, list] = {}  # storage data_ptr -> [bytes, tensors referencing it, logit-shaped]
        self.current = self.peak = self.largest = 0

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0] if entry[2] else 0
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or not t.untyped_storage().data_ptr():
                continue
            ptr = t.untyped_storage().data_ptr()
            logit = t.dtype == torch.float32 and t.dim() >= 1 and t.shape[-1] == self.width
            if logit:
                self.largest = max(self.largest, t.numel())
            if ptr in self.live:
                self.live[ptr][1] += 1
            else:
                self.live[ptr] = [t.untyped_storage().nbytes(), 1, logit]
                if logit:
                    self.current += self.live[ptr][0]
                    self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, ptr)
        return out


def _fp32_logit_memory(chunk_size: int) -> tuple[Fp32LogitBytes, float]:
    """One bf16-autocast training step (z-loss, final-logit softcap, vocabulary 2000 padded to 2048) on 4 x 64
    tokens, traced."""
    torch.manual_seed(0)
    net = build(
        ModelConfig(
            vocab_size=2000,
            vocab_multiple=128,
            dim=32,
            n_layers=1,
            n_heads=2,
            hidden_dim=64,
            max_seq_len=64,
            loss_chunk_size=chunk_size,
            z_loss_weight=1e-3,
            final_logit_softcap=30.0,
        )
    )
    net.init_weights()
    tokens, labels = (torch.randint(0, 2000, (4, 64), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    tracker = Fp32LogitBytes(2048)
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(tokens, labels)
        loss.backward()
    return tracker, loss.item()


def test_training_loss_never_holds_the_whole_batchs_fp32_logits():
    """Chunks of 32 tokens: no fp32 logits tensor larger than one chunk exists in forward or backward, and the
    peak of live fp32 logits is the number of chunks (8) times lower than with the whole batch as one chunk; the
    loss is the same."""
    chunked, chunked_loss = _fp32_logit_memory(32)
    whole, whole_loss = _fp32_logit_memory(4096)
    assert chunked.largest == 32 * 2048 and whole.largest == 256 * 2048
    assert chunked.peak * 8 <= whole.peak, (chunked.peak, whole.peak)
    assert chunked.peak <= 6 * 32 * 2048 * 4  # a few chunk-sized fp32 tensors: upcast, log-softmax, gradients
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)


# ------------------------------------------------------------------------------------------------ vocab padding
def test_padded_vocabulary_trains_like_the_real_one_and_never_predicts_padding():
    """vocab 101 padded to 128 columns in the head's matmul: parameters keep 101 rows, the logits a caller sees
    have 101 columns, and loss, z-loss, softcap and gradients equal the unpadded model's."""
    from model.counting import count_parameters

    cfg = dict(z_loss_weight=1e-3, final_logit_softcap=15.0, tie_embeddings=True)
    padded, plain = make(vocab_multiple=128, **cfg), make(**cfg)
    assert padded.cfg.padded_vocab_size == 128 and padded.output.weight.shape == (VOCAB, BASE["dim"])
    assert count_parameters(padded.cfg) == count_parameters(plain.cfg) == sum(p.numel() for p in padded.parameters())
    tokens, labels = batch()
    assert_same_training(padded, plain, tokens, labels)
    head = padded._head(torch.randn(5, BASE["dim"]))
    assert head.shape == (5, 128) and torch.isneginf(head[:, VOCAB:]).all()
    with torch.no_grad():
        logits = padded(tokens)
    assert logits.shape[-1] == VOCAB and torch.isfinite(logits).all()


def test_speed_options_export_to_hugging_face_and_back(tmp_path: Path):
    """A model with every speed option exports like the plain model (same tensors, transformers computes the same
    logits) and imports back to the same weights."""
    transformers = pytest.importorskip("transformers")
    from model.checkpoint_io import load_model_checkpoint, save_model_checkpoint
    from model.hf import export_checkpoint, import_checkpoint

    net = make(vocab_multiple=128, fused_projections=True, tie_embeddings=True)
    save_model_checkpoint(net.state_dict(), net.cfg, tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.vocab_size == VOCAB
    tokens = batch()[0]
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, net(tokens), rtol=1e-4, atol=1e-4)
    import_checkpoint(tmp_path / "hf", tmp_path / "back")
    state, cfg = load_model_checkpoint(tmp_path / "back")
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    back = build(dataclasses.replace(cfg, vocab_multiple=128, fused_projections=True))
    back.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), net(tokens), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_backend="xformers"), "attention_backend"),
        (dict(vocab_multiple=0), "vocab_multiple"),
        (dict(document_mask_eos_id=VOCAB), "document_mask_eos_id"),
        (dict(pos_embedding="alibi", attention_backend="flex"), "ALiBi"),
    ],
)
def test_bad_speed_options_fail_when_the_config_is_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**BASE, **overrides})


@pytest.mark.parametrize(
    "parallel, model_overrides, message",
    [
        (dict(cp=2), dict(document_mask_eos_id=0), "document_mask_eos_id"),
        (dict(pp=2), dict(document_mask_eos_id=0), "document_mask_eos_id"),
        (dict(cp=2), dict(attention_backend="flex"), "attention_backend=flex"),
        (dict(tp=2), dict(vocab_size=102, vocab_multiple=128), "vocab_multiple"),
        (dict(float8="rowwise"), dict(fused_projections=True), "fused_projections"),
    ],
)
def test_layouts_that_cannot_carry_an_option_are_refused_before_any_process_group(parallel, model_overrides, message):
    from parallel import ParallelDims
    from parallel.config import ParallelConfig

    with pytest.raises(ValueError, match=message):
        ParallelDims.from_config(ParallelConfig(**parallel), 2, ModelConfig(**{**BASE, **model_overrides}), 32)
