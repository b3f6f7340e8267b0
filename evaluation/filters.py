"""A task's `filter_list`: named pipelines that turn a generated answer into what the metrics score, with
lm-evaluation-harness 0.4.13's semantics (lm_eval/filters: regex, remove_whitespace, lowercase, uppercase, map,
take_first).

Each pipeline is scored on its own and reported under its name (`exact_match,strict-match`); without a
filter_list a task has lm-eval's default, one pipeline `none` = [take_first]. A model answers each request once
(repeats: 1), so a pipeline works on a one-element list and must end with take_first, which hands the one filtered
answer to the metrics. Any other filter (majority_vote, take_first_k, multi_choice_regex, custom Python filters)
is refused with the task and filter named, never skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evaluation.errors import TaskInputError

DEFAULT_FILTER = "none"


def _regex(regex_pattern: str = r"#### (\-?[0-9\.\,]+)", group_select: int = 0, fallback: str = "[invalid]"):
    compiled = re.compile(regex_pattern)

    def extract(answers: list) -> list:
        out = []
        for answer in answers:
            found = compiled.findall(answer if isinstance(answer, str) else "")
            if not found:
                out.append(fallback)
                continue
            match = found[group_select]
            if isinstance(match, tuple):  # several groups: the first that matched
                match = next((m for m in match if m), fallback)
            out.append(match.strip())
        return out

    return extract


def _map(mapping_dict: dict | None = None, default_value=None):
    if not isinstance(mapping_dict, dict):
        raise ValueError("map needs mapping_dict: {answer: value, ...}")
    return lambda answers: [mapping_dict.get(a, default_value) for a in answers]


STEPS: dict[str, Callable[..., Callable[[list], list]]] = {
    "regex": _regex,
    "remove_whitespace": lambda: lambda answers: [a.strip() for a in answers],
    "lowercase": lambda: lambda answers: [a.lower() for a in answers],
    "uppercase": lambda: lambda answers: [a.upper() for a in answers],
    "map": _map,
}


@dataclass(frozen=True)
class FilterPipeline:
    """One named entry of filter_list: its steps before the final take_first."""

    name: str
    steps: tuple[Callable[[list], list], ...] = ()

    def apply(self, answer: Any) -> Any:
        """The one filtered answer the metrics see (take_first of the steps' output)."""
        answers = [answer]
        for step in self.steps:
            answers = step(answers)
        return answers[0]


def filter_pipelines(filter_list, output_type: str, where: str) -> list[FilterPipeline]:
    """The task's pipelines, in filter_list order; a filter this evaluator cannot run exactly is refused."""
    if filter_list is None:
        return [FilterPipeline(DEFAULT_FILTER)]
    if not isinstance(filter_list, list) or not filter_list:
        raise TaskInputError(f"{where}: filter_list must be a non-empty list of {{name:, filter: [...]}}")
    pipelines, names = [], set()
    for entry in filter_list:
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("filter"), list):
            raise TaskInputError(f"{where}: filter_list entry {entry!r} needs `name:` and a `filter:` list")
        name = str(entry["name"])
        if name in names:
            raise TaskInputError(f"{where}: filter_list names {name!r} twice")
        names.add(name)
        pipelines.append(_pipeline(name, entry["filter"], output_type, where))
    return pipelines


def _pipeline(name: str, steps: list, output_type: str, where: str) -> FilterPipeline:
    functions = [step.get("function") if isinstance(step, dict) else None for step in steps]
    if not functions or functions[-1] != "take_first" or functions.count("take_first") != 1:
        raise TaskInputError(
            f"{where}: filter {name!r}: {functions} - a pipeline must end with its one take_first "
            "(each request is answered once, repeats: 1)"
        )
    if output_type != "generate_until" and len(functions) > 1:
        raise TaskInputError(
            f"{where}: filter {name!r}: filters other than take_first on {output_type} answers are not supported"
        )
    built = []
    for step in steps[:-1]:
        function = step["function"]
        if function not in STEPS:
            raise TaskInputError(
                f"{where}: filter {name!r}: function {function!r} is not supported (supported: "
                f"{sorted(STEPS)} then take_first; majority_vote and take_first_k need repeats > 1, "
                "custom and multi_choice_regex filters are Python code lm-eval runs on its own objects)"
            )
        kwargs = {k: v for k, v in step.items() if k != "function"}
        try:
            built.append(STEPS[function](**kwargs))
        except (TypeError, ValueError, re.error) as err:
            raise TaskInputError(f"{where}: filter {name!r}: {function} {kwargs}: {err}") from err
    return FilterPipeline(name, tuple(built))
