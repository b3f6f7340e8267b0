"""Can this layout resume the run directory's checkpoint? Asked once, before any process group exists.

Every engine (torch layouts, pipeline, DeepSpeed ZeRO 1/2/3) writes one logical format: "model" weights and
"optimizer" AdamW state ("state.<parameter name>.<exp_avg|exp_avg_sq|step>") by parameter name in DCP, so any
layout and world size resumes any other. What cannot be resumed is a checkpoint whose optimizer state is not in
that format: Loom's ZeRO module used to keep it only in DeepSpeed's native files (the subdirectory deepspeed/),
which resume only under the same stage and world size through DeepSpeed. Such a checkpoint is refused here,
naming it and what to do, instead of failing later inside a process group on a missing key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

OPTIMIZER_STATE_PREFIX = "optimizer.state."
LEGACY_NATIVE_DIR = "deepspeed"  # where Loom's ZeRO module kept its optimizer state before the common format


class ResumeFormatError(ValueError):
    """The run directory's newest checkpoint is in a format this version cannot resume (the message says why and
    what to do)."""


def newest_complete_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest checkpoint with its COMPLETE marker (a resume verifies it fully later), or None."""
    from model.checkpoint_io import COMPLETE_MARKER, list_checkpoint_dirs

    complete = [d for d in list_checkpoint_dirs(run_dir) if (d / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


def check_resumable(run_dir: str | Path, resume: str, layout: str) -> None:
    """ResumeFormatError when trainer.resume=auto would resume a checkpoint that holds no optimizer state in the
    common format (`layout`: parallel.name, for the message). Unreadable metadata is left to the resume itself,
    which verifies checksums and falls back to an older checkpoint."""
    if resume == "never" or not (Path(run_dir) / "checkpoints").is_dir():
        return  # nothing to resume: torch is not even imported (a bad config fails in about a second)
    from model.checkpoint_io import CheckpointError, read_dcp_metadata

    directory = newest_complete_checkpoint(run_dir)
    if directory is None:
        return
    try:
        keys = read_dcp_metadata(directory).state_dict_metadata
    except CheckpointError:
        return
    if any(key.startswith(OPTIMIZER_STATE_PREFIX) for key in keys):
        return
    where = (
        f"only in DeepSpeed's native files ({directory / LEGACY_NATIVE_DIR}, written by Loom's ZeRO module before "
        f"every engine saved the same format)"
        if (directory / LEGACY_NATIVE_DIR).is_dir()
        else "nowhere (its DCP tensors have no optimizer.state.* entries)"
    )
    raise ResumeFormatError(
        f"{directory} cannot be resumed by parallel={layout} (nor by any layout of this version): it holds its "
        f"optimizer state {where}, so nothing was changed. To continue from its weights with a fresh optimizer "
        f"and schedule, start a new run from it: trainer.init_from={directory} with another trainer.run_dir; to "
        f"resume it exactly, use the Loom version that wrote it, with the same ZeRO stage and world size"
    )
