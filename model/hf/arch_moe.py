"""Mixture-of-experts families: Mixtral, Qwen2-MoE, Qwen3-MoE, ERNIE 4.5 MoE (what Loom's own `moe` config is:
ungated shared experts, softmax routing, optional selection bias), DeepSeek-V2 and DeepSeek-V3 (latent attention).

The routing switches of MoEConfig each family fixes are listed in its `problems`; the MoE layer placement
(first_dense, every) maps to each family's own scheme (decoder_sparse_step + mlp_only_layers, moe_layer_start /
interval, first_k_dense_replace)."""
from __future__ import annotations

from model.blocks.moe import EXPERT_WEIGHTS
from model.config import MLAConfig, ModelConfig, MoEConfig
from model.hf.arch_dense import ANY, loom_base, plain_problems, qwen_sliding_fields, qwen_windows, same_bias
from model.hf.common import HFConversionError
from model.hf.families import (
    Family,
    TensorNames,
    check_activation,
    common_hf_fields,
    moe_layout_from_layers,
    register,
    require,
)

# What a plain top-k softmax router is; families override the keys they handle.
ROUTER = dict(num_shared_experts=0, shared_expert_gate=False, score_func="softmax", norm_topk_prob=True,
              routed_scaling_factor=1.0, n_groups=1, expert_bias=False, every=1, first_dense=0)


def moe_problems(cfg: ModelConfig, name: str, **overrides) -> list[str]:
    if cfg.moe is None:
        return [f"{name} is a mixture-of-experts architecture: set model.moe"]
    expected = {k: v for k, v in {**ROUTER, **overrides}.items() if v is not ANY}
    problems = [p.replace(" needs ", " needs moe.") for p in require(cfg.moe, name, **expected)]
    if cfg.moe.n_groups == 1 and "topk_groups" not in overrides and cfg.moe.topk_groups != 1:
        problems.append(f"{name} needs moe.topk_groups=1")
    return problems


def shared_width_problems(cfg: ModelConfig, name: str) -> list[str]:
    """Families whose shared experts are n_shared x the routed experts' width."""
    moe = cfg.moe
    if moe is not None and moe.shared_expert_hidden_dim not in (None, cfg.expert_hidden_dim):
        return [f"{name}'s shared experts are as wide as the routed ones: set moe.shared_expert_hidden_dim null"]
    return []


def placement_problems(cfg: ModelConfig, name: str) -> list[str]:
    """Families that place MoE layers at (i + 1) % every == 0 from a start layer."""
    moe = cfg.moe
    if moe is not None and (moe.first_dense + 1) % moe.every:
        return [f"{name} places MoE layers where (layer + 1) % every == 0: choose first_dense and every with "
                f"(first_dense + 1) % every == 0"]
    return []


def moe_common_to_hf(cfg: ModelConfig, fam: Family) -> dict:
    return {**common_hf_fields(cfg, fam), "router_aux_loss_coef": cfg.moe.aux_loss_weight,
            "output_router_logits": False}


def moe_from_hf(hf: dict, n_layers: int, moe_layer_list: list[int], **fields) -> MoEConfig:
    first_dense, every = moe_layout_from_layers(moe_layer_list, n_layers)
    return MoEConfig(first_dense=first_dense, every=every, aux_loss_weight=hf.get("router_aux_loss_coef", 0.001),
                     router_z_loss_weight=0.0, **fields)


# ---------------------------------------------------------------------------------------------- Mixtral
MIXTRAL_DEFAULTS = dict(max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                        rope_theta=1e6)


def _mixtral_to_hf(cfg: ModelConfig) -> dict:
    return {**moe_common_to_hf(cfg, MIXTRAL), "intermediate_size": cfg.expert_hidden_dim,
            "num_local_experts": cfg.moe.num_experts, "num_experts_per_tok": cfg.moe.top_k,
            "router_jitter_noise": 0.0, "sliding_window": cfg.sliding_window}


def _mixtral_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, MIXTRAL_DEFAULTS)
    moe = moe_from_hf(hf, base["n_layers"], list(range(base["n_layers"])),
                      num_experts=hf.get("num_local_experts", 8), top_k=hf.get("num_experts_per_tok", 2),
                      expert_hidden_dim=base["hidden_dim"])
    return ModelConfig(**base, sliding_window=hf.get("sliding_window"), moe=moe, hf_model_type="mixtral")


