"""Tiny random Hugging Face models (a Llama and a Qwen3-MoE, float32) with a BPE trained on license text, and
lm-eval's own HFLM wrapped as our Scorer, so our runner and lm-eval's evaluator see the same log-likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 384
CONTEXT = 128  # short, so rolling windows and left truncation are exercised


def _tokenizer_files(target: Path) -> int:
    from task_fixtures import LICENSES

    from data_pipeline.tokenizer import save_tokenizer, train_bpe

    texts = [(LICENSES / name).read_text(encoding="utf-8") for name in ("GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-3")]
    tokenizer = train_bpe(texts, vocab_size=VOCAB, special_tokens=["<|endoftext|>"])
    save_tokenizer(tokenizer, target / "tokenizer.json")
    names = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": CONTEXT,
                "clean_up_tokenization_spaces": False,
                **names,
            }
        )
    )
    (target / "special_tokens_map.json").write_text(json.dumps(names))
    return tokenizer.token_to_id("<|endoftext|>")


def save_tiny_model(target: Path, family: str) -> Path:
    """A tiny randomly initialised model of `family` ("llama" or "qwen3_moe") saved as a HF directory."""
    import torch
    import transformers as tf

    target.mkdir(parents=True, exist_ok=True)
    eos = _tokenizer_files(target)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": CONTEXT,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "tie_word_embeddings": False,
    }
    if family == "llama":
        config = tf.LlamaConfig(**common)
    elif family == "qwen3_moe":
        config = tf.Qwen3MoeConfig(
            **common,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            norm_topk_prob=True,
            decoder_sparse_step=1,
        )
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init is near-uniform; larger weights give log-likelihoods that differ per choice
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    model.save_pretrained(target)
    return target


def hflm(model_dir: Path):
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=str(model_dir), backend="causal", batch_size=1, device="cpu", dtype="float32", max_length=CONTEXT
    )


class HFLMScorer:
    """lm-eval's HFLM answering our requests (our Scorer contract) through its own request objects."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.calls: dict[str, int] = {}

    def _instances(self, kind: str, args: list[tuple]):
        from lm_eval.api.instance import Instance

        self.calls[kind] = self.calls.get(kind, 0) + len(args)
        return [
            Instance(request_type=kind, doc={}, arguments=a, idx=0, metadata=("ours", i, 1)) for i, a in enumerate(args)
        ]

    def loglikelihood(self, requests):
        return self.lm.loglikelihood(
            self._instances("loglikelihood", [(r.context, r.continuation) for r in requests]), disable_tqdm=True
        )

    def loglikelihood_rolling(self, requests):
        return self.lm.loglikelihood_rolling(
            self._instances("loglikelihood_rolling", [(r.text,) for r in requests]), disable_tqdm=True
        )

    def generate_until(self, requests):
        args = [
            (r.context, {"until": list(r.until), "max_gen_toks": r.max_gen_toks, "do_sample": False}) for r in requests
        ]
        return self.lm.generate_until(self._instances("generate_until", args), disable_tqdm=True)
