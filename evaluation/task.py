"""One lm-evaluation-harness YAML task over local data, rendered and scored with lm-eval 0.4.13's semantics.

A `Task` is checked whole when it is made: the data files exist, every field a template names is in every
document, every multiple-choice document has choices, every metric is known. It turns one document into its
context (description, few-shot examples, the document's own text, joined with lm-eval's delimiters) and its
requests, and the Scorer's answers back into the document's metric values.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from evaluation.doc_results import (
    generation_results,
    gold_index,
    loglikelihood_results,
    multiple_choice_results,
    rolling_results,
)
from evaluation.errors import TaskInputError
from evaluation.fewshot import SAMPLERS, DefaultSampler
from evaluation.filters import filter_pipelines
from evaluation.prompts import qa_turn
from evaluation.requests import (
    GenerationRequest,
    LoglikelihoodRequest,
    Request,
    RollingRequest,
)
from evaluation.task_data import load_splits
from evaluation.task_settings import (
    check_keys,
    fewshot_settings,
    generation_settings,
    metric_specs,
    resolve_functions,
)
from evaluation.templates import fields_named, render

OUTPUT_TYPES = ("loglikelihood", "multiple_choice", "loglikelihood_rolling", "generate_until")
DEFAULT_FEWSHOT_SEED = 1234


class Task:
    """One lm-eval YAML task over local data, checked whole at construction."""

    def __init__(self, cfg: dict[str, Any], yaml_path: Path | None = None) -> None:
        self.yaml_path = yaml_path
        self.where = f"{yaml_path} (task {cfg.get('task')!r})" if yaml_path else f"task {cfg.get('task')!r}"
        cfg = resolve_functions(dict(cfg))
        check_keys(cfg, self.where)
        self.config = cfg
        self.name: str = str(cfg["task"])
        self.alias: str = cfg.get("task_alias") or self.name
        self.output_type: str = cfg.get("output_type", "generate_until")
        if self.output_type not in OUTPUT_TYPES:
            raise TaskInputError(f"{self.where}: output_type {self.output_type!r} is not one of {OUTPUT_TYPES}")
        metadata = cfg.get("metadata")
        self.version = metadata.get("version", "Yaml") if isinstance(metadata, dict) else "Yaml"  # lm-eval's VERSION
        self.description = cfg.get("description", "")
        self.target_delimiter: str = cfg.get("target_delimiter", " ")
        self.fewshot_delimiter: str = cfg.get("fewshot_delimiter", "\n\n")
        self.num_fewshot: int = int(cfg.get("num_fewshot") or 0)
        self.process_results_fn: Callable | None = cfg.get("process_results")
        if self.process_results_fn is not None and not callable(self.process_results_fn):
            raise TaskInputError(f"{self.where}: process_results must be a `!function module.name`")
        self.generation = generation_settings(cfg, self.where)
        self.filters = filter_pipelines(cfg.get("filter_list"), self.output_type, self.where)
        self.metrics = metric_specs(cfg, self.output_type, self.process_results_fn is not None, self.where)

        self.splits, self.data_sources = self._load_data(cfg)
        self.docs = self._eval_docs(cfg)
        self.features = sorted({k for doc in self.docs for k in doc})
        self.fewshot = fewshot_settings(cfg, self.where)
        self.fewshot_pool = self._fewshot_pool(cfg)
        self._check_documents()

    # ------------------------------------------------------------------ data
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
                "name data_files per split, e.g. dataset_kwargs: {data_files: {test: file.jsonl}}, or set "
                f"{key}: null in your task YAML when your copy has no such split"
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
                    raise TaskInputError(
                        f"{self.where}: {key} {cfg[key]!r} ({self._source(cfg[key])}) has no documents"
                    )
                return docs
        raise TaskInputError(f"{self.where}: set test_split or validation_split (the split to evaluate)")

    def _source(self, split: str) -> str:
        return self.data_sources.get(split, str(self.config.get("dataset_path")))

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
        for key in ("doc_to_text", "doc_to_target"):
            if cfg.get(key) is None:
                raise TaskInputError(
                    f"{self.where}: {key} is required (a field name, a Jinja template, or '' for none)"
                )
        if self.output_type == "multiple_choice" and cfg.get("doc_to_choice") is None:
            raise TaskInputError(f"{self.where}: doc_to_choice is required for output_type: multiple_choice")
        eval_split = cfg[self.eval_split_key]
        keys = {k: cfg.get(k) for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "description", "gen_prefix")}
        self._require_fields(self.docs, {k: v for k, v in keys.items() if v is not None}, eval_split)
        if self.num_fewshot > 0:
            if not self.fewshot_pool:
                raise TaskInputError(
                    f"{self.where}: num_fewshot: {self.num_fewshot} but there are no few-shot documents"
                )
            fs = self.fewshot
            fs_keys = {
                "fewshot doc_to_text": fs.doc_to_text,
                "fewshot doc_to_target": fs.doc_to_target,
                "fewshot doc_to_choice": fs.doc_to_choice,
                "fewshot gen_prefix": fs.gen_prefix,
            }
            self._require_fields(
                self.fewshot_pool, {k: v for k, v in fs_keys.items() if v is not None}, self.fewshot_pool_split
            )
        if cfg.get("doc_to_text") is not None and isinstance(self.doc_to_text(self.docs[0]), int):
            raise TaskInputError(
                f"{self.where}: doc_to_text gives a choice index (multiple-input tasks such as "
                "winogrande) - not supported"
            )
        for index, doc in enumerate(self.docs):
            try:
                self._check_document(doc)
            except TaskInputError as err:
                raise TaskInputError(f"{self.where}: document {index} of {self._source(eval_split)}: {err}") from None
            except (jinja2.TemplateError, KeyError, ValueError, SyntaxError, TypeError) as err:
                raise TaskInputError(
                    f"{self.where}: document {index} of {self._source(eval_split)} cannot be "
                    f"rendered ({type(err).__name__}: {err})"
                ) from None

    def _check_document(self, doc: dict) -> None:
        text = self.doc_to_text(doc)
        target = self.doc_to_target(doc)
        if self.output_type == "multiple_choice" or self.config.get("doc_to_choice") is not None:
            choices = self.doc_to_choice(doc)
            if not isinstance(choices, list) or not choices:
                raise TaskInputError(
                    f"doc_to_choice ({self.config['doc_to_choice']!r}) gives {choices!r}; "
                    "a multiple-choice document needs a non-empty list of choices"
                )
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
                parts.append(
                    qa_turn(
                        self.doc_to_text(shot, fs.doc_to_text),
                        choices,
                        self.doc_to_target(shot, fs.doc_to_target),
                        self._field_or_template(shot, fs.gen_prefix),
                        fs.target_delimiter,
                        fs.fewshot_delimiter,
                    )
                )
        gen_prefix = self.gen_prefix(doc)
        parts.append(qa_turn(self.doc_to_text(doc), None, None, gen_prefix, self.target_delimiter, ""))
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
        """The document's value of every metric in metric_list (or what a process_results function returns)."""
        if self.process_results_fn is not None:
            return dict(self.process_results_fn(doc, answers))
        if self.output_type == "loglikelihood":
            values = loglikelihood_results(answers[0])
        elif self.output_type == "loglikelihood_rolling":
            values = rolling_results(self.doc_to_target(doc), answers[0])
        elif self.output_type == "multiple_choice":
            choices = self.doc_to_choice(doc)
            gold = gold_index(self.doc_to_target(doc), choices)
            if gold is None:
                raise TaskInputError(
                    f"{self.where}: doc_to_target {self.doc_to_target(doc)!r} is not one of the "
                    f"{len(choices)} choices of document {doc}"
                )
            values = multiple_choice_results(
                choices, gold, answers, {m.name for m in self.metrics}, self.target_delimiter
            )
        else:
            gold = self.doc_to_target(doc)
            if self.config.get("doc_to_choice") is not None:
                gold = self.doc_to_choice(doc)[gold]
            return generation_results(self.metrics, gold, answers[0])
        wanted = {m.name for m in self.metrics}
        return {name: value for name, value in values.items() if name in wanted}  # lm-eval's order

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
