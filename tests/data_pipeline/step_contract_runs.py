"""Planted runs of the default and web pipelines for the step-contract tests, and the digests of what they keep.

A module of its own so the digests can be computed by any checkout of the code: the expected digests in
test_step_contract.py were produced by running `kept_digests(run_default(...))` and `kept_digests(run_web(...))`
with the code before the step contract was unified (main at 5e27e33), so the test shows the refactor kept every
kept document and token byte for byte. The pipelines then ran their dedup steps before the heuristics; runs compared
with those digests put the steps back in that order (`DEDUP_FIRST_DEFAULT`, `DEDUP_FIRST_WEB`).
"""

from __future__ import annotations

import hashlib
import html
import json
import random
from pathlib import Path
from typing import Optional

from data_pipeline.cli import build_plan, compose_config
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.shards import read_records
from data_pipeline.synthetic import Grammar, generate_clean_documents, generate_corpus, junk_document, write_corpus

# Prose in another language, for language ID to drop (the first article of the Universal Declaration of Human
# Rights and its preamble's opening, in French).
FRENCH = (
    "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison et de "
    "conscience et doivent agir les uns envers les autres dans un esprit de fraternité. Considérant que la "
    "reconnaissance de la dignité inhérente à tous les membres de la famille humaine et de leurs droits égaux et "
    "inaliénables constitue le fondement de la liberté, de la justice et de la paix dans le monde."
)


# The orders the default and web pipelines had when the digests were made (dedup before the heuristics): runs that
# compare with the digests put the configured steps back in this order, by name.
DEDUP_FIRST_DEFAULT = (
    "normalize", "exact_dedup", "minhash_dedup", "boilerplate_dedup", "heuristics", "pii", "decontaminate", "tokenize"
)  # fmt: skip
DEDUP_FIRST_WEB = (
    "url_filter", "extract", "normalize", "lang_id", "exact_dedup", "minhash_dedup", "boilerplate_dedup",
    "heuristics", "classifier", "pii", "decontaminate", "tokenize",
)  # fmt: skip


def run_pipeline(overrides: list[str], step_order: Optional[tuple[str, ...]] = None) -> Path:
    """Runs the composed pipeline; `step_order` reorders its configured steps (with their parameters) by name."""
    cfg = compose_config(overrides)
    if step_order is not None:
        by_name = {step.name: step for step in cfg.pipeline.steps}
        assert sorted(by_name) == sorted(step_order), (sorted(by_name), step_order)
        cfg.pipeline.steps = [by_name[name] for name in step_order]
    plan, _ = build_plan(cfg)
    LocalExecutor(plan, workers=1).run()
    return Path(cfg.output)


def run_default(root: Path, overrides: tuple[str, ...] = (), step_order: Optional[tuple[str, ...]] = None) -> Path:
    """The default pipeline over a planted corpus: duplicates, near duplicates, junk, contaminated documents."""
    corpus = generate_corpus(n_clean=120, n_exact_dups=10, n_near_dups=30, n_junk=30, n_contaminated=6, seed=11)
    paths = write_corpus(corpus, root / "source", files=2)
    return run_pipeline(
        [
            "pipeline=default",
            f"input={paths['corpus']}",
            f"output={root / 'out'}",
            f"eval_sets=[{paths['eval']}]",
            "tasks=2",
            *overrides,
        ],
        step_order,
    )


def _page(paragraphs: list[str]) -> str:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head><title>t</title></head><body><main><article>{body}</article></main></body></html>"
    )


# An advertisement added to each paragraph of a page: what the quality classifier trained here learns to drop.
SPAM = "Buy cheap watches online today with free shipping and a discount code."


def _spam(text: str) -> str:
    return "\n\n".join(f"{p} {SPAM}" for p in text.split("\n\n"))


