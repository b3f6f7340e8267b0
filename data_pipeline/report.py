"""The run's summary in words a data engineer reads first: how long it took (wall time of the run, CPU time,
and task time, each named), the funnel in documents, words and bytes (tokens where the tokenize step ran), why
documents went (per rule: documents, words, a histogram of the measured values with the threshold), and what
the editing steps changed (lines, boilerplate, PII). Written as report.md, report.html, summary.json (per step),
report.json (run totals and exclusions) and PNGs, optionally also to wandb (offline with no WANDB_API_KEY).

Reads only files under the output directory, so it can be regenerated after a Slurm run finished.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from data_pipeline.shards import read_records
from data_pipeline.stats import merge_step_dir
from data_pipeline.steps.base import EXCLUDED_VALUE_PREFIX

MAX_THRESHOLD_SCAN_LINES = 100_000  # exclusion records read per step to find each rule's threshold


def load_step_stats(root: Path, steps: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for step in steps:
        if not list((root / "stats" / step).glob("task-*.json")):
            raise FileNotFoundError(f"{root / 'stats' / step}: no task stats; step {step} has not run")
        merged = merge_step_dir(root / "stats" / step)
        merged["step"] = step
        out.append(merged)
    return out


def run_times(stats: list[dict[str, Any]]) -> dict[str, Optional[float]]:
    """Wall time from the first task's start to the last task's end; CPU and task time summed over tasks."""
    starts = [s["started"] for s in stats if s.get("started")]
    ends = [s["finished"] for s in stats if s.get("finished")]
    return {
        "wall_s": round(max(ends) - min(starts), 3) if starts and ends else None,
        "cpu_s": round(sum(s.get("cpu_s", 0.0) for s in stats), 3),
        "task_s": round(sum(s["time_s"] for s in stats), 3),
    }


def exclusions(root: Path, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (step, rule): documents and words removed, and the threshold of the rule."""
    rows = []
    for s in stats:
        rules = {k.removeprefix("excluded."): v for k, v in s["counters"].items() if k.startswith("excluded.")}
        thresholds = _thresholds(root / "excluded" / s["step"], set(rules))
        for rule, docs in sorted(rules.items(), key=lambda kv: -kv[1]):
            values = s.get("scores", {}).get(EXCLUDED_VALUE_PREFIX + rule, [])
            rows.append(
                {
                    "step": s["step"],
                    "rule": rule,
                    "documents": docs,
                    "words": s["counters"].get(f"excluded_words.{rule}", 0),
                    "threshold": thresholds.get(rule),
                    "values": values,
                }
            )
    return rows


