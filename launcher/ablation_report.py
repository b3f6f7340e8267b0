"""The ablation report: final scores per variant with the spread over seeds, each task's score against tokens seen
(one line per variant), and the links between each variant's data and the pipeline run that made it.

Read from the runs' metrics.jsonl (eval/<task>/<metric> records; a resumed run may log a step twice, the last
record wins). Written atomically into the ablation's output directory: report.md, report.json, plot.png. Nothing
in it depends on when or in what order the runs ran, so an interrupted and resumed ablation writes the report an
uninterrupted one writes. Each variant built by a pipeline run gets a "Used by ablations" section in that run's
report.md, naming this report: the two reports link each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path
from typing import Any, Optional

from launcher.ablation_spec import AblationPlan, Run

REPORT_MD, REPORT_JSON, PLOT = "report.md", "report.json", "plot.png"
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss")  # metric names containing these: lower is better
SKIPPED_SUFFIXES = ("/decontaminated", "/decontamination", "_stderr")  # records about the data, not scores
BACKLINK_START, BACKLINK_END = "<!-- ablations: start -->", "<!-- ablations: end -->"


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def eval_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """{'<task>/<metric>': {step: value}} from a run's metrics.jsonl (the last record of a step wins)."""
    series: dict[str, dict[int, float]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        for key, value in record.items():
            if key.startswith("eval/") and key != "eval/time_s" and not key.endswith(SKIPPED_SUFFIXES):
                if isinstance(value, (int, float)):
                    series.setdefault(key[len("eval/") :], {})[int(record["step"])] = float(value)
    return series


def run_complete(run: Run) -> bool:
    """Its final checkpoint is COMPLETE and its metrics hold an evaluation at the last step."""
    from model.checkpoint_io import COMPLETE_MARKER

    final = run.run_dir / "checkpoints" / f"step_{run.max_steps:08d}" / COMPLETE_MARKER
    return final.is_file() and any(run.max_steps in points for points in eval_series(run.run_dir).values())


def _write_atomic(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    os.replace(tmp, path)


def data_provenance(plan: AblationPlan, variant: str) -> dict[str, Any]:
    """Which pipeline config and input fingerprint made a variant's shards, and the shards' own token hashes."""
    shards = plan.shards[variant]
    root = plan.pipelines[variant].output if variant in plan.pipelines else shards.parent
    out: dict[str, Any] = {"shards": str(shards)}
    headers = sorted(shards.glob("*.json"))
    hashes = {}
    for header in headers:
        try:
            hashes[header.stem] = json.loads(header.read_text()).get("tokens_sha256")
        except (OSError, ValueError):
            continue
    hashes = {k: v for k, v in hashes.items() if v}
    if hashes:
        out["tokens_sha256"] = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    plan_json = root / "plan.json"
    if plan_json.is_file():  # the shards came from a data pipeline run: its config and input fingerprint
        saved = json.loads(plan_json.read_text())
        fingerprints = {name: f.get("sha256") for name, f in saved.get("input_files", {}).items()}
        out["pipeline"] = {
            "output": str(root),
            "report": str(root / "report.md") if (root / "report.md").is_file() else None,
            "args": plan.pipelines[variant].args if variant in plan.pipelines else None,
            "steps": [s["name"] for s in saved.get("steps", [])],
            "input": saved.get("input", {}).get("path"),
            "input_fingerprint": hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest(),
            "input_files": len(fingerprints),
            "config_sha256": hashlib.sha256(
                json.dumps(
                    {k: saved.get(k) for k in ("steps", "tasks", "seed", "output_format")}, sort_keys=True
                ).encode()
            ).hexdigest(),
        }
    return out


def summarize(plan: AblationPlan) -> dict[str, Any]:
    """Everything the report shows, as plain data (report.json)."""
    # Variants may differ in batch shape (same tokens per run, same evaluation points in tokens): steps -> tokens
    # with each variant's own tokens per step.
    per_step = {r.variant: r.tokens_per_step for r in plan.runs}
    last = {r.variant: r.max_steps for r in plan.runs}
    curves: dict[str, dict[str, dict[str, list]]] = {}  # metric -> variant -> {tokens, mean, min, max}
    finals: dict[str, dict[str, dict[str, Any]]] = {}  # metric -> variant -> {mean, spread, seeds}
    by_variant: dict[str, list[dict[str, dict[int, float]]]] = {}
    for run in plan.runs:
        by_variant.setdefault(run.variant, []).append(eval_series(run.run_dir))
    metrics = sorted({m for runs in by_variant.values() for series in runs for m in series})
    for metric in metrics:
        for variant, runs in by_variant.items():
            steps = sorted(set.intersection(*(set(r.get(metric, {})) for r in runs)))
            if not steps:
                continue
            values = [[r[metric][s] for r in runs] for s in steps]
            curves.setdefault(metric, {})[variant] = {
                "tokens": [s * per_step[variant] for s in steps],
                "mean": [statistics.fmean(v) for v in values],
                "min": [min(v) for v in values],
                "max": [max(v) for v in values],
            }
            if steps[-1] == last[variant]:
                seeds = values[-1]
                finals.setdefault(metric, {})[variant] = {
                    "mean": statistics.fmean(seeds),
                    "spread": max(seeds) - min(seeds),
                    "std": statistics.stdev(seeds) if len(seeds) > 1 else 0.0,
                    "seeds": dict(zip((str(r.seed) for r in plan.runs if r.variant == variant), seeds)),
                }
    ranking = {
        metric: sorted(rows, key=lambda v: rows[v]["mean"], reverse=not lower_is_better(metric))
        for metric, rows in finals.items()
    }
    return {
        "name": plan.spec.name,
        "tokens": plan.spec.recipe.tokens,
        "tokens_per_step": per_step,
        "seeds": list(plan.spec.recipe.seeds),
        "tasks": list(plan.spec.recipe.tasks),
        "variants": {v: data_provenance(plan, v) for v in plan.spec.variants},
        "final": finals,
        "ranking": ranking,
        "curves": curves,
        "runs": {r.name: str(r.run_dir) for r in plan.runs},
    }


def _markdown(summary: dict[str, Any], output: Path) -> str:
    variants = list(summary["variants"])
    lines = [
        f"# Ablation report: {summary['name']}",
        "",
        f"{len(variants)} variant(s) x {len(summary['seeds'])} seed(s) {summary['seeds']}, "
        f"{summary['tokens']:,} training tokens per run. Final scores: "
        "mean over seeds, ± half the spread (max - min over seeds). Plot: plot.png; data: report.json.",
        "",
        "| metric | better | " + " | ".join(variants) + " | ranking |",
        "|---|---|" + "---|" * len(variants) + "---|",
    ]
    for metric, rows in summary["final"].items():
        cells = [f"{rows[v]['mean']:.4g} ± {rows[v]['spread'] / 2:.2g}" if v in rows else "missing" for v in variants]
        better = "lower" if lower_is_better(metric) else "higher"
        lines.append(f"| {metric} | {better} | " + " | ".join(cells) + f" | {' > '.join(summary['ranking'][metric])} |")
    lines += ["", "## Data of each variant", ""]
    for variant, info in summary["variants"].items():
        lines.append(
            f"- **{variant}**: shards `{info['shards']}`"
            + (f" (tokens_sha256 of the shard set {info['tokens_sha256'][:16]})" if "tokens_sha256" in info else "")
        )
        pipe = info.get("pipeline")
        if pipe:
            report = f"[pipeline report]({os.path.relpath(pipe['report'], output)})" if pipe["report"] else "no report"
            lines.append(
                f"  - made by the data pipeline in `{pipe['output']}` ({report}): steps {', '.join(pipe['steps'])}; "
                f"config sha256 {pipe['config_sha256'][:16]}; input `{pipe['input']}` ({pipe['input_files']} file(s), "
                f"input fingerprint {pipe['input_fingerprint'][:16]})"
                + (f"; command `python -m data_pipeline run {' '.join(pipe['args'])}`" if pipe["args"] else "")
            )
    lines += ["", "## Runs", ""]
    lines += [f"- {name}: `{path}`" for name, path in summary["runs"].items()]
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted(summary["curves"])
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 3 * max(1, len(metrics))), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for variant, curve in summary["curves"][metric].items():
            (line,) = ax.plot(curve["tokens"], curve["mean"], "o-", label=variant)
            ax.fill_between(curve["tokens"], curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
        ax.set_title(metric + (" (lower is better)" if lower_is_better(metric) else " (higher is better)"))
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _link_back(summary: dict[str, Any], report: Path) -> None:
    """Name this report in each pipeline run's report.md (a section of its own, replaced on every write)."""
    for variant, info in summary["variants"].items():
        pipe = info.get("pipeline")
        if not pipe or not pipe["report"]:
            continue
        path = Path(pipe["report"])
        text = path.read_text(encoding="utf-8")
        start, end = text.find(BACKLINK_START), text.find(BACKLINK_END)
        entries = []
        if start >= 0 and end > start:
            entries = [line for line in text[start:end].splitlines()[2:] if line.startswith("- ")]
            text = text[:start].rstrip("\n") + "\n" + text[end + len(BACKLINK_END) :].lstrip("\n")
        entry = f"- [{summary['name']}]({os.path.relpath(report, path.parent)}): variant **{variant}**"
        entries = sorted({*(e for e in entries if f"({os.path.relpath(report, path.parent)})" not in e), entry})
        section = [BACKLINK_START, "## Used by ablations", *entries, BACKLINK_END]
        _write_atomic(path, text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n")


def write_report(plan: AblationPlan) -> Optional[Path]:
    """report.md, report.json and plot.png in the ablation's output directory; the report's path."""
    summary = summarize(plan)
    plan.output.mkdir(parents=True, exist_ok=True)
    report = plan.output / REPORT_MD
    _write_atomic(plan.output / REPORT_JSON, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    _write_atomic(plan.output / PLOT, _plot(summary))
    _write_atomic(report, _markdown(summary, plan.output))
    _link_back(summary, report)
    return report
