"""The decoder: build from configs, shapes/dtypes/causality, meta-device init, init statistics, the chunked loss,
auxiliary-loss bookkeeping and pipeline-stage slicing."""

import math

import pytest
import torch

from model import build
from model.config import ModelConfig
from model.loss import cross_entropy_loss

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, max_seq_len=32, multiple_of=16)
ARCHITECTURES = {
    "llama": dict(n_kv_heads=2),
    "gpt2": dict(
        norm_type="layernorm",
        norm_bias=True,
        pos_embedding="learned",
        mlp_type="gelu",
        mlp_bias=True,
        qkv_bias=True,
        attn_out_bias=True,
        tie_embeddings=True,
    ),
    "mistral": dict(n_kv_heads=1, sliding_window=4),
    "alibi_post": dict(pos_embedding="alibi", norm_position="post"),
    "gemma_like": dict(
        norm_position="sandwich", attn_logit_softcap=20.0, final_logit_softcap=10.0, qk_norm=True, z_loss_weight=1e-3
    ),
    "moe": dict(n_kv_heads=2, moe=dict(num_experts=4, top_k=2, num_shared_experts=1, first_dense=1)),
    "nope": dict(pos_embedding="none"),
}


def make(arch: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(ModelConfig(**{**SMALL, **ARCHITECTURES[arch], **extra}))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_dtype_causality(arch, dtype):
    model = make(arch).to(dtype)
    tokens = torch.randint(0, 97, (2, 12))
    logits = model(tokens)
    assert logits.shape == (2, 12, 97) and logits.dtype == dtype
    t = 7
    perturbed = tokens.clone()
    perturbed[:, t] = (perturbed[:, t] + 1) % 97
    logits2 = model(perturbed)
    if arch == "moe":
        # Expert batches change size when any token's routing changes, so matmuls may round differently in the
        # last bit; causality then shows as "earlier logits change by rounding only, later ones by a lot".
        atol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(logits[:, :t], logits2[:, :t], rtol=0, atol=atol)
        assert (logits[:, t:] - logits2[:, t:]).abs().max() > 10 * atol
    else:
        assert torch.equal(logits[:, :t], logits2[:, :t]), "a future token changed an earlier logit"
        assert not torch.equal(logits[:, t:], logits2[:, t:])
    loss = model(tokens, tokens)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_loss_is_mean_ce_plus_weighted_aux_losses_and_aux_are_logged_detached():
    model = make("moe", z_loss_weight=1e-2)
    tokens = torch.randint(0, 97, (2, 10))
    labels = tokens.clone()
    labels[0, :3] = -100
    loss = model(tokens, labels)
    aux = dict(model.last_loss_terms)
    assert set(aux) == {"ce_loss", "z_loss", "moe_aux_loss", "moe_router_z_loss"}
    assert list(model.last_aux_losses) == ["moe_aux_loss", "moe_router_z_loss"]  # what a trainer logs
    assert all(not v.requires_grad and v.dim() == 0 for v in aux.values())
    logits = model(tokens)
    torch.testing.assert_close(aux["ce_loss"], cross_entropy_loss(logits, labels), rtol=1e-5, atol=1e-6)
    moe_cfg = model.cfg.moe
    expected = (
        aux["ce_loss"]
        + 1e-2 * aux["z_loss"]
        + moe_cfg.aux_loss_weight * aux["moe_aux_loss"]
        + moe_cfg.router_z_loss_weight * aux["moe_router_z_loss"]
    )
    torch.testing.assert_close(loss.detach(), expected)
    for layer in model.layers.values():  # nothing graph-holding left behind on the modules
        assert layer.moe is None or layer.moe.aux_loss is None


def test_chunked_loss_equals_full_loss_and_never_builds_full_logits():
    model = make("llama", loss_chunk_size=7, z_loss_weight=1e-3, final_logit_softcap=5.0)
    tokens = torch.randint(0, 97, (3, 10))
    labels = torch.randint(0, 97, (3, 10))
    labels[1, 4:] = -100
    rows_seen = []
    handle = model.output.register_forward_hook(lambda m, i, o: rows_seen.append(o.reshape(-1, 97).shape[0]))
    loss = model(tokens, labels)
    loss.backward()
    handle.remove()
    assert max(rows_seen) <= 7
    chunked_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = cross_entropy_loss(model(tokens), labels, z_loss_weight=1e-3)
    full.backward()
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(chunked_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_meta_device_build_then_materialise():
    cfg = ModelConfig(**{**SMALL, **ARCHITECTURES["gpt2"]})
    cfg_rope = ModelConfig(**{**SMALL, **ARCHITECTURES["llama"], "tie_embeddings": True})
    for c in (cfg, cfg_rope):
        with torch.device("meta"):
            model = build(c)
        assert all(p.is_meta for p in model.parameters())
        model.to_empty(device="cpu")
        model.init_weights()
        assert model.output.weight is model.tok_embeddings.weight
        reference = build(c)
        if model.rope is not None:
            torch.testing.assert_close(model.rope.cos, reference.rope.cos)
            torch.testing.assert_close(model.rope.sin, reference.rope.sin)
        logits = model(torch.randint(0, 97, (1, 8)))
        assert torch.isfinite(logits).all()


def test_alibi_buffers_restored_after_meta_init():
    cfg = ModelConfig(**{**SMALL, **ARCHITECTURES["alibi_post"]})
    with torch.device("meta"):
        model = build(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.layers["0"].attention.alibi_slopes, build(cfg).layers["0"].attention.alibi_slopes)


def test_init_statistics():
    cfg = ModelConfig(
        vocab_size=512,
        dim=256,
        n_layers=8,
        n_heads=4,
        multiple_of=64,
        init_std=0.02,
        qkv_bias=True,
        moe=dict(num_experts=2, top_k=1, first_dense=7),
    )
    torch.manual_seed(0)
    model = build(cfg)
    out_std = 0.02 / math.sqrt(16)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        elif name.endswith(("wo.weight", "w2.weight", "experts.w2")):
            assert p.std().item() == pytest.approx(out_std, rel=0.1), name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name


def test_pipeline_stages_compose_to_the_full_model():
    model = make("llama", n_layers=4)
    tokens = torch.randint(0, 97, (2, 9))
    full = model(tokens)
    stage0, stage1 = make("llama", n_layers=4), make("llama", n_layers=4)
    for key in ("2", "3"):
        del stage0.layers[key]
    for key in ("0", "1"):
        del stage1.layers[key]
    stage0.norm, stage0.output, stage1.tok_embeddings = None, None, None
    hidden = stage0(tokens)
    assert hidden.shape == (2, 9, 32)
    torch.testing.assert_close(stage1(hidden), full)


def test_positions_argument():
    model = make("llama")
    tokens = torch.randint(0, 97, (2, 6))
    default = model(tokens)
    torch.testing.assert_close(model(tokens, positions=torch.arange(6)), default)
    torch.testing.assert_close(model(tokens, positions=torch.arange(6).expand(2, 6)), default)
    # RoPE attention is shift invariant: the same tokens at positions 10..15 give the same logits
    torch.testing.assert_close(model(tokens, positions=torch.arange(10, 16)), default, rtol=1e-4, atol=1e-5)
    gpt2 = make("gpt2")
    assert not torch.allclose(gpt2(tokens, positions=torch.arange(10, 16)), gpt2(tokens))


def test_bad_config_fails_early_with_the_key_named():
    with pytest.raises(ValueError, match="n_kv_heads"):
        build(ModelConfig(**{**SMALL, "n_kv_heads": 3}))
    with pytest.raises(ValueError, match="nheads"):
        build({**SMALL, "nheads": 4})
    model = make("llama")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 40, dtype=torch.long))