MIXTRAL = register(Family(
    "mixtral", "MixtralForCausalLM",
    lambda cfg: plain_problems(cfg, "mixtral", moe=ANY, sliding_window=ANY) + moe_problems(cfg, "mixtral"),
    _mixtral_to_hf, _mixtral_from_hf,
    TensorNames(moe_prefix="block_sparse_moe", expert_names=EXPERT_WEIGHTS),  # Mixtral's names are ours
))


# ---------------------------------------------------------------------------------------------- Qwen MoE
QWEN_MOE_DEFAULTS = dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         sliding_window=4096, max_window_layers=28)


def qwen_moe_layers_to_hf(cfg: ModelConfig) -> dict:
    step = cfg.moe.every
    return {"decoder_sparse_step": step,
            "mlp_only_layers": [i for i in range(cfg.n_layers) if (i + 1) % step == 0 and not cfg.is_moe_layer(i)]}


def qwen_moe_layers_from_hf(hf: dict, n_layers: int) -> list[int]:
    step, dense = hf.get("decoder_sparse_step", 1), set(hf.get("mlp_only_layers") or [])
    return [i for i in range(n_layers) if i not in dense and (i + 1) % step == 0]


def _qwen2_moe_to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.moe
    return {**moe_common_to_hf(cfg, QWEN2_MOE), **qwen_sliding_fields(cfg), **qwen_moe_layers_to_hf(cfg),
            "num_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": cfg.expert_hidden_dim,
            "shared_expert_intermediate_size": cfg.shared_experts_hidden_dim, "norm_topk_prob": moe.norm_topk_prob,
            "qkv_bias": bool(cfg.qkv_bias)}


def _qwen2_moe_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, QWEN_MOE_DEFAULTS)
    n = base["n_layers"]
    window, pattern = qwen_windows(hf, n)
    moe = moe_from_hf(hf, n, qwen_moe_layers_from_hf(hf, n), num_experts=hf.get("num_experts", 60),
                      top_k=hf.get("num_experts_per_tok", 4), expert_hidden_dim=hf.get("moe_intermediate_size", 1408),
                      num_shared_experts=1, shared_expert_hidden_dim=hf.get("shared_expert_intermediate_size", 5632),
                      shared_expert_gate=True, norm_topk_prob=bool(hf.get("norm_topk_prob", False)))
    return ModelConfig(**base, qkv_bias=bool(hf.get("qkv_bias", True)), sliding_window=window,
                       sliding_window_pattern=pattern, moe=moe, hf_model_type="qwen2_moe")


QWEN2_MOE = register(Family(
    "qwen2_moe", "Qwen2MoeForCausalLM",
    lambda cfg: plain_problems(cfg, "qwen2_moe", moe=ANY, qkv_bias=ANY, sliding_window=ANY,
                               sliding_window_pattern=ANY)
    + moe_problems(cfg, "qwen2_moe", num_shared_experts=ANY, shared_expert_gate=True, norm_topk_prob=ANY,
                   every=ANY, first_dense=ANY)
    + (["qwen2_moe has one gated shared expert: set moe.num_shared_experts >= 1"]
       if cfg.moe is not None and not cfg.moe.num_shared_experts else [])
    + placement_problems(cfg, "qwen2_moe"),
    _qwen2_moe_to_hf, _qwen2_moe_from_hf,
    TensorNames(shared_name="shared_expert"),
))


def _qwen3_moe_to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.moe
    return {**moe_common_to_hf(cfg, QWEN3_MOE), **qwen_sliding_fields(cfg), **qwen_moe_layers_to_hf(cfg),
            "num_experts": moe.num_experts, "num_local_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": cfg.expert_hidden_dim, "norm_topk_prob": moe.norm_topk_prob,
            "attention_bias": bool(cfg.qkv_bias)}


def _qwen3_moe_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, {**QWEN_MOE_DEFAULTS, "head_dim": 128})
    n = base["n_layers"]
    window, pattern = qwen_windows(hf, n)
    moe = moe_from_hf(hf, n, qwen_moe_layers_from_hf(hf, n),
                      num_experts=hf.get("num_experts", hf.get("num_local_experts", 128)),
                      top_k=hf.get("num_experts_per_tok", 8), expert_hidden_dim=hf.get("moe_intermediate_size", 768),
                      norm_topk_prob=bool(hf.get("norm_topk_prob", False)))
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**base, qkv_bias=bias, attn_out_bias=bias, qk_norm=True, qk_norm_scope="head",
                       sliding_window=window, sliding_window_pattern=pattern, moe=moe, hf_model_type="qwen3_moe")


