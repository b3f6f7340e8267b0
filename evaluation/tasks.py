"""Tasks and groups from lm-evaluation-harness YAML, rendered and scored with lm-eval 0.4.13's semantics.

`load_tasks(names, task_dirs)` finds each name (task, group or tag) in the task directories, reads its data from
local files, and checks everything a run will need before a model sees a request: the data files exist, every
field a template names is in every document, every multiple-choice document has choices, every metric is known.
A `Task` turns one document into its context (description, few-shot examples, the document's own text, joined
with lm-eval's delimiters) and its requests, and the Scorer's answers back into per-document metric values.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from evaluation import metrics as M
from evaluation.errors import TaskInputError
from evaluation.fewshot import SAMPLERS, DefaultSampler
from evaluation.requests import (
    GenerationRequest,
    LoglikelihoodRequest,
    Request,
    RollingRequest,
)
from evaluation.task_data import load_splits
from evaluation.task_files import FunctionRef, IndexEntry, TaskIndex, load_task_yaml
from evaluation.templates import fields_named, render

OUTPUT_TYPES = ("loglikelihood", "multiple_choice", "loglikelihood_rolling", "generate_until")
DEFAULT_FEWSHOT_SEED = 1234

_TASK_KEYS = {
    "task", "task_alias", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
    "validation_split", "test_split", "fewshot_split", "process_docs", "doc_to_text", "doc_to_target",
    "doc_to_choice", "process_results", "description", "target_delimiter", "fewshot_delimiter", "fewshot_config",
    "num_fewshot", "metric_list", "output_type", "generation_kwargs", "repeats", "filter_list",
    "should_decontaminate", "doc_to_decontamination_query", "gen_prefix", "metadata", "unsafe_code",
}
_REFUSED_KEYS = {
    "use_prompt": "promptsource prompts need the network",
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "custom_dataset": "a Python dataset builder is not supported; use dataset_path: json",
    "class": "Python task classes are not supported; write the task as YAML",
}
_FEWSHOT_KEYS = {"sampler", "split", "process_docs", "samples", "doc_to_text", "doc_to_choice", "doc_to_target",
                 "gen_prefix", "fewshot_delimiter", "target_delimiter", "fewshot_indices"}
_GREEDY_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}


def _resolve(value):
    """`!function` references become the callables they name (lists and mappings resolved member by member)."""
    if isinstance(value, FunctionRef):
        return value.resolve()
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


@dataclass
class MetricSpec:
    """One entry of a task's metric_list: how a document's value is made and how values are aggregated."""

    name: str
    aggregation: Callable
    higher_is_better: bool | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    function: Callable | None = None  # a `!function` metric (generate_until only, as in lm-eval)


@dataclass
class FewshotSettings:
    sampler: str
    split: str | None
    samples: list | None
    process_docs: Callable | None
    doc_to_text: Any
    doc_to_choice: Any
    doc_to_target: Any
    gen_prefix: Any
    fewshot_delimiter: str
    target_delimiter: str


class Task:
    """One lm-eval YAML task over local data, checked whole at construction."""

    def __init__(self, cfg: dict[str, Any], yaml_path: Path | None = None) -> None:
        self.yaml_path = yaml_path
        self.where = str(yaml_path) if yaml_path else f"task {cfg.get('task')!r}"
        cfg = _resolve(dict(cfg))
        self._check_keys(cfg)
        self.config = cfg
        self.name: str = str(cfg["task"])
        self.alias: str = cfg.get("task_alias") or self.name
        self.output_type: str = cfg.get("output_type", "generate_until")
        if self.output_type not in OUTPUT_TYPES:
            raise TaskInputError(f"{self.where}: output_type {self.output_type!r} is not one of {OUTPUT_TYPES}")
        self.version = (cfg.get("metadata") or {}).get("version", "Yaml") if isinstance(cfg.get("metadata"), dict) \
            else "Yaml"
        self.description = cfg.get("description", "")
        self.target_delimiter: str = cfg.get("target_delimiter", " ")
        self.fewshot_delimiter: str = cfg.get("fewshot_delimiter", "\n\n")
        self.num_fewshot: int = int(cfg.get("num_fewshot") or 0)
        self.process_results_fn: Callable | None = cfg.get("process_results")
        if self.process_results_fn is not None and not callable(self.process_results_fn):
            raise TaskInputError(f"{self.where}: process_results must be a `!function module.name`")
        self.generation = self._generation_settings(cfg)
        self.metrics = self._metric_specs(cfg)

        self.splits, self.data_sources = self._load_data(cfg)
        self.docs = self._eval_docs(cfg)
        self.features = sorted({k for doc in self.docs for k in doc})
        self.fewshot = self._fewshot_settings(cfg)
        self.fewshot_pool = self._fewshot_pool(cfg)
        self._check_documents()

    # ------------------------------------------------------------------ configuration
    def _check_keys(self, cfg: dict) -> None:
        if "task" not in cfg:
            raise TaskInputError(f"{self.where}: a task config needs `task: <name>`")
        for key, why in _REFUSED_KEYS.items():
            if cfg.get(key) is not None:
                raise TaskInputError(f"{self.where}: {key}: {why}")
        unknown = sorted(set(cfg) - _TASK_KEYS - set(_REFUSED_KEYS) - {"group"})
        if unknown:
            raise TaskInputError(f"{self.where}: unknown task keys {unknown} (lm-eval's TaskConfig has no such field)")
        if int(cfg.get("repeats", 1)) != 1:
            raise TaskInputError(f"{self.where}: repeats: {cfg['repeats']} - only greedy single answers (repeats: 1)")
        filters = cfg.get("filter_list")
        if filters is not None and not _is_default_filter(filters):
            raise TaskInputError(f"{self.where}: filter_list: only the default `none` / take_first filter is supported")

    def _generation_settings(self, cfg: dict) -> dict[str, Any]:
        gen = cfg.get("generation_kwargs")
        delim = cfg.get("fewshot_delimiter", "\n\n")
        if gen is None:
            gen = {"until": [delim], "do_sample": False, "temperature": 0.0, "max_gen_toks": 256}
        gen = dict(gen)
        extra = sorted(set(gen) - _GREEDY_GEN_KEYS)
        if extra or gen.get("do_sample") or float(gen.get("temperature", 0.0) or 0.0) > 0:
            raise TaskInputError(
                f"{self.where}: generation_kwargs {sorted(gen)}: only greedy generation (until, max_gen_toks, "
                "do_sample: false, temperature: 0) is supported"
            )
        if "until" not in gen:
            gen["until"] = [delim]
        until = gen["until"]
        gen["until"] = [until] if isinstance(until, str) else list(until)
        gen.setdefault("max_gen_toks", 256)
        return gen

    def _metric_specs(self, cfg: dict) -> list[MetricSpec]:
        entries = cfg.get("metric_list")
        if entries is None:
            entries = [{"metric": name} for name in M.DEFAULT_METRICS[self.output_type]]
        specs = []
        for entry in entries:
            if not isinstance(entry, dict) or "metric" not in entry:
                raise TaskInputError(f"{self.where}: metric_list entry {entry!r} needs a `metric:` key")
            name = entry["metric"]
            function = None
            if callable(name):
                function, name = name, name.__name__
                if self.output_type != "generate_until" and self.process_results_fn is None:
                    raise TaskInputError(f"{self.where}: metric {name}: a `!function` metric needs generate_until")
            kwargs = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better",
                                                                   "hf_evaluate")}
            info = M.BUILTIN_METRICS.get(name)
            if info is None and function is None and self.process_results_fn is None:
                raise TaskInputError(
                    f"{self.where}: metric_list names {name!r}, which is not built in "
                    f"({sorted(M.BUILTIN_METRICS)}); name one of those or give process_results: !function ..."
                )
            if info is not None and function is None and self.process_results_fn is None \
                    and self.output_type not in info.output_types:
                raise TaskInputError(
                    f"{self.where}: metric {name!r} is not produced by output_type {self.output_type} "
                    f"(it is for {list(info.output_types)})"
                )
            aggregation = entry.get("aggregation", info.aggregation if info else None)
            if isinstance(aggregation, str):
                if aggregation not in M.AGGREGATIONS:
                    raise TaskInputError(f"{self.where}: metric {name}: unknown aggregation {aggregation!r} "
                                         f"(known: {sorted(M.AGGREGATIONS)})")
                aggregation = M.AGGREGATIONS[aggregation]
            if not callable(aggregation):
                raise TaskInputError(f"{self.where}: metric {name}: give `aggregation:` (a name or !function)")
            higher = entry.get("higher_is_better", info.higher_is_better if info else None)
            specs.append(MetricSpec(name, aggregation, higher, kwargs, function))
        return specs

    def _load_data(self, cfg: dict):
        splits = load_splits(cfg, self.yaml_path)
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(files, dict):
            sources = {s: str(f) for s, f in files.items()}
        else:
            sources = {s: str(files if files is not None else cfg.get("dataset_path")) for s in splits}
        return splits, sources

    def _split(self, key: str, split: str, process: Callable | None) -> list[dict]:
        if split not in self.splits:
            raise TaskInputError(
                f"{self.where}: {key}: {split!r} is not a split of the data (splits: {sorted(self.splits)}); "
                "name data_files per split, e.g. dataset_kwargs: {data_files: {test: file.jsonl}}"
            )
        docs = self.splits[split]
        if process is not None:
            import datasets  # process_docs functions take and return a datasets.Dataset, as in lm-eval

            docs = list(process(datasets.Dataset.from_list(docs)))
        return [dict(d) for d in docs]

    def _eval_docs(self, cfg: dict) -> list[dict]:
        for key in ("test_split", "validation_split"):
            if cfg.get(key) is not None:
                self.eval_split_key = key
                docs = self._split(key, cfg[key], cfg.get("process_docs"))
                if not docs:
                    raise TaskInputError(f"{self.where}: {key} {cfg[key]!r} ({self._source(cfg[key])}) has no documents")
                return docs
        raise TaskInputError(f"{self.where}: set test_split or validation_split (the split to evaluate)")

    def _source(self, split: str) -> str:
        return self.data_sources.get(split, str(self.config.get("dataset_path")))

    def _fewshot_settings(self, cfg: dict) -> FewshotSettings:
        fs = dict(cfg.get("fewshot_config") or {})
        unknown = sorted(set(fs) - _FEWSHOT_KEYS)
        if unknown:
            raise TaskInputError(f"{self.where}: fewshot_config: unknown keys {unknown}")
        if fs.get("fewshot_indices") is not None:
            raise TaskInputError(f"{self.where}: fewshot_config.fewshot_indices is ignored by lm-eval 0.4.13; drop it")
        sampler = fs.get("sampler", "default")
        if sampler not in SAMPLERS:
            raise TaskInputError(f"{self.where}: fewshot_config.sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
        return FewshotSettings(
            sampler=sampler,
            split=fs.get("split", cfg.get("fewshot_split")),
            samples=fs.get("samples"),
            process_docs=fs.get("process_docs", cfg.get("process_docs")),
            doc_to_text=fs.get("doc_to_text", cfg.get("doc_to_text")),
            doc_to_choice=fs.get("doc_to_choice", cfg.get("doc_to_choice")),
            doc_to_target=fs.get("doc_to_target", cfg.get("doc_to_target")),
            gen_prefix=fs.get("gen_prefix", cfg.get("gen_prefix")),
            fewshot_delimiter=fs.get("fewshot_delimiter", self.fewshot_delimiter),
            target_delimiter=fs.get("target_delimiter", self.target_delimiter),
        )

    def _fewshot_pool(self, cfg: dict) -> list[dict]:
        fs = self.fewshot
        if fs.split is not None:
            self.fewshot_pool_split = fs.split
            return self._split("fewshot_split", fs.split, fs.process_docs)
        if fs.samples is not None:
            samples = fs.samples() if callable(fs.samples) else fs.samples
            if not isinstance(samples, list):
                raise TaskInputError(f"{self.where}: fewshot_config.samples must be a list of documents")
            self.fewshot_pool_split = None
            return [dict(d) for d in samples]
        for key in ("training_split", "validation_split", "test_split"):
            if cfg.get(key) is not None:
                self.fewshot_pool_split = cfg[key]
                return self._split(key, cfg[key], cfg.get("process_docs"))
        return []

    # ------------------------------------------------------------------ checks before anything runs
    def _template_fields(self, spec) -> frozenset[str]:
        if isinstance(spec, str) and spec not in self.features:
            try:
                return fields_named(spec) - set(jinja2.Environment().globals)
            except jinja2.TemplateSyntaxError as err:
                raise TaskInputError(f"{self.where}: template {spec!r} is not valid Jinja ({err})") from err
        if isinstance(spec, str):
            return frozenset([spec])
        return frozenset()

    def _require_fields(self, docs: list[dict], keys: dict[str, Any], split: str) -> None:
        for key, spec in keys.items():
            needed = self._template_fields(spec)
            for index, doc in enumerate(docs):
                missing = sorted(needed - set(doc))
                if missing:
                    raise TaskInputError(
                        f"{self.where}: {key} names field {missing[0]!r}, which document {index} of "
                        f"{self._source(split) if split else 'fewshot_config.samples'} (split {split!r}) lacks; "
                        f"its fields are {sorted(doc)}"
                    )

    def _check_documents(self) -> None:
        cfg = self.config
        if self.output_type == "multiple_choice" and cfg.get("doc_to_choice") is None:
            raise TaskInputError(f"{self.where}: doc_to_choice is required for output_type: multiple_choice")
        eval_split = cfg[self.eval_split_key]
        keys = {k: cfg.get(k) for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "description", "gen_prefix")}
        self._require_fields(self.docs, {k: v for k, v in keys.items() if v is not None}, eval_split)
        if self.num_fewshot > 0:
            if not self.fewshot_pool:
                raise TaskInputError(f"{self.where}: num_fewshot: {self.num_fewshot} but there are no few-shot documents")
            fs = self.fewshot
            fs_keys = {"fewshot doc_to_text": fs.doc_to_text, "fewshot doc_to_target": fs.doc_to_target,
                       "fewshot doc_to_choice": fs.doc_to_choice, "fewshot gen_prefix": fs.gen_prefix}
            self._require_fields(self.fewshot_pool, {k: v for k, v in fs_keys.items() if v is not None},
                                 self.fewshot_pool_split)
        if cfg.get("doc_to_text") is not None and isinstance(self.doc_to_text(self.docs[0]), int):
            raise TaskInputError(f"{self.where}: doc_to_text gives a choice index (multiple-input tasks such as "
                                 "winogrande) - not supported")
        for index, doc in enumerate(self.docs):
            try:
                self._check_document(doc)
            except TaskInputError as err:
                raise TaskInputError(f"{self.where}: document {index} of {self._source(eval_split)}: {err}") from None
            except (jinja2.TemplateError, KeyError, ValueError, SyntaxError, TypeError) as err:
                raise TaskInputError(f"{self.where}: document {index} of {self._source(eval_split)} cannot be "
                                     f"rendered ({type(err).__name__}: {err})") from None

    def _check_document(self, doc: dict) -> None:
        text = self.doc_to_text(doc)
        target = self.doc_to_target(doc)
        if self.output_type == "multiple_choice" or self.config.get("doc_to_choice") is not None:
            choices = self.doc_to_choice(doc)
            if not isinstance(choices, list) or not choices:
                raise TaskInputError(f"doc_to_choice ({self.config['doc_to_choice']!r}) gives {choices!r}; "
                                     "a multiple-choice document needs a non-empty list of choices")
            if not all(isinstance(c, str) for c in choices):
                raise TaskInputError(f"doc_to_choice gives non-text choices {choices!r}")
        if not isinstance(text, str):
            raise TaskInputError(f"doc_to_text gives {type(text).__name__}, not text")
        if self.output_type in ("loglikelihood", "loglikelihood_rolling") and not isinstance(target, str):
            raise TaskInputError(f"doc_to_target gives {target!r}; {self.output_type} scores a text target")

    # ------------------------------------------------------------------ lm-eval's doc_to_* semantics
    def doc_to_text(self, doc: dict, spec=None):
        spec = self.config.get("doc_to_text") if spec is None else spec
        if isinstance(spec, int) or callable(spec):
            return spec(doc) if callable(spec) else spec
        if spec in self.features:
            return doc[spec]
        text = render(spec, doc)
        if text.isdigit() and self.config.get("doc_to_choice") is not None:
            return ast.literal_eval(text)
        return text

    def doc_to_target(self, doc: dict, spec=None):
        spec = self.config.get("doc_to_target") if spec is None else spec
        if isinstance(spec, (int, list)):
            return spec
        if callable(spec):
            return spec(doc)
        if spec in self.features:
            return doc[spec]
        text = render(spec, doc)
        if text.isdigit() and self.config.get("doc_to_choice") is not None:
            return ast.literal_eval(text)
        if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                return text
        return text

    def doc_to_choice(self, doc: dict, spec=None) -> list:
        spec = self.config.get("doc_to_choice") if spec is None else spec
        if isinstance(spec, str):
            return doc[spec] if spec in self.features else ast.literal_eval(render(spec, doc))
        if isinstance(spec, list):
            return spec
        if isinstance(spec, dict):
            return list(spec.values())
        if callable(spec):
            return spec(doc)
        raise TaskInputError(f"{self.where}: doc_to_choice must be a field, a template, a list or a mapping")

    def _field_or_template(self, doc: dict, spec) -> str | None:
        if not spec:
            return None
        return doc[spec] if spec in doc else render(spec, doc)

    # ------------------------------------------------------------------ contexts and requests
    def make_sampler(self, seed: int | None = DEFAULT_FEWSHOT_SEED) -> DefaultSampler:
        """A fresh few-shot sampler; one per task per run, used for the documents in order (lm-eval's draws)."""
        return SAMPLERS[self.fewshot.sampler](self.fewshot_pool, seed)

    def context(self, doc: dict, sampler: DefaultSampler) -> str:
        """description + few-shot examples + this document's text, exactly as lm-eval joins them (no chat)."""
        parts = [self._field_or_template(doc, self.description) or ""]
        if self.num_fewshot > 0:
            fs = self.fewshot
            exclude = doc if fs.split == self.config.get("test_split") else None
            for shot in sampler.sample(self.num_fewshot, exclude=exclude):
                choices = self.doc_to_choice(shot, fs.doc_to_choice) if fs.doc_to_choice else None
                parts.append(_qa_turn(
                    self.doc_to_text(shot, fs.doc_to_text), choices, self.doc_to_target(shot, fs.doc_to_target),
                    self._field_or_template(shot, fs.gen_prefix), fs.target_delimiter, fs.fewshot_delimiter,
                ))
        gen_prefix = self.gen_prefix(doc)
        parts.append(_qa_turn(self.doc_to_text(doc), None, None, gen_prefix, self.target_delimiter, ""))
        return "".join(parts)

    def gen_prefix(self, doc: dict) -> str | None:
        spec = self.config.get("gen_prefix")
        if spec is None:
            return None
        return doc[spec] if spec in self.features else render(spec, doc)

    def requests(self, doc: dict, ctx: str) -> list[Request]:
        """The requests one document needs, in lm-eval's order (choices in order, then unconditional ones)."""
        if self.output_type == "loglikelihood":
            return [LoglikelihoodRequest(ctx, self.doc_to_target(doc))]
        if self.output_type == "loglikelihood_rolling":
            return [RollingRequest(self.doc_to_target(doc))]
        if self.output_type == "multiple_choice":
            choices = self.doc_to_choice(doc)
            reqs: list[Request] = [LoglikelihoodRequest(ctx, f"{self.target_delimiter}{c}") for c in choices]
            if any(m.name == "acc_mutual_info" for m in self.metrics):
                reqs += [LoglikelihoodRequest("", f"{self.target_delimiter}{c}") for c in choices]
            return reqs
        gen = self.generation
        return [GenerationRequest(ctx, tuple(gen["until"]), int(gen["max_gen_toks"]))]

    # ------------------------------------------------------------------ answers -> per-document metric values
    def process_results(self, doc: dict, answers: list) -> dict[str, Any]:
        if self.process_results_fn is not None:
            return dict(self.process_results_fn(doc, answers))
        wanted = {m.name for m in self.metrics}
        if self.output_type == "loglikelihood":
            ll, greedy = answers[0]
            out = {"perplexity": ll, "acc": int(greedy)}
            return {k: v for k, v in out.items() if k in wanted}
        if self.output_type == "loglikelihood_rolling":
            (ll,) = answers
            text = self.doc_to_target(doc)
            out = {"word_perplexity": (ll, count_words(text)), "byte_perplexity": (ll, count_bytes(text)),
                   "bits_per_byte": (ll, count_bytes(text))}
            return {k: v for k, v in out.items() if k in wanted}
        if self.output_type == "multiple_choice":
            return self._multiple_choice_results(doc, answers, wanted)
        return self._generation_results(doc, answers[0])

    def _multiple_choice_results(self, doc: dict, answers: list, wanted: set[str]) -> dict[str, Any]:
        lls, greedy = zip(*answers)
        choices = self.doc_to_choice(doc)
        if 2 * len(choices) == len(lls) and "acc_mutual_info" in wanted:
            unconditional, lls = lls[len(choices):], lls[: len(choices)]
        char_lens = np.array([float(len(c)) for c in choices])
        byte_lens = np.array([float(len(c.encode("utf-8"))) for c in choices])
        pred = np.argmax(lls)
        pred_norm = np.argmax(lls / char_lens)
        pred_bytes = np.argmax(lls / byte_lens)
        gold = self.doc_to_target(doc)
        if isinstance(gold, list):
            gold = [g if g < len(choices) else -100 for g in gold]
        elif isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -100
        elif isinstance(gold, int):
            gold = gold if gold < len(choices) else -100
        if gold == -100 or (isinstance(gold, list) and -100 in gold):
            raise TaskInputError(f"{self.where}: doc_to_target {self.doc_to_target(doc)!r} is not one of the "
                                 f"{len(choices)} choices of document {doc}")
        multi = isinstance(gold, list)
        hit = (lambda p: 1.0 if p in gold else 0.0) if multi else (lambda p: 1.0 if p == gold else 0.0)
        out: dict[str, Any] = {
            "acc": hit(pred), "acc_norm": hit(pred_norm), "acc_bytes": hit(pred_bytes),
            "exact_match": int(any(greedy[g] for g in gold)) if multi else int(greedy[gold]),
            "brier_score": (gold, _softmax(lls)),
        }
        if "bits_per_byte" in wanted:
            gold_index = gold[0] if multi else gold
            continuation = f"{self.target_delimiter}{choices[gold_index]}"
            out["bits_per_byte"] = (lls[gold_index], len(continuation.encode("utf-8")))
        if "acc_mutual_info" in wanted:
            mutual = [c - u for c, u in zip(lls, unconditional)]
            out["acc_mutual_info"] = hit(np.argmax(mutual))
        return {k: v for k, v in out.items() if k in wanted}

    def _generation_results(self, doc: dict, generated: str) -> dict[str, Any]:
        gold = self.doc_to_target(doc)
        if self.config.get("doc_to_choice") is not None:
            gold = self.doc_to_choice(doc)[gold]
        multi = isinstance(gold, list)
        if not multi and not isinstance(gold, str):
            gold = str(gold)
        out = {}
        for spec in self.metrics:
            if multi:
                scores = [self._generation_metric(spec, g, generated) for g in gold]
                out[spec.name] = 1.0 if any(scores) else 0.0
            else:
                out[spec.name] = self._generation_metric(spec, gold, generated)
        return out

    def _generation_metric(self, spec: MetricSpec, gold: str, generated: str):
        if spec.function is not None:
            try:
                value = spec.function(references=[gold], predictions=[generated], **spec.kwargs)
            except TypeError:
                value = spec.function([gold, generated])
            return value[spec.name] if isinstance(value, dict) else value
        if spec.name == "exact_match":
            return M.exact_match(gold, generated, **spec.kwargs)
        if spec.name in M.ROUGE_TYPES:
            return M.rouge(spec.name, gold, generated, **spec.kwargs)
        return [gold, generated]  # corpus metrics (bleu, chrf, chrf++, ter) aggregate the pairs

    def n_docs(self, limit: float | None) -> int:
        """How many documents a run with `limit` scores (a fraction below 1 is rounded up, as lm-eval does)."""
        if limit is None:
            return len(self.docs)
        count = int(np.ceil(len(self.docs) * limit)) if limit < 1.0 else int(limit)
        return min(count, len(self.docs))

    def dump_config(self) -> dict[str, Any]:
        """The task's config for the results file (callables by name)."""
        def plain(value):
            if callable(value):
                return getattr(value, "__name__", str(value))
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        cfg = {k: plain(v) for k, v in self.config.items() if v is not None}
        cfg.setdefault("output_type", self.output_type)
        cfg["num_fewshot"] = self.num_fewshot
        cfg.setdefault("target_delimiter", self.target_delimiter)
        cfg.setdefault("fewshot_delimiter", self.fewshot_delimiter)
        if self.output_type == "generate_until":
            cfg["generation_kwargs"] = self.generation
        return cfg


def _is_default_filter(filters) -> bool:
    if not isinstance(filters, list) or len(filters) != 1:
        return False
    only = filters[0]
    return only.get("name") == "none" and all(f.get("function") == "take_first" for f in only.get("filter", []))


def _softmax(values) -> np.ndarray:
    exps = np.exp(values - np.max(values))
    return exps / exps.sum()


def _qa_turn(q, choices, answer, gen_prefix, target_delimiter: str, fewshot_delimiter: str) -> str:
    """One question (and answer, for a few-shot example) as lm-eval's plain-text messages render it."""
    if not isinstance(q, str):
        raise TaskInputError(f"doc_to_text gave {q!r}, not text")
    has_answer = answer is not None and answer != ""
    needs_delimiter = bool(gen_prefix) and _requires_delimiter(q, gen_prefix)
    text = q + (target_delimiter if (has_answer and not gen_prefix) or needs_delimiter else "")
    if has_answer:
        if choices and isinstance(answer, int):
            answer = choices[answer]
        elif isinstance(answer, list):
            answer = answer[0]
        if not isinstance(answer, str):
            raise TaskInputError(f"a few-shot answer is {answer!r}, not text (give doc_to_choice for an index)")
        text += _maybe_delimit(gen_prefix, answer) + fewshot_delimiter
    elif gen_prefix:
        text += gen_prefix
    return text


def _requires_delimiter(prefix: str, suffix: str) -> bool:
    return prefix != "" and not (prefix[-1].isspace() or suffix[0].isspace())


def _maybe_delimit(prefix: str | None, suffix: str, delimiter: str = " ") -> str:
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def count_words(text: str) -> int:
    """lm-eval's word count for word perplexity: pieces between runs of whitespace."""
    import re

    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


# ---------------------------------------------------------------------- groups and loading by name
@dataclass
class AggregateMetric:
    metric: str
    filter_list: list[str] | None = None
    weight_by_size: bool = True


@dataclass
class Group:
    """Tasks (and groups) reported together; with aggregate_metric_list, a score over their documents."""

    name: str
    alias: str
    children: list[Task | Group]
    aggregate_metrics: list[AggregateMetric]
    version: str = "N/A"
    config: dict[str, Any] = field(default_factory=dict)

    def leaf_tasks(self) -> list[Task]:
        out: list[Task] = []
        for child in self.children:
            out.extend(child.leaf_tasks() if isinstance(child, Group) else [child])
        return out


def load_tasks(names: list[str], task_dirs: list[str | Path]) -> list[Task | Group]:
    """The named tasks, groups and tags from the task directories, each checked whole (see module docstring)."""
    index = TaskIndex.build(task_dirs)
    out: list[Task | Group] = []
    for name in names:
        if name not in index.entries:
            raise TaskInputError(_unknown_name_message(name, index, task_dirs))
        built = _build(index.entries[name], index, overrides=None, group_name=None)
        out.extend(built if isinstance(built, list) else [built])
    return out


def _unknown_name_message(name: str, index: TaskIndex, task_dirs) -> str:
    close = difflib.get_close_matches(name, list(index.entries), n=3)
    msg = f"eval.tasks: unknown task {name!r}: no task, group or tag of that name in eval.task_dirs {list(map(str, task_dirs))}"
    if close:
        msg += f"; did you mean {close}?"
    if index.unreadable:
        msg += "; unreadable YAML: " + "; ".join(f"{p}: {why}" for p, why in index.unreadable.items())
    return msg


def _build(entry: IndexEntry, index: TaskIndex, overrides: dict | None, group_name: str | None):
    if entry.kind == "tag":
        return [_build(index.entries[t], index, overrides, group_name) for t in sorted(entry.members)]
    cfg = load_task_yaml(entry.yaml_path) if entry.yaml_path else dict(entry.cfg or {})
    cfg = {**cfg, **(overrides or {})}
    if entry.kind == "group":
        return _build_group(str(cfg["group"]), cfg, index, entry.yaml_path)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    return Task(cfg, entry.yaml_path)


_GROUP_KEYS = {"group", "group_alias", "task", "aggregate_metric_list", "metadata", "tag"}


def _build_group(name: str, cfg: dict, index: TaskIndex, yaml_path: Path | None) -> Group:
    where = str(yaml_path) if yaml_path else f"group {name!r}"
    task_overrides = {k: v for k, v in cfg.items() if k not in _GROUP_KEYS}
    members = cfg.get("task") or []
    members = [members] if isinstance(members, str) else members
    children: list[Task | Group] = []
    for item in members:
        if isinstance(item, str):
            base, item_overrides = item, dict(task_overrides)
        elif isinstance(item, dict) and "group" in item:
            sub = item["group"]
            if sub in index.entries:
                children.append(_build(index.entries[sub], index, {**task_overrides,
                                       **{k: v for k, v in item.items() if k != "group"}}, name))
            else:
                children.append(_build_group(f"{name}::{sub}", item, index, yaml_path))
            continue
        elif isinstance(item, dict) and "task" in item:
            base, item_overrides = item["task"], {**task_overrides, **item}
        else:
            raise TaskInputError(f"{where}: group member {item!r} must be a name or a mapping with task:/group:")
        if base not in index.entries:
            if isinstance(item, dict):  # an inline task defined inside the group
                children.append(Task({**item_overrides, "task": f"{name}::{base}"}, yaml_path))
                continue
            raise TaskInputError(f"{where}: group {name!r} lists " + _unknown_name_message(base, index, [])
                                 .removeprefix("eval.tasks: "))
        built = _build(index.entries[base], index, item_overrides or None, name)
        children.extend(built if isinstance(built, list) else [built])
    aggregates = []
    raw = cfg.get("aggregate_metric_list")
    for item in [raw] if isinstance(raw, dict) else (raw or []):
        aggregation = item.get("aggregation", "mean")
        if aggregation != "mean":
            raise TaskInputError(f"{where}: aggregate_metric_list: only `aggregation: mean` is defined by lm-eval")
        filters = item.get("filter_list")
        aggregates.append(AggregateMetric(item["metric"], [filters] if isinstance(filters, str) else filters,
                                          bool(item.get("weight_by_size", True))))
    metadata = cfg.get("metadata") or {}
    return Group(name, cfg.get("group_alias") or name, children, aggregates,
                 str(metadata.get("version", "N/A")) if metadata else "N/A", dict(cfg))