def test_yaml_configs_build():
    from pathlib import Path

    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[2] / "configs" / "model"
    expected = {"tiny": 0, "mixtral_tiny": 4, "moe": 3}  # number of MoE layers
    for name, n_moe in expected.items():
        node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(root / f"{name}.yaml"))
        model = build(node)
        assert model.cfg.name == name
        assert sum(layer.moe is not None for layer in model.layers.values()) == n_moe
        assert model(torch.randint(0, model.cfg.vocab_size, (1, 8))).shape == (1, 8, model.cfg.vocab_size)
    tiny = build(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(root / "tiny.yaml"))).cfg
    assert (tiny.vocab_size, tiny.dim, tiny.n_layers, tiny.n_heads, tiny.kv_heads, tiny.max_seq_len) == (
        2048,
        128,
        4,
        4,
        2,
        256,
    )


def test_moe_aux_loss_gradients_survive_activation_checkpointing():
    """The router losses leave the MoE as module attributes, not outputs; with (non-reentrant) activation
    checkpointing around each block their gradients must still reach the router."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    cfg = dict(moe=dict(num_experts=4, top_k=2, aux_loss_weight=1.0, router_z_loss_weight=1.0))
    plain = make("llama", **cfg)
    wrapped = make("llama", **cfg)
    for key in list(wrapped.layers.keys()):
        wrapped.layers[key] = checkpoint_wrapper(wrapped.layers[key])
    tokens = torch.randint(0, 97, (2, 8))
    plain(tokens, tokens).backward()
    wrapped(tokens, tokens).backward()
    plain_grads = dict(plain.named_parameters())
    for name, p in wrapped.named_parameters():
        reference = plain_grads[name.replace("._checkpoint_wrapped_module", "")].grad
        torch.testing.assert_close(p.grad, reference, rtol=1e-5, atol=1e-7, msg=name)
    for layer in wrapped.layers.values():  # the backward's recomputation left no graph on the modules
        moe = layer._checkpoint_wrapped_module.moe
        assert moe is None or moe.aux_loss is None


@pytest.mark.parametrize("arch", ["llama", "gemma_like"])
def test_hidden_states_through_the_head_give_the_logits(arch):
    model = make(arch, vocab_multiple=64).eval()  # a padded head (97 -> 128 columns), and a softcap for gemma
    tokens = torch.randint(0, SMALL["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
        hidden = model(tokens, hidden_states=True)
        assert hidden.shape == (2, 12, model.cfg.dim)
        torch.testing.assert_close(model.logits(hidden[1, 3:7]), logits[1, 3:7])