QWEN3_MOE = register(Family(
    "qwen3_moe", "Qwen3MoeForCausalLM",
    lambda cfg: plain_problems(cfg, "qwen3_moe", moe=ANY, qk_norm=True, qk_norm_scope="head", qkv_bias=ANY,
                               attn_out_bias=ANY, sliding_window=ANY, sliding_window_pattern=ANY)
    + same_bias(cfg, "qwen3_moe")
    + moe_problems(cfg, "qwen3_moe", norm_topk_prob=ANY, every=ANY, first_dense=ANY)
    + placement_problems(cfg, "qwen3_moe"),
    _qwen3_moe_to_hf, _qwen3_moe_from_hf,
))


# ---------------------------------------------------------------------------------------------- ERNIE 4.5 MoE
ERNIE_DEFAULTS = dict(max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_theta=500000.0)


def _ernie_to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.moe
    return {**moe_common_to_hf(cfg, ERNIE), "use_bias": False, "moe_num_experts": moe.num_experts,
            "moe_k": moe.top_k, "moe_intermediate_size": cfg.expert_hidden_dim,
            "moe_num_shared_experts": moe.num_shared_experts, "moe_layer_start_index": moe.first_dense,
            "moe_layer_end_index": cfg.n_layers - 1, "moe_layer_interval": moe.every, "moe_norm_min": 1e-12}


def _ernie_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    if hf.get("use_bias"):
        raise HFConversionError("ERNIE use_bias=true (biased projections and head) is not supported")
    base = loom_base(hf, name, ERNIE_DEFAULTS)
    n = base["n_layers"]
    start, interval = hf.get("moe_layer_start_index", 1), hf.get("moe_layer_interval", 1)
    end = hf.get("moe_layer_end_index", -1)
    end = n - 1 if end in (None, -1) else end
    layers = [i for i in range(n) if (i + 1) % interval == 0 and start <= i <= end]
    moe = moe_from_hf(hf, n, layers, num_experts=hf.get("moe_num_experts", 64), top_k=hf.get("moe_k", 6),
                      expert_hidden_dim=hf.get("moe_intermediate_size", 1536),
                      num_shared_experts=hf.get("moe_num_shared_experts", 2), expert_bias=True, bias_update_rate=0.0)
    return ModelConfig(**base, moe=moe, hf_model_type="ernie4_5_moe")


ERNIE = register(Family(
    "ernie4_5_moe", "Ernie4_5_MoeForCausalLM",
    lambda cfg: plain_problems(cfg, "ernie4_5_moe", moe=ANY)
    + moe_problems(cfg, "ernie4_5_moe", num_shared_experts=ANY, expert_bias=ANY, every=ANY, first_dense=ANY)
    + shared_width_problems(cfg, "ernie4_5_moe") + placement_problems(cfg, "ernie4_5_moe"),
    _ernie_to_hf, _ernie_from_hf,
    TensorNames(bias_name="moe_statics.e_score_correction_bias", bias_2d=True, interleaved_rope=True),
))


# ---------------------------------------------------------------------------------------------- DeepSeek
DEEPSEEK_DEFAULTS = dict(max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False)
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def deepseek_problems(cfg: ModelConfig, name: str, **router) -> list[str]:
    problems = plain_problems(cfg, name, mla=ANY, moe=ANY, qkv_bias=ANY, attn_out_bias=ANY) + same_bias(cfg, name)
    if cfg.mla is None:
        problems.append(f"{name} uses multi-head latent attention: set model.mla")
    problems += moe_problems(cfg, name, num_shared_experts=ANY, routed_scaling_factor=ANY, n_groups=ANY,
                             topk_groups=ANY, first_dense=ANY, **router)
    return problems + shared_width_problems(cfg, name)


