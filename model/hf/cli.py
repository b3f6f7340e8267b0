"""`python -m model.hf export|import ...`: the command line of the Hugging Face conversion (model/hf/convert.py
does the work; model/hf/__main__.py runs this).

  python -m model.hf export <checkpoint_or_run_dir> <hf_dir> [--dtype bf16] [--model-type T] [--overwrite]
                                [--lora merged|adapter]
  python -m model.hf import <hf_dir> <checkpoint_dir> [--name NAME]
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from model.dtypes import PRECISIONS, canonical_precision
from model.hf.common import DEFAULT_MAX_SHARD_BYTES, HFConversionError
from model.hf.convert import LORA_EXPORTS, export_checkpoint, import_checkpoint


def _precision(name: str) -> str:
    try:
        return canonical_precision(name, "--dtype")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.hf", description="Loom <-> Hugging Face checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="Loom checkpoint or run dir -> Hugging Face directory")
    exp.add_argument("checkpoint", help="a step_<N> checkpoint directory or a run directory (newest complete)")
    exp.add_argument("hf_dir")
    exp.add_argument(
        "--dtype",
        type=_precision,
        default=None,
        help=f"cast weights: {' | '.join(PRECISIONS)} (torch's long names too; default: as stored)",
    )
    exp.add_argument("--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 1000**3)
    exp.add_argument("--model-type", default=None, help="transformers family to write (default: from the config)")
    exp.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory or tokenizer.json (default: beside the checkpoint or in its run dir)",
    )
    exp.add_argument("--overwrite", action="store_true", help="replace an existing hf_dir")
    exp.add_argument(
        "--lora",
        choices=LORA_EXPORTS,
        default=None,
        help="a checkpoint with LoRA adapters: merged (adapters folded into the weights) or adapter (a peft "
        "adapter directory for the base model's export)",
    )
    imp = sub.add_parser("import", help="Hugging Face directory -> Loom model-only checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("checkpoint_dir", help="e.g. runs/base/checkpoints/step_00000000")
    imp.add_argument("--name", default=None, help="model config name (default: the HF directory's name)")
    args = parser.parse_args(argv)
    from model.checkpoint_io import CheckpointError

    try:
        if args.command == "export":
            out = export_checkpoint(
                args.checkpoint,
                args.hf_dir,
                dtype=args.dtype,
                max_shard_bytes=int(args.max_shard_gb * 1000**3),
                overwrite=args.overwrite,
                model_type=args.model_type,
                tokenizer=args.tokenizer,
                lora=args.lora,
            )
        else:
            out = import_checkpoint(args.hf_dir, args.checkpoint_dir, name=args.name)
    except (HFConversionError, FileExistsError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