def _thresholds(directory: Path, rules: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    read = 0
    for path in sorted(directory.glob("shard-*.jsonl*")):
        for record in read_records(path):
            read += 1
            found.setdefault(record.get("excluded_reason"), record.get("excluded_threshold"))
            if rules <= set(found) or read >= MAX_THRESHOLD_SCAN_LINES:
                return found
    return found


FIGURE_COLOURS = 64


def _save_figure(fig, path: Path) -> None:
    """A PNG in a palette of 64 colours: the charts are flat bars, lines and anti-aliased text, which a palette keeps
    as drawn, at a third of the bytes of matplotlib's RGBA PNG (~6 KB a chart instead of ~18)."""
    from PIL import Image

    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=100, bbox_inches="tight")
    drawn.seek(0)
    with Image.open(drawn) as image:
        palette = image.convert("RGB").quantize(colors=FIGURE_COLOURS)
    tmp = path.with_name(f".{path.stem}.tmp.{os.getpid()}{path.suffix}")
    palette.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _charts(
    root: Path, stats: list[dict[str, Any]], excluded: list[dict[str, Any]]
) -> tuple[str, list[str], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["input"] + [s["step"] for s in stats]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.6 + 0.4 * len(labels)), sharey=True)
    for ax, key, title in zip(axes, ("docs", "words", "bytes"), ("documents", "words", "bytes")):
        values = [stats[0][f"{key}_in"]] + [s[f"{key}_out"] for s in stats]
        share = [v / max(values[0], 1) for v in values]
        ax.barh(labels[::-1], share[::-1], color="#4a7fb5")
        for y, (v, f) in enumerate(zip(values[::-1], share[::-1])):
            ax.text(f, y, f" {v:,} ({f:.0%})", va="center", fontsize=7)
        ax.set_xlim(0, 1.45)
        ax.set_title(f"{title} after each step")
    _save_figure(fig, root / "funnel.png")
    plt.close(fig)
    scores, rules = [], []
    for s in stats:
        for name, values in sorted(s.get("scores", {}).items()):
            if values and not name.startswith(EXCLUDED_VALUE_PREFIX):
                fig, ax = plt.subplots(figsize=(6, 3))
                ax.hist(values, bins=40, color="#b5734a")
                ax.set_title(f"{s['step']}: {name} ({len(values):,} documents)")
                ax.set_xlabel(name)
                filename = f"hist_{_safe(s['step'])}_{_safe(name)}.png"
                _save_figure(fig, root / filename)
                plt.close(fig)
                scores.append(filename)
    for row in excluded:
        if not row["values"]:
            continue
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(row["values"], bins=40, color="#a33b3b")
        if isinstance(row["threshold"], (int, float)) and not isinstance(row["threshold"], bool):
            ax.axvline(row["threshold"], color="black", linestyle="--", label=f"threshold {row['threshold']}")
            ax.legend(fontsize=8)
        ax.set_title(f"{row['rule']}: value of the {len(row['values']):,} documents it removed", fontsize=9)
        filename = f"hist_excluded_{_safe(row['step'])}_{_safe(row['rule'])}.png"
        _save_figure(fig, root / filename)
        plt.close(fig)
        row["histogram"] = filename
        rules.append(filename)
    return "funnel.png", scores, rules


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _quarantined(s: dict[str, Any]) -> str:
    """Quarantined rows in every unit: documents, words and bytes (rows as read; see readers.Quarantined)."""
    if not s["docs_quarantined"]:
        return "0"
    words, size = s.get("words_quarantined", 0), s.get("bytes_quarantined", 0)
    return f"{s['docs_quarantined']:,} ({words:,} words, {size / 1e6:.2f} MB)"


PII_KINDS = (("email", "e-mail addresses"), ("ip", "IP addresses"), ("phone", "phone numbers"))


def _pii_lines(stats: list[dict[str, Any]]) -> list[str]:
    """Per kind: how many were replaced and how many look-alikes were left alone (data_pipeline/steps/pii.py)."""
    lines = []
    for s in stats:
        c = s["counters"]
        if s["step"] != "pii" and not any(k.startswith("pii.") for k in c):
            continue
        kinds = "; ".join(
            f"{label} {c.get(f'pii.{kind}', 0):,} replaced, {c.get(f'pii.lookalike.{kind}', 0):,} look-alikes kept"
            for kind, label in PII_KINDS
        )
        lines.append(f"- **{s['step']}**: {kinds}; {c.get('pii.documents', 0):,} documents changed")
    return lines


def _table(stats: list[dict[str, Any]]) -> list[list[str]]:
    rows = [
        [
            "step",
            "docs in",
            "docs out",
            "excluded",
            "quarantined",
            "words in",
            "words out",
            "words kept",
            "MB out",
            "tokens",
            "wall s",
            "CPU s",
            "task s",
        ]
    ]
    for s in stats:
        tokens = s["counters"].get("tokens")
        rows.append(
            [
                s["step"],
                f"{s['docs_in']:,}",
                f"{s['docs_out']:,}",
                f"{s['docs_excluded']:,}",
                _quarantined(s),
                f"{s['words_in']:,}",
                f"{s['words_out']:,}",
                _pct(s["words_out"], s["words_in"]),
                f"{s['bytes_out'] / 1e6:.2f}",
                f"{tokens:,}" if tokens else "",
                f"{s['wall_s']:.1f}" if s.get("wall_s") is not None else "",
                f"{s.get('cpu_s', 0.0):.1f}",
                f"{s['time_s']:.1f}",
            ]
        )
    return rows


