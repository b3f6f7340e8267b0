"""One evaluation pass: every task's requests built first, deduplicated, scored once, turned into lm-eval's results.

All contexts are rendered (and every bad input refused) before the Scorer sees a request. Identical requests are
scored once. With several data-parallel ranks, rank r scores requests[r::world_size] of each kind and `gather`
(an all_gather_object in the caller) returns every rank's answers, which are put back in the original order, so
every rank ends with the same results. Request kinds named in `replicated` are not sharded: every rank answers all
of them (the training loop generates that way where a forward is a collective, so every rank decodes in step).
A scorer with `lockstep = True` is called on every rank even with no requests of a kind (its forwards are
collectives, and it pads every rank to the same number of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evaluation.requests import (
    GenerationRequest,
    LoglikelihoodRequest,
    Request,
    RollingRequest,
    Scorer,
)
from evaluation.results import EvalResults, TaskOutcome, build_results
from evaluation.tasks import DEFAULT_FEWSHOT_SEED, Group, Task

_SCORER_METHOD = {
    LoglikelihoodRequest: "loglikelihood",
    RollingRequest: "loglikelihood_rolling",
    GenerationRequest: "generate_until",
}


@dataclass
class _DocWork:
    task: Task
    doc_id: int
    doc: dict
    context: str
    requests: list[Request]


def leaf_tasks(items: list[Task | Group]) -> list[Task]:
    """Every task once, in the order given (a group's tasks in its order)."""
    seen: dict[str, Task] = {}
    for item in items:
        for task in item.leaf_tasks() if isinstance(item, Group) else [item]:
            seen.setdefault(task.name, task)
    return list(seen.values())


def evaluate(
    tasks: list[Task | Group],
    scorer: Scorer,
    *,
    limit: float | None = None,
    log_samples: bool = False,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[list], list[list]] | None = None,
    bootstrap_iters: int = 100000,
    fewshot_seed: int | None = DEFAULT_FEWSHOT_SEED,
    replicated: tuple[type, ...] = (),
) -> EvalResults:
    """Score the tasks with `scorer` and aggregate as lm-eval does (see the module docstring for sharding)."""
    if world_size > 1 and gather is None:
        raise ValueError("evaluate: world_size > 1 needs gather (all_gather_object of each rank's answers)")
    work = [w for task in leaf_tasks(tasks) for w in _build_work(task, limit, fewshot_seed)]
    answers = _score_all([r for w in work for r in w.requests], scorer, rank, world_size, gather, replicated)
    outcomes: dict[str, TaskOutcome] = {}
    for item in work:
        outcome = outcomes.setdefault(item.task.name, TaskOutcome(item.task))
        responses = [answers[r] for r in item.requests]
        for pipeline in item.task.filters:  # each filter_list entry scored on its own, as lm-eval does
            filtered = [pipeline.apply(response) for response in responses]
            values = item.task.process_results(item.doc, filtered)
            for name, value in values.items():
                outcome.raw_metrics.setdefault((name, pipeline.name), []).append(value)
            if log_samples:
                outcome.samples.append(_sample(item, responses, filtered, pipeline.name, values))
    for outcome in outcomes.values():  # lm-eval logs a task's samples filter by filter
        order = {pipeline.name: i for i, pipeline in enumerate(outcome.task.filters)}
        outcome.samples.sort(key=lambda record: order[record["filter"]])
    return build_results(tasks, list(outcomes.values()), bootstrap_iters)


def _build_work(task: Task, limit, fewshot_seed) -> list[_DocWork]:
    sampler = task.make_sampler(fewshot_seed)
    work = []
    for doc_id, doc in enumerate(task.docs[: task.n_docs(limit)]):
        context = task.context(doc, sampler)
        work.append(_DocWork(task, doc_id, doc, context, task.requests(doc, context)))
    return work


def _score_all(
    requests: list[Request], scorer: Scorer, rank: int, world_size: int, gather, replicated: tuple[type, ...]
) -> dict:
    unique = list(dict.fromkeys(requests))
    answers: dict[Request, object] = {}
    for kind, method in _SCORER_METHOD.items():
        of_kind = [r for r in unique if type(r) is kind]
        if not of_kind:
            continue
        if kind in replicated:
            got = list(getattr(scorer, method)(of_kind))
            if len(got) != len(of_kind):
                raise RuntimeError(f"scorer.{method} answered {len(got)} of {len(of_kind)} requests")
            answers.update(zip(of_kind, got))
            continue
        mine = of_kind[rank::world_size]
        called = mine or (world_size > 1 and getattr(scorer, "lockstep", False))
        got = list(getattr(scorer, method)(mine)) if called else []
        if len(got) != len(mine):
            raise RuntimeError(f"scorer.{method} answered {len(got)} of {len(mine)} requests")
        per_rank = gather(got) if world_size > 1 else [got]
        for index, request in enumerate(of_kind):
            answers[request] = per_rank[index % world_size][index // world_size]
    return answers


def _sample(item: _DocWork, responses: list, filtered: list, filter_name: str, values: dict) -> dict:
    """One document's record, shaped like lm-eval's --log_samples entry."""
    import hashlib
    import json

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    arguments = []
    for req in item.requests:
        if isinstance(req, LoglikelihoodRequest):
            arguments.append([req.context, req.continuation])
        elif isinstance(req, RollingRequest):
            arguments.append([req.text])
        else:
            arguments.append([req.context, {"until": list(req.until), "max_gen_toks": req.max_gen_toks}])
    target = item.task.doc_to_target(item.doc)
    record = {
        "doc_id": item.doc_id,
        "doc": item.doc,
        "target": target,
        "context": item.context,
        "arguments": arguments,
        "resps": [[list(r) if isinstance(r, tuple) else r] for r in responses],
        "filtered_resps": [list(r) if isinstance(r, tuple) else r for r in filtered],
        "filter": filter_name,
        "metrics": list(values),
        "doc_hash": sha(json.dumps(item.doc, indent=2, default=str, ensure_ascii=False)),
        "prompt_hash": sha(arguments[0][0]),
        "target_hash": sha(str(target)),
    }
    for name, value in values.items():
        record[name] = _plain(value)
    return record


def _plain(value):
    """Numpy values and tuples as JSON-ready Python values."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
