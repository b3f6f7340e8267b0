"""`python -m data_pipeline preference`: preference JSONL -> preference shards (data_pipeline/preference_format.py).

Each input line is one JSON object with `prompt`, `chosen` and `rejected`:
- plain text: `prompt`, `chosen` and `rejected` strings. The sequences are the plain concatenations prompt + chosen
  and prompt + rejected, each response ended by the tokenizer's EOS text when it does not end with it already;
- conversational: `prompt` a list of messages ({"role", "content"}), `chosen`/`rejected` a list of (assistant)
  messages or a string (one assistant message). The sequences are the tokenizer's chat template of prompt +
  response; the prompt alone is rendered with the generation prompt. A tokenizer without a chat template is
  refused.
Either way each side is tokenised whole and the response starts where the tokenised prompt and prompt + response
first differ (the smaller of the two sides), as TRL's DPOTrainer splits them, so tokens that merge across the
boundary stay with the response and both sides share one prompt.

Rows that cannot be trained on are quarantined, never written: malformed JSON, a missing or mistyped field, an
empty prompt, chosen or rejected (also once tokenised), chosen identical to rejected. Each goes to
`<output>/quarantine/preference.jsonl` with its file, line and reason, and is logged; `max_quarantine_fraction`
fails the run when more of the input than that is bad.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from data_pipeline.preference_format import PreferencePair, write_preference_shard
from data_pipeline.quarantine import QuarantineExceeded, check_fraction

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class Quarantined(ValueError):
    """A row that is not a usable preference pair; `reason` is its short name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class PreferenceReport:
    pairs: int = 0
    rows: int = 0
    shards: list[Path] = field(default_factory=list)
    quarantined: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.quarantined.items()))
        return (
            f"preference: {self.pairs} pairs from {self.rows} rows in {len(self.shards)} shard(s); "
            f"quarantined {sum(self.quarantined.values())}" + (f" ({reasons})" if reasons else "")
        )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def parse_row(line: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of one JSONL line, conversational responses as message lists; Quarantined
    for anything that cannot be trained on."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise Quarantined("malformed_json", f"not JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise Quarantined("not_an_object", f"a JSON {type(row).__name__}, not an object")
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
    if missing:
        raise Quarantined("missing_field", f"no {', '.join(missing)}")
    prompt = row["prompt"]
    conversational = _is_messages(prompt)
    if not conversational and not isinstance(prompt, str):
        raise Quarantined("bad_type", "prompt is neither a string nor a list of {role, content} messages")
    if not _text_of(prompt).strip():
        raise Quarantined("empty_prompt", "the prompt is empty")
    sides = []
    for key in ("chosen", "rejected"):
        value = row[key]
        if conversational and isinstance(value, str):
            value = [{"role": "assistant", "content": value}]
        if not (_is_messages(value) if conversational else isinstance(value, str)):
            kind = "a string or a list of messages" if conversational else "a string (the prompt is one)"
            raise Quarantined("bad_type", f"{key} is not {kind}")
        if not _text_of(value).strip():
            raise Quarantined(f"empty_{key}", f"{key} is empty")
        sides.append(value)
    if sides[0] == sides[1]:
        raise Quarantined("identical_responses", "chosen and rejected are the same")
    return prompt, sides[0], sides[1]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PairTokenizer:
    """Tokenises a parsed pair with a Hugging Face tokenizer (transformers' AutoTokenizer of a directory)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        from transformers import AutoTokenizer

        self.directory = Path(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(os.fspath(self.directory))

    def info(self) -> dict:
        return {
            "name": self.directory.resolve().name,
            "eos_id": self.tokenizer.eos_token_id,
            "vocab": len(self.tokenizer),
        }

    def _ids(self, value: Any, *, generation_prompt: bool = False) -> list[int]:
        if isinstance(value, str):
            return list(self.tokenizer(text=value)["input_ids"])
        out = self.tokenizer.apply_chat_template(
            value, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
        return list(out["input_ids"])

    def pair(self, prompt: Any, chosen: Any, rejected: Any, where: str) -> PreferencePair:
        if isinstance(prompt, str):
            eos = self.tokenizer.eos_token
            if eos:
                chosen = chosen if chosen.endswith(eos) else chosen + eos
                rejected = rejected if rejected.endswith(eos) else rejected + eos
        elif not self.tokenizer.chat_template:
            raise ValueError(
                f"{where}: conversational prompt but the tokenizer in {self.directory} has no chat template: "
                f"use a tokenizer with one (tokenizer=<HF directory>) or plain-text prompts"
            )
        prompt_ids = self._ids(prompt, generation_prompt=True)
        full_chosen, full_rejected = self._ids(prompt + chosen), self._ids(prompt + rejected)
        cut = min(_common_prefix(prompt_ids, full_chosen), _common_prefix(prompt_ids, full_rejected))
        pair = PreferencePair(prompt_ids[:cut], full_chosen[cut:], full_rejected[cut:], where)
        if not pair.prompt:
            raise Quarantined("empty_prompt", "the prompt has no token of its own once tokenised")
        for key in ("chosen", "rejected"):
            if not getattr(pair, key):
                raise Quarantined(f"empty_{key}", f"{key} has no tokens once tokenised")
        if list(pair.chosen) == list(pair.rejected):
            raise Quarantined("identical_responses", "chosen and rejected tokenise to the same ids")
        return pair


def _jsonl_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"input={item}: no such file or directory of *.jsonl")
    if not files:
        raise ValueError(f"input={list(inputs)}: no *.jsonl files")
    return files


def _copy_tokenizer(source: Path, output: Path) -> None:
    """The tokenizer files beside the shards (training copies tokenizer.json into its run directory)."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            tmp = output / f".{name}.tmp.{os.getpid()}"
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, output / name)


