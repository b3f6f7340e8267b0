"""fastText quality classifier: train it from labelled positive/negative examples, then score documents and keep
those whose probability of the positive label reaches a threshold (the score is stored as `quality_score`).

Training holds out a share of the examples (`holdout`, chosen by a seeded shuffle) and reports the positive
label's precision and recall on them. Model size is set by the hashed n-gram table: fastText's default of 2M
buckets x `dim` floats is ~0.5 GB whatever the data (a 517 MB model from 1,913 documents was seen); `bucket`
(default 200k), `dim` (32) and product quantization (`quantize`, default on: a `.ftz`-style model, `cutoff` keeps
the 10k most important rows, `dsub` dimensions per code byte) bring a model trained on a few thousand documents
to well under a few MB.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, annotate, reject
from data_pipeline.steps.decontaminate import read_eval_texts
from data_pipeline.steps.lang_id import load_fasttext

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass
class TrainingResult:
    model: str
    size_bytes: int
    train_examples: int
    heldout_examples: int
    precision: Optional[float]  # of the positive label on the held-out examples (None: none predicted positive)
    recall: Optional[float]
    quantized: bool

    def summary(self) -> str:
        def pct(x: Optional[float]) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        return (
            f"model {self.model} ({self.size_bytes / 1e6:.2f} MB{', quantized' if self.quantized else ''}); "
            f"trained on {self.train_examples} examples; held-out ({self.heldout_examples}): "
            f"precision {pct(self.precision)}, recall {pct(self.recall)} (positive label)"
        )

    def to_json(self) -> dict:
        return asdict(self)


def _write_lines(lines: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        return f.name


def _fit(train_file: str, output: str, options: dict, quantize_options: Optional[dict]) -> Optional[str]:
    """Train (and quantize) a supervised fastText model and save it; the error message if fastText raised."""
    import fasttext

    try:
        model = fasttext.train_supervised(input=train_file, **options)
        if quantize_options is not None:
            # qnorm and a retrain on the kept rows, as fastText's own quantize command recommends; the time grows
            # with `cutoff` (k-means over the kept rows): 10k rows took ~4 s here.
            model.quantize(input=train_file, **quantize_options)
        model.save_model(output)
    except RuntimeError as exc:  # e.g. "Encountered NaN." when training diverges
        return str(exc)
    return None


def _fit_request() -> None:
    """Entry point of the training subprocess: a JSON request on stdin; prints fastText's error, if any."""
    request = json.loads(sys.stdin.read())
    print(_fit(request["train_file"], request["output"], request["options"], request["quantize_options"]) or "")


