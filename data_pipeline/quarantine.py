"""What the run quarantined, said where a person looks: a console summary per reason and input file at the end of
a run, and `max_quarantine_fraction` to fail a run whose input is mostly bad.

Only the first step reads the user's input, so only its stats hold quarantine counters: `quarantined.<reason>`
per reason and `quarantined_source.<reason>|<file>` per reason and input file (the executor counts both; the
records themselves are in quarantine/<step>/). The summary and the check read the merged stats of that step, so
they work the same after a local run and in the Slurm chain's jobs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

SOURCE_PREFIX = "quarantined_source."
MAX_FILES_SHOWN = 10


class QuarantineExceeded(ValueError):
    """More of the input was quarantined than `max_quarantine_fraction` allows."""


def check_fraction(max_fraction: Any) -> Optional[float]:
    """The configured limit as a float in [0, 1], or None (off); a clear error for anything else."""
    if max_fraction is None:
        return None
    if isinstance(max_fraction, bool) or not isinstance(max_fraction, (int, float)) or not 0 <= max_fraction <= 1:
        raise ValueError(
            f"max_quarantine_fraction={max_fraction!r}: a fraction of the rows read in [0, 1] (0.01 = 1%), "
            "or null to never fail on quarantine"
        )
    return float(max_fraction)


def by_reason_and_file(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for key, n in counters.items():
        if key.startswith(SOURCE_PREFIX):
            reason, _, source = key[len(SOURCE_PREFIX) :].partition("|")
            out[reason][source] = n
    return dict(out)


def summary(first_step: dict[str, Any], root: Any) -> str:
    """Lines for the console: how many rows were quarantined, of how many read, per reason and per file."""
    quarantined, read = first_step.get("docs_quarantined", 0), first_step.get("docs_in", 0)
    if not quarantined:
        return f"quarantine: none of the {read:,} rows read"
    share = quarantined / read if read else 0.0
    lines = [
        f"quarantine: {quarantined:,} of the {read:,} rows read ({share:.1%}) were not valid documents; "
        f"records in {root}/quarantine/{first_step['step']}/"
    ]
    per_file = by_reason_and_file(first_step.get("counters", {}))
    totals = {r: sum(files.values()) for r, files in per_file.items()}
    for reason, total in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])):
        files = sorted(per_file[reason].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{source} {n:,}" for source, n in files[:MAX_FILES_SHOWN])
        more = f", and {len(files) - MAX_FILES_SHOWN} more files" if len(files) > MAX_FILES_SHOWN else ""
        lines.append(f"  {reason}: {total:,} ({shown}{more})")
    return "\n".join(lines)


def enforce(first_step: dict[str, Any], max_fraction: Optional[float], root: Any) -> None:
    """Raise QuarantineExceeded, with the summary, when more than `max_fraction` of the rows read were bad."""
    if max_fraction is None:
        return
    quarantined, read = first_step.get("docs_quarantined", 0), first_step.get("docs_in", 0)
    if read and quarantined / read > max_fraction:
        raise QuarantineExceeded(
            f"max_quarantine_fraction={max_fraction}: {quarantined / read:.1%} of the input was quarantined. "
            f"Fix the input, or raise the limit (null turns it off).\n{summary(first_step, root)}"
        )
