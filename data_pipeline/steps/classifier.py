"""fastText quality classifier: train it from labelled positive/negative examples, then score documents and keep
those whose probability of the positive label reaches a threshold (the score is stored as `quality_score`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from data_pipeline.document import Document
from data_pipeline.steps.base import Step
from data_pipeline.steps.decontaminate import read_eval_texts
from data_pipeline.steps.lang_id import load_fasttext

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def train_classifier(
    positive: str, negative: str, output: str, text_key: str = "text", epoch: int = 10, lr: float = 0.5,
    word_ngrams: int = 2, dim: int = 64, seed: int = 0,
) -> Path:
    """Train on `positive`/`negative` files (JSONL with `text_key`, or one example per line); save atomically."""
    import fasttext

    for name, path in (("positive", positive), ("negative", negative)):
        if not Path(path).is_file():
            raise ValueError(f"train-classifier {name}={path}: file not found")
    output_path = Path(output)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as train_file:
        counts = {}
        for label, path in ((POSITIVE, positive), (NEGATIVE, negative)):
            counts[label] = 0
            for text in read_eval_texts(Path(path), text_key):
                train_file.write(f"{label} {_one_line(text)}\n")
                counts[label] += 1
    try:
        if min(counts.values()) == 0:
            raise ValueError(f"train-classifier: need examples of both labels, got {counts}")
        model = fasttext.train_supervised(
            input=train_file.name, epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, seed=seed, thread=1, verbose=0
        )
        tmp = output_path.with_name(f".{output_path.name}.tmp.{os.getpid()}")
        model.save_model(str(tmp))
        os.replace(tmp, output_path)
    finally:
        os.unlink(train_file.name)
    return output_path


class Classifier(Step):
    name = "classifier"

    def __init__(self, model_path: Optional[str] = None, threshold: float = 0.5, score_key: str = "quality_score") -> None:
        super().__init__()
        if not model_path or not Path(model_path).is_file():
            raise ValueError(
                f"classifier.model_path={model_path!r}: file not found; train one with "
                "`python -m data_pipeline train-classifier positive=... negative=... output=...`"
            )
        self.model_path = Path(model_path)
        self.threshold = float(threshold)
        self.score_key = score_key
        self._model = None

    def positive_probability(self, text: str) -> float:
        if self._model is None:
            self._model = load_fasttext(self.model_path)
        labels, probs = self._model.predict(_one_line(text), k=2)
        return float(dict(zip(labels, probs)).get(POSITIVE, 0.0))

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            score = self.positive_probability(doc.text)
            self.context.score(self.score_key, score)
            scored = Document(doc.id, doc.text, {**doc.metadata, self.score_key: score})
            if score >= self.threshold:
                yield scored
            else:
                self.context.exclude(scored, "quality_below_threshold")