def deepseek_to_hf(cfg: ModelConfig, fam: Family) -> dict:
    moe, mla = cfg.moe, cfg.mla
    out = moe_common_to_hf(cfg, fam)
    del out["head_dim"]  # transformers sets it to qk_rope_head_dim itself
    out.update({key: getattr(mla, key) for key in MLA_KEYS})
    out.update(num_key_value_heads=cfg.n_heads, attention_bias=bool(cfg.qkv_bias), n_routed_experts=moe.num_experts,
               num_experts_per_tok=moe.top_k, n_shared_experts=moe.num_shared_experts,
               moe_intermediate_size=cfg.expert_hidden_dim, first_k_dense_replace=moe.first_dense,
               n_group=moe.n_groups, topk_group=moe.topk_groups, routed_scaling_factor=moe.routed_scaling_factor,
               norm_topk_prob=moe.norm_topk_prob)
    return out


def deepseek_from_hf(hf: dict, name: str, **router) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, DEEPSEEK_DEFAULTS, keep_mscale_all_dim=True)
    base.update(n_kv_heads=None, head_dim=None)
    n = base["n_layers"]
    mla = MLAConfig(**{key: hf[key] for key in MLA_KEYS if key in hf})
    first = hf.get("first_k_dense_replace", 0)
    n_groups = hf.get("n_group") or 1
    moe = moe_from_hf(hf, n, list(range(first, n)), num_experts=hf.get("n_routed_experts", 64),
                      top_k=hf.get("num_experts_per_tok") or 6, expert_hidden_dim=hf.get("moe_intermediate_size"),
                      num_shared_experts=hf.get("n_shared_experts") or 0, n_groups=n_groups,
                      topk_groups=hf.get("topk_group") or 1,
                      routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)), **router)
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**base, mla=mla, moe=moe, qkv_bias=bias, attn_out_bias=bias,
                       hf_model_type=hf["model_type"])


def _v2_problems(cfg: ModelConfig) -> list[str]:
    problems = deepseek_problems(cfg, "deepseek_v2", norm_topk_prob=False)
    if cfg.moe is not None and cfg.moe.n_groups > 1 and cfg.moe.group_score != "max":
        problems.append("deepseek_v2's group-limited routing scores a group by its best expert: set "
                        "moe.group_score=max")
    return problems


def _v2_to_hf(cfg: ModelConfig) -> dict:
    out = deepseek_to_hf(cfg, DEEPSEEK_V2)
    out["topk_method"] = "group_limited_greedy" if cfg.moe.n_groups > 1 else "greedy"
    return out


def _v2_from_hf(hf: dict, name: str) -> ModelConfig:
    method = hf.get("topk_method", "greedy")
    if method not in ("greedy", "group_limited_greedy"):
        raise HFConversionError(f"deepseek_v2 topk_method={method!r} is not supported (greedy, group_limited_greedy)")
    if method == "greedy":
        hf = {**hf, "n_group": 1, "topk_group": 1}
    # transformers' DeepSeek-V2 router never renormalises the top-k weights, whatever norm_topk_prob says.
    return deepseek_from_hf(hf, name, norm_topk_prob=False, group_score="max")


DEEPSEEK_V2 = register(Family(
    "deepseek_v2", "DeepseekV2ForCausalLM", _v2_problems, _v2_to_hf, _v2_from_hf,
    TensorNames(interleaved_rope=True),
))


def _v3_to_hf(cfg: ModelConfig) -> dict:
    return {**deepseek_to_hf(cfg, DEEPSEEK_V3), "rope_interleave": True, "num_nextn_predict_layers": cfg.mtp_depth}


def _v3_from_hf(hf: dict, name: str) -> ModelConfig:
    return deepseek_from_hf(hf, name, score_func="sigmoid", group_score="top2_sum", expert_bias=True,
                            norm_topk_prob=bool(hf.get("norm_topk_prob", True)))


DEEPSEEK_V3 = register(Family(
    "deepseek_v3", "DeepseekV3ForCausalLM",
    lambda cfg: deepseek_problems(cfg, "deepseek_v3", score_func="sigmoid", norm_topk_prob=ANY, expert_bias=ANY,
                                  group_score="top2_sum" if cfg.moe is not None and cfg.moe.n_groups > 1 else ANY),
    _v3_to_hf, _v3_from_hf,
    TensorNames(bias_name="gate.e_score_correction_bias", interleaved_rope=True, mtp_layers=True),
))
