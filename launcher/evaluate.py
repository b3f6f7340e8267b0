"""`python -m launcher.evaluate MODEL eval.tasks=[...] eval.task_dirs=[...] eval.output=DIR`: downstream evaluation
of a Loom run directory, checkpoint or Hugging Face directory on lm-eval YAML tasks, with lm-eval's numbers.

  python -m launcher.evaluate outputs/my_run eval.tasks=[arc_easy] eval.task_dirs=[tasks/] eval.output=eval_out
  torchrun --nproc_per_node 8 -m launcher.evaluate outputs/my_run eval.tasks=[hellaswag] ... eval.batch_size=16

Other settings: eval.limit=N, eval.log_samples=true, eval.batch_size, eval.dtype, eval.device, eval.max_length
(launcher/evaluation.py, where the work is). Under torchrun each rank holds the model and scores its share of the
requests; rank 0 writes the files. A bad setting or task exits with status 2 and one line saying what to fix.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a Loom run directory, a checkpoint (step_<N>/) or a Hugging Face directory")
    parser.add_argument("overrides", nargs="*", help="eval.<key>=<value> settings")
    args = parser.parse_args(argv)

    from evaluation.errors import TaskInputError
    from launcher.evaluation import EvaluateConfigError, parse_overrides, run_evaluation
    from model.loading import GenerateError

    try:
        settings = parse_overrides(args.overrides)
        results = run_evaluation(args.model, settings)
    except (EvaluateConfigError, TaskInputError, GenerateError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if results is not None:  # rank 0
        print(results.to_markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
