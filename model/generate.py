"""`python -m model.generate PATH`: load a model and continue prompts through the KV cache.

PATH is a Loom run directory (its newest complete checkpoint), a Loom checkpoint (step_<N>/) or a Hugging Face
model directory (config.json + safetensors). Prompts are text (`--prompt`, encoded with the tokenizer found beside
the model: the checkpoint, its run directory or the HF directory) or token ids (`--prompt-ids "1 2 3; 4 5"`,
prompts separated by `;`); several prompts are left-padded into one batch. Decoding is greedy unless a sampling
option (--temperature, --top-k, --top-p) is given; --num-beams > 1 runs beam search. Generation stops at the end-
of-sequence ids of the model's generation config (HF) or tokenizer (Loom run), or --stop-ids.

  python -m model.generate outputs/my_run --prompt "The" --max-new-tokens 32
  python -m model.generate hf_dir --prompt-ids "1 2 3; 4 5" --format json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from model.dtypes import PRECISIONS, canonical_precision
from model.loading import GenerateError, load_model


def parse_prompt_ids(text: str) -> list[list[int]]:
    prompts = []
    for part in text.split(";"):
        try:
            ids = [int(tok) for tok in part.split()]
        except ValueError as exc:
            raise GenerateError(f"--prompt-ids {text!r}: token ids are integers separated by spaces ({exc})") from exc
        if not ids:
            raise GenerateError(f"--prompt-ids {text!r}: an empty prompt (prompts are separated by ';')")
        prompts.append(ids)
    return prompts


def run(args: argparse.Namespace) -> dict:
    import torch

    from model.generation import generate

    loaded = load_model(args.path, dtype=args.dtype, device=args.device)
    if args.prompt_ids is not None:
        prompts = parse_prompt_ids(args.prompt_ids)
    else:
        if loaded.tokenizer is None:
            raise GenerateError(
                f"{args.path}: no tokenizer.json beside the model (checkpoint, run or HF directory): "
                f"give token ids with --prompt-ids"
            )
        prompts = [loaded.tokenizer.encode(text).ids for text in args.prompt]
        if any(not p for p in prompts):
            raise GenerateError("a --prompt encodes to no tokens: give some text")
    stop_ids = loaded.stop_ids if args.stop_ids is None else [int(t) for t in args.stop_ids.split()]
    sampling = args.temperature is not None or args.top_k is not None or args.top_p is not None
    generator = torch.Generator(device=args.device).manual_seed(args.seed) if args.seed is not None else None
    new_ids = generate(
        loaded.model,
        prompts,
        args.max_new_tokens,
        greedy=not sampling and args.num_beams == 1,
        temperature=args.temperature if args.temperature is not None else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        stop_tokens=stop_ids,
        pad_id=loaded.pad_id,
        generator=generator,
    )
    result: dict = {"prompt_ids": prompts, "ids": new_ids}
    if loaded.tokenizer is not None:
        # The continuation as transformers' text-generation pipeline cuts it: the whole sequence decoded, minus
        # the decoded prompt (byte-level BPE may only decode cleanly as a whole).
        decode = lambda ids: loaded.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        result["full_text"] = [decode(p + n) for p, n in zip(prompts, new_ids)]
        result["text"] = [full[len(decode(p)) :] for full, p in zip(result["full_text"], prompts)]
    return result


def _precision(name: str) -> str:
    try:
        return canonical_precision(name, "--dtype")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="Loom run directory, Loom checkpoint, or Hugging Face model directory")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", action="append", help="prompt text (repeat for a batch); needs a tokenizer")
    prompt.add_argument("--prompt-ids", help='token ids, prompts separated by ";": "1 2 3; 4 5"')
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=None, help="sample at this temperature")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most probable tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample within this nucleus mass")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length ** this")
    parser.add_argument(
        "--stop-ids",
        default=None,
        help='ids that end a sequence, e.g. "2 7" ("" for none; default: the model\'s end-of-sequence ids)',
    )
    parser.add_argument(
        "--dtype", type=_precision, default="fp32", help=f"{' | '.join(PRECISIONS)} (torch's long names too)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from model.checkpoint_io import CheckpointError
    from model.hf import HFConversionError

    try:
        result = run(args)
    except (GenerateError, HFConversionError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps({k: result[k] for k in ("ids", "text", "prompt_ids") if k in result}))
    else:
        for i, ids in enumerate(result["ids"]):
            if "full_text" in result:
                print(result["full_text"][i])
            else:
                print(" ".join(map(str, result["prompt_ids"][i] + ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
