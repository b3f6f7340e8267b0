"""Keep documents in the listed languages. Works with no download: the default model is py3langid's, shipped
inside its pip package (Naive Bayes over byte n-grams, 140 labels, ~0.3 ms per 2 KB document). A fastText
language-id model (e.g. `lid.176.bin`, FineWeb's choice) is used instead when `model_path` is given.

The predicted language and its probability are stored in the document's metadata (`language`,
`language_score`) so later steps and the report can use them. A document in another language is excluded as
`language:<label>` with its probability as the value; one in a listed language whose probability is below
`threshold` as `language_score_below_threshold`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import Step

# Labels a model may use for what a config calls by its ISO 639-1 code: py3langid labels some Chinese text as
# Wu or Cantonese, which a `languages: [zh]` filter means to keep.
ALIASES = {"wuu": "zh", "yue": "zh", "cmn": "zh"}


def load_fasttext(path: Path):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-time deprecation warning
    return fasttext.load_model(str(path))


class Py3LangId:
    """py3langid's bundled model with probabilities normalised (its `norm_probs`)."""

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def predict(self, text: str) -> tuple[str, float]:
        label, probability = self._identifier.classify(text)
        return label, float(probability)


class FastTextLangId:
    def __init__(self, path: Path) -> None:
        self._model = load_fasttext(path)

    def predict(self, text: str) -> tuple[str, float]:
        labels, probs = self._model.predict(" ".join(text.split()), k=1)
        if not labels:
            return "unknown", 0.0
        return labels[0].removeprefix("__label__"), float(probs[0])


class LangId(Step):
    name = "lang_id"

    def __init__(
        self,
        model_path: Optional[str] = None,
        languages: Sequence[str] = ("en",),
        threshold: float = 0.65,
        max_chars: int = 10_000,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path) if model_path else None
        if self.model_path is not None and not self.model_path.is_file():
            raise ValueError(
                f"lang_id.model_path={self.model_path}: file not found (unset it to use py3langid's bundled model)"
            )
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"lang_id.threshold={threshold}: a probability in [0, 1]")
        self.languages = set(languages)
        self.threshold = float(threshold)
        self.max_chars = max_chars  # the first characters decide: enough for a confident label, bounded time
        self._model = None

    def model(self):
        if self._model is None:
            self._model = FastTextLangId(self.model_path) if self.model_path else Py3LangId()
        return self._model

    def identify(self, text: str) -> tuple[str, float]:
        label, score = self.model().predict(text[: self.max_chars])
        return ALIASES.get(label, label), score

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            language, score = self.identify(doc.text)
            self.context.score("language_score", score)
            self.context.count(f"language.{language}")
            labelled = Document(
                doc.id, doc.text, {**doc.metadata, "language": language, "language_score": round(score, 4)}
            )
            if self.languages and language not in self.languages:
                self.context.exclude(labelled, f"language:{language}", round(score, 4), sorted(self.languages))
            elif score < self.threshold:
                self.context.exclude(labelled, "language_score_below_threshold", round(score, 4), self.threshold)
            else:
                yield labelled
