"""The Hugging Face family registry (model/hf/registry.py): it picks a config's family exactly as the hand-written
decision list it replaced did, a family added as one new file is recognised by config and by model_type, and the
registry names no family (so adding one edits nothing else)."""

from __future__ import annotations

import ast
import itertools
import random
import shutil
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.family import Family
from model.hf.registry import REGISTRY, FamilyRegistry

HF_DIR = Path(__file__).resolve().parents[2] / "model" / "hf"
TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64, hidden_dim=96)


def decision_list(cfg) -> str:
    """model/hf/families.py's `_guess` as it stood before the registry (commit 9740e0d), kept as the reference
    the registry's priorities must reproduce."""
    moe = cfg.moe
    if cfg.pos_embedding == "learned" or cfg.norm_type == "layernorm" or cfg.mlp_type == "gelu":
        return "gpt2"
    if cfg.mla is not None:
        return "deepseek_v3" if moe is not None and (moe.score_func == "sigmoid" or moe.expert_bias) else "deepseek_v2"
    if moe is not None:
        if moe.shared_expert_gate:
            return "qwen2_moe"
        if cfg.qk_norm:
            return "qwen3_moe"
        if moe.num_shared_experts or moe.expert_bias:
            return "ernie4_5_moe"
        return "mixtral"
    gemma = (
        cfg.rmsnorm_unit_offset
        or cfg.scale_embeddings
        or cfg.mlp_type == "geglu"
        or cfg.norm_position == "sandwich"
        or cfg.query_pre_attn_scalar is not None
    )
    if gemma:
        return "gemma3_text" if cfg.qk_norm or cfg.local_rope_theta is not None else "gemma2"
    if cfg.norm_position == "branch_output":
        return "olmo2"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.qkv_bias and not cfg.attn_out_bias:
        return "qwen2"
    if cfg.rope_scaling.type == "longrope":
        return "phi3"
    if cfg.sliding_window is not None:
        return "mistral"
    return "llama"


FEATURES = dict(  # every config field either the old decision list or a family's `matches` reads
    pos_embedding=("rope", "learned"),
    norm_type=("rmsnorm", "layernorm"),
    mlp_type=("swiglu", "gelu", "geglu"),
    mla=(None, "latent"),
    qk_norm=(False, True),
    rmsnorm_unit_offset=(False, True),
    scale_embeddings=(False, True),
    norm_position=("pre", "sandwich", "branch_output"),
    query_pre_attn_scalar=(None, 16.0),
    local_rope_theta=(None, 10_000.0),
    qkv_bias=(False, True),
    attn_out_bias=(False, True),
    rope_scaling=("none", "longrope"),
    sliding_window=(None, 8),
)
MOES = [None] + [
    SimpleNamespace(score_func=s, expert_bias=b, shared_expert_gate=g, num_shared_experts=n)
    for s, b, g, n in itertools.product(("softmax", "sigmoid"), (False, True), (False, True), (0, 2))
]


def feature_configs(count: int, seed: int = 0) -> list[SimpleNamespace]:
    """`count` random combinations of the features (duck-typed configs: the predicates only read attributes, and
    a real ModelConfig would refuse some combinations the decision list still decides). Each feature keeps its
    plain value (the first) 4 times in 5, so that configs with few features, down to none, come up too."""
    rng = random.Random(seed)

    def pick(values: tuple | list):
        return values[0] if rng.random() < 0.8 else rng.choice(values[1:])

    configs = []
    for _ in range(count):
        fields = {key: pick(values) for key, values in FEATURES.items()}
        fields["rope_scaling"] = SimpleNamespace(type=fields["rope_scaling"])
        configs.append(SimpleNamespace(**fields, moe=pick(MOES), name="features"))
    return configs


def test_guess_picks_what_the_old_decision_list_picked() -> None:
    configs = feature_configs(10_000)
    picked = {}
    for cfg in configs:
        want = decision_list(cfg)
        assert REGISTRY.guess(cfg).model_type == want, vars(cfg)
        picked[want] = picked.get(want, 0) + 1
    assert set(picked) == set(REGISTRY.families()), f"some family never came up: {picked}"


def test_guess_on_real_configs() -> None:
    assert REGISTRY.guess(ModelConfig(name="plain", **TINY)).model_type == "llama"
    assert REGISTRY.guess(ModelConfig(name="window", **TINY, sliding_window=8)).model_type == "mistral"
    assert REGISTRY.guess(ModelConfig(name="qk", **TINY, qk_norm=True)).model_type == "qwen3"


