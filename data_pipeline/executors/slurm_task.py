"""`python -m data_pipeline.executors.slurm_task task PLAN STEP STAGE RANK | finalize PLAN`: what one job of the
Slurm chain runs (slurm/pipeline.sbatch calls it). The command line only; the work is the executors' library
(`run_task`, `finalize`), so the library never imports this command.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from data_pipeline.executors.base import PipelinePlan, run_task
from data_pipeline.executors.slurm import finalize

log = logging.getLogger("data_pipeline.executors.slurm")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if len(argv) == 5 and argv[0] == "task":
        plan = PipelinePlan.load(Path(argv[1]))
        ran = run_task(plan, int(argv[2]), int(argv[3]), int(argv[4]))
        log.info(
            "task step=%s stage=%s rank=%s %s", argv[2], argv[3], argv[4], "done" if ran else "already done (skipped)"
        )
        return 0
    if len(argv) == 2 and argv[0] == "finalize":
        finalize(PipelinePlan.load(Path(argv[1])))
        return 0
    print(
        "usage: python -m data_pipeline.executors.slurm_task task PLAN STEP STAGE RANK | finalize PLAN", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
