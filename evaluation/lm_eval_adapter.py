"""Loom models inside lm-evaluation-harness itself: `LoomLM`, registered as lm-eval model type "loom".

Importing this module registers it; then `lm_eval.simple_evaluate(model="loom", model_args="pretrained=<run dir |
checkpoint | HF dir>,batch_size=8")` and lm-eval's other entry points score with a LoomScorer, so any task lm-eval
knows runs on a Loom run without exporting it first. lm-eval 0.4.13's CLI looks models up in its own registry only
(no entry-point discovery), so its command line is reached through `python -m evaluation.lm_eval_cli`, which
imports this module and then runs lm-eval's CLI unchanged.

Generation is greedy only (do_sample false, temperature 0), as the Scorer contract is; other sampling settings
are refused rather than ignored.
"""

from __future__ import annotations

import logging
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval fills its registry with its own models only while it is empty)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from evaluation.requests import GenerationRequest, LoglikelihoodRequest, RollingRequest

_MAX_GEN_TOKS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")  # lm-eval's order
DEFAULT_MAX_GEN_TOKS = 256


@register_model("loom")
class LoomLM(LM):
    """lm-eval's LM over evaluation.loom_scorer.LoomScorer (model_args: pretrained, batch_size, dtype, device,
    max_length)."""

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 8,
        dtype: str = "fp32",
        device: str | None = None,
        max_length: int | None = None,
        max_batch_size: int | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        from evaluation.loom_scorer import LoomScorer

        if unused:
            raise ValueError(
                f"model loom: unknown model_args {sorted(unused)} (known: pretrained, batch_size, "
                f"dtype, device, max_length)"
            )
        if str(batch_size).startswith("auto"):
            raise ValueError("model loom: batch_size=auto is not supported; give a number")
        dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(str(dtype), str(dtype))
        self.scorer = LoomScorer.load(
            pretrained,
            batch_size=int(batch_size),
            dtype=dtype,
            device=_device(device),
            max_length=int(max_length) if max_length else None,
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LoomLM:
        """`pretrained=<path>,batch_size=8,...`; a setting in the string wins over the same one from lm-eval's own
        options (its --batch_size defaults to 1 and would otherwise clash with model_args' batch_size)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> LoomLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        answers = self.scorer.loglikelihood([LoglikelihoodRequest(*r.args) for r in requests])
        for request, answer in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        answers = self.scorer.loglikelihood_rolling([RollingRequest(r.args[0]) for r in requests])
        for request, answer in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, answer)
        return answers

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        answers = self.scorer.generate_until([generation_request(*r.args) for r in requests])
        for request, answer in zip(requests, answers):
            self.cache_hook.add_partial("generate_until", request.args, answer)
        return answers


def _device(device: str | None) -> str:
    """lm-eval's CLI asks for "cuda" by default: on a machine without CUDA that means the CPU (as HFLM falls back
    when no device is given); None or "auto" picks CUDA when visible."""
    import torch

    if device in (None, "auto") or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device not in (None, "auto"):
            logging.getLogger(__name__).warning(
                "model loom: device=%s but no CUDA device is visible; using cpu", device
            )
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def generation_request(context: str, gen_kwargs: dict | None) -> GenerationRequest:
    """A greedy GenerationRequest from lm-eval's (context, generation kwargs)."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None)
    until = [] if until is None else [until] if isinstance(until, str) else list(until)
    max_gen_toks = DEFAULT_MAX_GEN_TOKS
    for key in reversed(_MAX_GEN_TOKS_KEYS):  # the first key of lm-eval's order wins
        if key in kwargs:
            max_gen_toks = int(kwargs.pop(key))
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    if do_sample or temperature > 0:
        raise ValueError(f"model loom generates greedily only; got do_sample={do_sample}, temperature={temperature}")
    if kwargs:
        raise ValueError(
            f"model loom: generation_kwargs {sorted(kwargs)} are not supported (supported: until, "
            f"max_gen_toks, do_sample=false, temperature=0)"
        )
    return GenerationRequest(context, tuple(until), max_gen_toks)