def test_registry_source_names_no_family() -> None:
    source = (HF_DIR / "registry.py").read_text().lower()
    families = REGISTRY.families()
    assert len(families) == 15
    modules = {p.stem for p in (HF_DIR / "families").glob("*.py") if p.stem != "__init__"}
    for fam in families.values():
        for word in (fam.model_type, fam.architecture.lower(), fam.architecture.lower().removesuffix("forcausallm")):
            assert word not in source, f"registry.py names {word!r}"
    for module in modules:
        assert module not in source, f"registry.py names the module {module!r}"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_families_import_no_family_and_the_shared_modules_none_at_all() -> None:
    for path in [*(HF_DIR / "families").glob("*.py"), HF_DIR / "family.py", HF_DIR / "family_kit.py"]:
        into_families = sorted(m for m in imported_modules(path) if m.startswith("model.hf.families"))
        assert not into_families, f"{path.name} imports {into_families}"
    for path in (HF_DIR / "family.py", HF_DIR / "family_kit.py"):
        assert "model.hf.registry" not in imported_modules(path)


TOY_FAMILY = '''
"""A made-up family for the registry test: a Llama decoder with final-logit soft-capping."""
from model.config import ModelConfig
from model.hf.family import Family
from model.hf.family_kit import ANY, common_hf_fields, loom_base, plain_problems


def _problems(cfg):
    needs_cap = [] if cfg.final_logit_softcap is not None else ["toy_softcap needs final_logit_softcap"]
    return plain_problems(cfg, "toy_softcap", final_logit_softcap=ANY) + needs_cap


def _from_hf(hf, name):
    return ModelConfig(**loom_base(hf, name, {"max_position_embeddings": 64}),
                       final_logit_softcap=hf["final_logit_softcapping"], hf_model_type="toy_softcap")


FAMILY = Family(
    "toy_softcap", "ToySoftcapForCausalLM", _problems,
    lambda cfg: {**common_hf_fields(cfg, FAMILY), "final_logit_softcapping": cfg.final_logit_softcap},
    _from_hf,
    matches=lambda cfg: cfg.final_logit_softcap is not None,
    priority=5,  # just above the catch-all: every family with its own reason to soft-cap comes first
)
'''


@pytest.fixture
def families_plus_one(tmp_path, monkeypatch) -> str:
    """A copy of model/hf/families/ with one more file in it, importable as `families_plus_one`."""
    package = tmp_path / "families_plus_one"
    shutil.copytree(HF_DIR / "families", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "toy_softcap.py").write_text(textwrap.dedent(TOY_FAMILY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package.name
    for name in [m for m in sys.modules if m == package.name or m.startswith(f"{package.name}.")]:
        del sys.modules[name]


def test_a_family_in_one_new_file_is_recognised_by_config_and_by_model_type(families_plus_one: str) -> None:
    registry = FamilyRegistry(families_plus_one)
    capped = ModelConfig(name="capped", **TINY, final_logit_softcap=30.0)
    with pytest.raises(HFConversionError, match="llama needs final_logit_softcap=None"):
        REGISTRY.family_for(capped)  # without the new file: no family computes it

    toy = registry.family_for(capped)
    assert toy.model_type == "toy_softcap"
    assert registry.family("toy_softcap") is toy
    hf = toy.to_hf(capped)
    back = registry.family(hf["model_type"]).from_hf(hf, "back")
    assert (back.final_logit_softcap, back.dim, back.n_layers, back.hf_model_type) == (30.0, 64, 2, "toy_softcap")
    # the families that were there still win where their priority says so
    assert registry.family_for(ModelConfig(name="plain", **TINY)).model_type == "llama"
    gemma = ModelConfig(
        name="gemma",
        **TINY,
        final_logit_softcap=30.0,
        norm_position="sandwich",
        rmsnorm_unit_offset=True,
        scale_embeddings=True,
        mlp_type="geglu",
    )
    assert registry.family_for(gemma).model_type == "gemma2"
    assert "toy_softcap" not in REGISTRY.families()


def test_register_adds_a_family_and_refuses_a_taken_model_type_or_priority() -> None:
    registry = FamilyRegistry(package=None)
    llama = REGISTRY.family("llama")
    registry.register(llama)
    assert registry.family_for(ModelConfig(name="plain", **TINY)) is llama
    with pytest.raises(ValueError, match="model_type='llama'"):
        registry.register(llama)
    same_priority = Family(
        "other",
        "OtherForCausalLM",
        llama.problems,
        llama.to_hf,
        llama.from_hf,
        matches=lambda cfg: False,
        priority=llama.priority,
    )
    with pytest.raises(ValueError, match="priority 0, as 'llama' does"):
        registry.register(same_priority)
    with pytest.raises(HFConversionError, match="model_type='mistral' is not supported"):
        registry.family("mistral")


def test_a_family_module_without_FAMILY_is_named(tmp_path, monkeypatch) -> None:
    package = tmp_path / "families_with_a_stray"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stray.py").write_text("NOT_A_FAMILY = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(TypeError, match=r"stray\.py: a module of families_with_a_stray must define FAMILY"):
            FamilyRegistry(package.name).families()
    finally:
        for name in [m for m in sys.modules if m.startswith(package.name)]:
            del sys.modules[name]
