"""The run's summary: report.md and report.html with a funnel chart (documents after each step) and score
histograms as PNGs beside them, built from the merged per-step stats; optionally the same to wandb.

Reads only files under the output directory, so it can be regenerated after a Slurm run finished.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from data_pipeline.stats import merge_step_dir


def load_step_stats(root: Path, steps: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for step in steps:
        if not list((root / "stats" / step).glob("task-*.json")):
            raise FileNotFoundError(f"{root / 'stats' / step}: no task stats; step {step} has not run")
        merged = merge_step_dir(root / "stats" / step)
        merged["step"] = step
        out.append(merged)
    return out


def _save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)


def _charts(root: Path, stats: list[dict[str, Any]]) -> tuple[Optional[str], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["input"] + [s["step"] for s in stats]
    counts = [stats[0]["docs_in"]] + [s["docs_out"] for s in stats]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(labels)))
    ax.barh(labels[::-1], counts[::-1], color="#4a7fb5")
    for y, value in enumerate(counts[::-1]):
        ax.text(value, y, f" {value:,}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_title("Documents after each step")
    _save_figure(fig, root / "funnel.png")
    plt.close(fig)
    histograms = []
    for s in stats:
        for name, values in sorted(s.get("scores", {}).items()):
            if not values:
                continue
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(values, bins=40, color="#b5734a")
            ax.set_title(f"{s['step']}: {name} ({len(values):,} documents)")
            ax.set_xlabel(name)
            filename = f"hist_{s['step']}_{name}.png"
            _save_figure(fig, root / filename)
            plt.close(fig)
            histograms.append(filename)
    return "funnel.png", histograms


def _table(stats: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["step", "docs in", "kept", "excluded", "quarantined", "docs out", "words in", "words out", "MB in", "time s"]]
    for s in stats:
        rows.append([
            s["step"], f"{s['docs_in']:,}", f"{s['docs_kept']:,}", f"{s['docs_excluded']:,}",
            f"{s['docs_quarantined']:,}", f"{s['docs_out']:,}", f"{s['words_in']:,}", f"{s['words_out']:,}",
            f"{s['bytes_in'] / 1e6:.2f}", f"{s['time_s']:.1f}",
        ])
    return rows


def write_report(root: str | os.PathLike, steps: Sequence[str], skipped: Sequence[str] = (), wandb_project: Optional[str] = None) -> Path:
    root = Path(root)
    stats = load_step_stats(root, steps)
    funnel, histograms = _charts(root, stats)
    rows = _table(stats)
    md = ["# Data pipeline report", "", f"Output: `{root}`", ""]
    if skipped:
        md += [f"Skipped (disabled by configuration): {', '.join(skipped)}", ""]
    md += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += ["", f"![funnel]({funnel})", "", "## Why documents were removed", ""]
    for s in stats:
        reasons = {k.removeprefix("excluded."): v for k, v in s["counters"].items() if k.startswith("excluded.")}
        text = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "nothing removed"
        if s["docs_quarantined"]:
            text += f"; quarantined {s['docs_quarantined']:,} (see quarantine/{s['step']}/)"
        md.append(f"- **{s['step']}**: {text}")
        mixed = {k.removeprefix("mix_tokens."): v for k, v in s["counters"].items() if k.startswith("mix_tokens.")}
        if mixed:
            total = sum(mixed.values()) or 1
            md.append("  - realised mix (share of tokens): " + ", ".join(f"{k} {v / total:.3f}" for k, v in sorted(mixed.items())))
        other = {k: v for k, v in s["counters"].items() if not k.startswith("excluded.")}
        if other:
            md.append("  - counters: " + ", ".join(f"{k} {v:,}" for k, v in sorted(other.items())))
    if histograms:
        md += ["", "## Score histograms", ""] + [f"![{h}]({h})" for h in histograms]
    text = "\n".join(md) + "\n"
    path = root / "report.md"
    tmp = root / f".report.md.tmp.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)
    _write_html(root, rows, funnel, histograms, skipped)
    summary = {s["step"]: {k: v for k, v in s.items() if k != "scores"} for s in stats}
    tmp = root / f".summary.json.tmp.{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, root / "summary.json")
    if wandb_project:
        _log_wandb(root, wandb_project, stats, rows, [funnel] + histograms)
    return path


def _write_html(root: Path, rows, funnel, histograms, skipped) -> None:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
    images = "".join(f'<p><img src="{html.escape(h)}"></p>' for h in [funnel] + histograms)
    note = f"<p>Skipped: {html.escape(', '.join(skipped))}</p>" if skipped else ""
    doc = f"<html><body><h1>Data pipeline report</h1>{note}<table border=1>{head}{cells}</table>{images}</body></html>"
    tmp = root / f".report.html.tmp.{os.getpid()}"
    tmp.write_text(doc)
    os.replace(tmp, root / "report.html")


def _log_wandb(root: Path, project: str, stats, rows, images) -> None:
    import wandb

    run = wandb.init(project=project, dir=str(root), job_type="data_pipeline", config={"output": str(root)})
    try:
        run.log({"steps": wandb.Table(columns=rows[0], data=rows[1:])})
        run.log({name.removesuffix(".png"): wandb.Image(str(root / name)) for name in images})
        for s in stats:
            run.summary[f"{s['step']}/docs_out"] = s["docs_out"]
    finally:
        run.finish()