def web_pages(root: Path) -> dict[str, Path]:
    """JSONL pages (HTML under `html`, with a url) that something in every step of the web pipeline drops."""
    rng = random.Random(5)
    grammar = Grammar()
    clean = generate_clean_documents(60, rng=rng, grammar=grammar)
    eval_texts = clean[:3]
    rows = [
        {"id": f"clean{i}", "url": f"https://site{i}.example.com/a", "html": _page(t.split("\n\n"))}
        for i, t in enumerate(clean[3:])
    ]
    rows += [
        {"id": "dup0", "url": "https://copy.example.com/a", "html": rows[0]["html"]},
        {"id": "blocked", "url": "https://blocked.example.net/a", "html": rows[1]["html"]},
        {"id": "plain", "url": "https://plain.example.com/a", "html": "no markup at all, just words"},
        {"id": "empty", "url": "https://empty.example.com/a", "html": "<html><body><div></div></body></html>"},
        {"id": "french", "url": "https://fr.example.com/a", "html": _page([FRENCH, FRENCH])},
        {"id": "spam0", "url": "https://ads.example.com/0", "html": _page(_spam(clean[4]).split("\n\n"))},
        {"id": "spam1", "url": "https://ads.example.com/1", "html": _page(_spam(clean[5]).split("\n\n"))},
        {"id": "contaminated", "url": "https://leak.example.com/a", "html": _page(eval_texts[0].split("\n\n"))},
    ]
    for kind in ("short", "symbols", "repeated_lines", "lorem", "numbers", "bullets"):
        text = junk_document(rng, grammar, kind)
        rows.append({"id": f"junk_{kind}", "url": f"https://junk.example.com/{kind}", "html": _page(text.split("\n"))})
    pages = root / "pages" / "pages.jsonl"
    pages.parent.mkdir(parents=True, exist_ok=True)
    pages.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    evals = root / "eval.jsonl"
    evals.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_texts), encoding="utf-8")
    positive, negative = root / "positive.txt", root / "negative.txt"
    positive.write_text("".join(" ".join(t.split()) + "\n" for t in clean[10:]), encoding="utf-8")
    negative.write_text("".join(" ".join(_spam(t).split()) + "\n" for t in clean[10:]), encoding="utf-8")
    return {"pages": pages, "eval": evals, "positive": positive, "negative": negative}


def run_web(root: Path, overrides: tuple[str, ...] = (), step_order: Optional[tuple[str, ...]] = None) -> Path:
    """The web pipeline over `web_pages`, with a block list, an eval set and a quality classifier trained here."""
    from data_pipeline.steps.classifier import train_classifier

    paths = web_pages(root)
    model = root / "quality.bin"
    train_classifier(
        str(paths["positive"]), str(paths["negative"]), str(model), epoch=25, lr=0.5, quantize=False, seed=0
    )
    return run_pipeline(
        [
            "pipeline=web",
            f"input={paths['pages']}",
            "text_key=html",
            f"output={root / 'out'}",
            f"eval_sets=[{paths['eval']}]",
            "tasks=2",
            "pipeline.steps.0.params.blocked_domains=[blocked.example.net]",
            f"pipeline.steps.5.params.model_path={model}",
            "pipeline.steps.11.params.vocab_size=400",
            *overrides,
        ],
        step_order,
    )


def kept_digests(output: Path) -> dict[str, str]:
    """SHA-256 of every kept-document shard of every step and of every file of the token shards (not the exclusion,
    quarantine, stats or work files: their layout may change), by path relative to the run's output."""
    digests = {}
    for path in sorted(output.rglob("*")):
        relative = path.relative_to(output)
        if not path.is_file() or relative.parts[0] in ("excluded", "quarantine", "stats", ".work", ".markers"):
            continue
        if relative.parts[0] == "tokens" or (len(relative.parts) == 2 and path.name.startswith("shard-")):
            digests[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def exclusion_records(output: Path) -> list[tuple[str, dict]]:
    """(step, record) of every exclusion the run wrote."""
    return [
        (path.parent.name, record)
        for path in sorted((output / "excluded").glob("*/*.jsonl.zst"))
        for record in read_records(path)
    ]