def build_preference_shards(
    inputs: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    pairs_per_shard: int = 10_000,
    max_quarantine_fraction: Optional[float] = None,
) -> PreferenceReport:
    """Read every JSONL line of `inputs` (files, or directories of *.jsonl), write preference shards and the
    quarantine records into `output`; see the module docstring."""
    limit = check_fraction(max_quarantine_fraction)
    if pairs_per_shard < 1:
        raise ValueError(f"pairs_per_shard={pairs_per_shard}: at least 1")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    pair_tokenizer = PairTokenizer(tokenizer)
    report, pending, records = PreferenceReport(), [], []

    def flush() -> None:
        if pending:
            stem = f"preference-{len(report.shards):05d}"
            report.shards.append(write_preference_shard(output, stem, pending, pair_tokenizer.info()))
            pending.clear()

    for path in _jsonl_files(inputs):
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                report.rows += 1
                where = f"{path}:{number}"
                try:
                    pending.append(pair_tokenizer.pair(*parse_row(line), where=where))
                except Quarantined as bad:
                    log.warning("quarantined %s: %s (%s)", where, bad.reason, bad)
                    report.quarantined[bad.reason] += 1
                    records.append({"file": str(path), "line": number, "reason": bad.reason, "detail": str(bad)})
                    continue
                report.pairs += 1
                if len(pending) == pairs_per_shard:
                    flush()
    flush()
    quarantine = output / "quarantine" / "preference.jsonl"
    quarantine.parent.mkdir(exist_ok=True)
    tmp = quarantine.with_name(f".{quarantine.name}.tmp.{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, quarantine)
    _copy_tokenizer(Path(tokenizer), output)
    bad = sum(report.quarantined.values())
    if limit is not None and report.rows and bad / report.rows > limit:
        raise QuarantineExceeded(
            f"{bad} of {report.rows} preference rows quarantined (> max_quarantine_fraction={limit}): {quarantine}"
        )
    if not report.pairs:
        raise ValueError(f"input: no usable preference pair in {report.rows} rows (see {quarantine})")
    return report