def train_classifier(
    positive: str,
    negative: str,
    output: str,
    text_key: str = "text",
    epoch: int = 10,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 32,
    bucket: int = 200_000,
    min_count: int = 1,
    quantize: bool = True,
    cutoff: int = 10_000,
    dsub: int = 2,
    holdout: float = 0.1,
    seed: int = 0,
) -> TrainingResult:
    """Train on `positive`/`negative` files (JSONL with `text_key`, or one example per line); save atomically."""
    for name, path in (("positive", positive), ("negative", negative)):
        if not Path(path).is_file():
            raise ValueError(f"train-classifier {name}={path}: file not found")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"train-classifier holdout={holdout}: a fraction in [0, 1)")
    examples = [
        (label, _one_line(text))
        for label, path in ((POSITIVE, positive), (NEGATIVE, negative))
        for text in read_eval_texts(Path(path), text_key)
    ]
    counts = {label: sum(1 for tag, _ in examples if tag == label) for label in (POSITIVE, NEGATIVE)}
    if min(counts.values()) == 0:
        raise ValueError(f"train-classifier: need examples of both labels, got {counts}")
    random.Random(seed).shuffle(examples)
    n_heldout = int(len(examples) * holdout)
    heldout, train = examples[:n_heldout], examples[n_heldout:]
    output_path = Path(output)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    train_file = _write_lines([f"{label} {text}" for label, text in train])
    tmp = output_path.with_name(f".{output_path.name}.tmp.{os.getpid()}")
    options = {
        "epoch": epoch,
        "lr": lr,
        "wordNgrams": word_ngrams,
        "dim": dim,
        "bucket": bucket,
        "minCount": min_count,
        "seed": seed,
        "thread": 1,
        "verbose": 0,
    }
    quantize_options = (
        {
            "qnorm": True,
            "retrain": True,
            "cutoff": cutoff,
            "dsub": dsub,
            "epoch": epoch,
            "lr": lr,
            "thread": 1,
            "verbose": 0,
        }
        if quantize
        else None
    )
    try:
        # In a fresh interpreter: in a process whose heap earlier work had used (a pipeline run, numpy arrays
        # freed), fastText-numpy2 0.10.4's training hit "Encountered NaN" in 3 to 5 of 10 runs on the same data
        # at lr 0.02-0.1; trained in a fresh interpreter, 0 of 20 (seen here, 2026-11-30).
        request = json.dumps(
            {"train_file": train_file, "output": str(tmp), "options": options, "quantize_options": quantize_options}
        )
        child = subprocess.run(
            [sys.executable, "-c", "from data_pipeline.steps.classifier import _fit_request; _fit_request()"],
            input=request,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        error = (
            child.stdout.strip()
            if child.returncode == 0
            else f"exit {child.returncode}: {child.stderr.strip()[-2000:]}"
        )
        if error:
            raise ValueError(f"train-classifier: fastText training failed with lr={lr}: {error}; try a lower lr")
        os.replace(tmp, output_path)
    finally:
        os.unlink(train_file)
        tmp.unlink(missing_ok=True)
    model = load_fasttext(output_path)
    true_pos = false_pos = false_neg = 0
    for label, text in heldout:
        predicted = model.predict(text, k=1)[0][0]
        true_pos += predicted == POSITIVE and label == POSITIVE
        false_pos += predicted == POSITIVE and label == NEGATIVE
        false_neg += predicted != POSITIVE and label == POSITIVE
    return TrainingResult(
        model=str(output_path),
        size_bytes=output_path.stat().st_size,
        train_examples=len(train),
        heldout_examples=len(heldout),
        precision=true_pos / (true_pos + false_pos) if true_pos + false_pos else None,
        recall=true_pos / (true_pos + false_neg) if true_pos + false_neg else None,
        quantized=quantize,
    )


class Classifier(FilterStep):
    name = "classifier"

    def __init__(
        self, model_path: Optional[str] = None, threshold: float = 0.5, score_key: str = "quality_score"
    ) -> None:
        super().__init__()
        if model_path and not Path(model_path).is_file():
            raise ValueError(
                f"classifier.model_path={model_path!r}: file not found; train one with "
                "`python -m data_pipeline train-classifier positive=... negative=... output=...`"
            )
        self.model_path = Path(model_path) if model_path else None
        self.threshold = float(threshold)
        self.score_key = score_key
        self._model = None

    def enabled(self) -> bool:
        """No model given: the step is skipped (a pipeline lists it so that setting model_path turns it on)."""
        return self.model_path is not None

    def positive_probability(self, text: str) -> float:
        if self._model is None:
            self._model = load_fasttext(self.model_path)
        labels, probs = self._model.predict(_one_line(text), k=2)
        return float(dict(zip(labels, probs)).get(POSITIVE, 0.0))

    def filter(self, doc: Document) -> Verdict:
        """Scores every document (`score_key`); drops one under the threshold (`classifier:quality_below_threshold`)."""
        score = self.positive_probability(doc.text)
        self.context.score(self.score_key, score)
        annotate(doc, **{self.score_key: score})
        return True if score >= self.threshold else reject("quality_below_threshold", round(score, 6), self.threshold)