def write_report(
    root: str | os.PathLike, steps: Sequence[str], skipped: Sequence[str] = (), wandb_project: Optional[str] = None
) -> Path:
    root = Path(root)
    stats = load_step_stats(root, steps)
    excluded = exclusions(root, stats)
    funnel, score_charts, rule_charts = _charts(root, stats, excluded)
    rows = _table(stats)
    times = run_times(stats)
    first, last = stats[0], stats[-1]
    tokens = last["counters"].get("tokens")
    md = ["# Data pipeline report", "", f"Output: `{root}`", ""]
    wall = f"{times['wall_s']:.1f} s" if times["wall_s"] is not None else "unknown"
    md += [
        f"**Time**: wall {wall} (first task start to last task end); CPU {times['cpu_s']:.1f} s and task time "
        f"{times['task_s']:.1f} s, both summed over tasks (with several workers they exceed the wall time).",
        "",
    ]
    # Read = documents plus quarantined rows, in every unit (docs_in already counts the quarantined rows).
    words_read = first["words_in"] + first.get("words_quarantined", 0)
    bytes_read = first["bytes_in"] + first.get("bytes_quarantined", 0)
    md += [
        f"**Funnel**: {first['docs_in']:,} documents in, {last['docs_out']:,} out "
        f"({_pct(last['docs_out'], first['docs_in'])}); "
        f"{words_read:,} words in, {last['words_out']:,} out ({_pct(last['words_out'], words_read)}); "
        f"{bytes_read / 1e6:.2f} MB in, {last['bytes_out'] / 1e6:.2f} MB out"
        + (f"; {tokens:,} tokens written." if tokens else "."),
        "",
    ]
    if first["docs_quarantined"]:
        md += [
            f"**Quarantined** (rows that were not valid documents, quarantine/{first['step']}/): "
            f"{first['docs_quarantined']:,} documents ({_pct(first['docs_quarantined'], first['docs_in'])}), "
            f"{first.get('words_quarantined', 0):,} words ({_pct(first.get('words_quarantined', 0), words_read)}), "
            f"{first.get('bytes_quarantined', 0) / 1e6:.2f} MB "
            f"({_pct(first.get('bytes_quarantined', 0), bytes_read)}) of what was read.",
            "",
        ]
    if skipped:
        md += [f"Skipped (disabled by configuration): {', '.join(skipped)}", ""]
    md += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += [
        "",
        "Words kept: words out over words in of the step (documents removed and text cut both count).",
        "",
        f"![funnel]({funnel})",
        "",
        "## Why documents were removed",
        "",
    ]
    if excluded:
        md += ["| step | rule | documents | words | threshold | histogram |", "|---|---|---|---|---|---|"]
        for row in excluded:
            chart = f"[values]({row['histogram']})" if row.get("histogram") else ""
            md.append(
                f"| {row['step']} | {row['rule']} | {row['documents']:,} | {row['words']:,} | "
                f"{row['threshold']} | {chart} |"
            )
    else:
        md.append("Nothing was removed.")
    pii = _pii_lines(stats)
    if pii:
        md += ["", "## Personal data", ""] + pii
    md += ["", "## What the steps changed", ""]
    for s in stats:
        hidden = ("excluded.", "excluded_words.", "quarantined_source.")  # per-file quarantine: the console summary
        other = {k: v for k, v in s["counters"].items() if not k.startswith(hidden)}
        text = ", ".join(f"{k} {v:,}" for k, v in sorted(other.items()))
        if s["docs_quarantined"]:
            text += f"; quarantined {s['docs_quarantined']:,} (see quarantine/{s['step']}/)"
        if text:
            md.append(f"- **{s['step']}**: {text}")
        mixed = {k.removeprefix("mix_tokens."): v for k, v in s["counters"].items() if k.startswith("mix_tokens.")}
        if mixed:
            total = sum(mixed.values()) or 1
            md.append(
                "  - realised mix (share of tokens): "
                + ", ".join(f"{k} {v / total:.3f}" for k, v in sorted(mixed.items()))
            )
    if rule_charts:
        md += ["", "## Measured values of removed documents", ""] + [f"![{h}]({h})" for h in rule_charts]
    if score_charts:
        md += ["", "## Score histograms", ""] + [f"![{h}]({h})" for h in score_charts]
    _write_text(root / "report.md", "\n".join(md) + "\n")
    _write_html(root, rows, excluded, times, funnel, rule_charts + score_charts, skipped)
    run = {
        **times,
        "docs_in": first["docs_in"],
        "docs_out": last["docs_out"],
        "words_in": words_read,
        "words_out": last["words_out"],
        "bytes_in": bytes_read,
        "docs_quarantined": first["docs_quarantined"],
        "words_quarantined": first.get("words_quarantined", 0),
        "bytes_quarantined": first.get("bytes_quarantined", 0),
        "bytes_out": last["bytes_out"],
        "tokens": tokens,
    }
    _write_text(
        root / "summary.json",
        json.dumps({s["step"]: {k: v for k, v in s.items() if k != "scores"} for s in stats}, indent=2),
    )
    report = {"run": run, "exclusions": [{k: v for k, v in row.items() if k != "values"} for row in excluded]}
    _write_text(root / "report.json", json.dumps(report, indent=2, default=str))
    if wandb_project:
        _log_wandb(root, wandb_project, stats, rows, excluded, run, [funnel] + rule_charts + score_charts)
    return root / "report.md"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_html(root: Path, rows, excluded, times, funnel, charts, skipped) -> None:
    def table(head, body) -> str:
        return (
            "<table border=1><tr>"
            + "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
            + "</table>"
        )

    note = f"<p>Skipped: {html.escape(', '.join(skipped))}</p>" if skipped else ""
    timing = (
        f"<p>Wall {times['wall_s']} s (first task start to last task end); CPU {times['cpu_s']} s and task time "
        f"{times['task_s']} s summed over tasks.</p>"
    )
    rules = table(
        ["step", "rule", "documents", "words", "threshold"],
        [[r["step"], r["rule"], f"{r['documents']:,}", f"{r['words']:,}", r["threshold"]] for r in excluded],
    )
    images = "".join(f'<p><img src="{html.escape(h)}"></p>' for h in [funnel] + charts)
    doc = (
        f"<html><body><h1>Data pipeline report</h1>{note}{timing}{table(rows[0], rows[1:])}"
        f"<h2>Why documents were removed</h2>{rules}{images}</body></html>"
    )
    _write_text(root / "report.html", doc)


