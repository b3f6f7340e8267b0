"""`python -m evaluation.lm_eval_cli ...`: lm-eval's own command line with the "loom" model type registered.

lm-eval 0.4.13 finds models only in its registry (nothing third-party is discovered by entry points), so the
plain `lm_eval --model loom` cannot see Loom; this runs the same CLI, arguments unchanged, after registering it:

  python -m evaluation.lm_eval_cli run --model loom --model_args pretrained=outputs/my_run,batch_size=8 \
      --tasks arc_easy --include_path my_tasks/ --output_path eval_out
"""

from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import evaluation.lm_eval_adapter  # noqa: F401  (registers model type "loom")

    cli_evaluate()


if __name__ == "__main__":
    main()