def _log_wandb(root: Path, project: str, stats, rows, excluded, run_summary, images) -> None:
    """The report's figures to wandb: online with WANDB_API_KEY, offline otherwise (`wandb sync` uploads it)."""
    os.environ.setdefault("WANDB_DIR", str(root))
    os.environ.setdefault("WANDB_CACHE_DIR", str(root / "wandb" / ".cache"))
    os.environ.setdefault("WANDB_CONFIG_DIR", str(root / "wandb" / ".config"))
    os.environ.setdefault("WANDB_DATA_DIR", str(root / "wandb" / ".data"))
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(
        project=project,
        dir=str(root),
        job_type="data_pipeline",
        mode=mode,
        config={"output": str(root), "steps": [s["step"] for s in stats]},
    )
    try:
        # Per pipeline step, in order: one history row each, so the funnel reads as a curve over the steps.
        for index, s in enumerate(stats):
            run.log(
                {
                    "pipeline/step_index": index,
                    "pipeline/docs_out": s["docs_out"],
                    "pipeline/words_out": s["words_out"],
                    "pipeline/bytes_out": s["bytes_out"],
                    "pipeline/docs_excluded": s["docs_excluded"],
                    "pipeline/cpu_s": s.get("cpu_s", 0.0),
                    "pipeline/wall_s": s.get("wall_s") or 0.0,
                },
                step=index,
            )
        run.log(
            {
                "steps": wandb.Table(columns=rows[0], data=rows[1:]),
                "exclusions": wandb.Table(
                    columns=["step", "rule", "documents", "words", "threshold"],
                    data=[[r["step"], r["rule"], r["documents"], r["words"], str(r["threshold"])] for r in excluded],
                ),
                **{f"images/{name.removesuffix('.png')}": wandb.Image(str(root / name)) for name in images},
            },
            step=len(stats),
        )
        for s in stats:
            for key in (
                "docs_in",
                "docs_out",
                "docs_excluded",
                "words_in",
                "words_out",
                "bytes_out",
                "cpu_s",
                "wall_s",
                "time_s",
            ):
                run.summary[f"{s['step']}/{key}"] = s.get(key)
        for row in excluded:
            run.summary[f"excluded/{row['step']}/{row['rule']}"] = row["documents"]
        for key, value in run_summary.items():
            run.summary[f"run/{key}"] = value
    finally:
        run.finish()
