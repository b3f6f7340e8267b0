"""Keep documents in the listed languages, using a fastText language-id model (e.g. lid.176.bin) given by path.

The predicted language and its probability are stored in the document's metadata (`language`,
`language_score`) so later steps and the report can use them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import Step


def load_fasttext(path: Path):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-time deprecation warning
    return fasttext.load_model(str(path))


class LangId(Step):
    name = "lang_id"

    def __init__(self, model_path: Optional[str] = None, languages: Sequence[str] = ("en",), threshold: float = 0.65) -> None:
        super().__init__()
        if not model_path:
            raise ValueError("lang_id.model_path is required: a fastText language-id model such as lid.176.bin")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ValueError(f"lang_id.model_path={self.model_path}: file not found")
        self.languages = set(languages)
        self.threshold = float(threshold)
        self._model = None

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if self._model is None:
            self._model = load_fasttext(self.model_path)
        for doc in documents:
            labels, probs = self._model.predict(" ".join(doc.text.split()), k=1)
            language = labels[0].removeprefix("__label__") if labels else "unknown"
            score = float(probs[0]) if len(probs) else 0.0
            self.context.score("language_score", score)
            metadata = {**doc.metadata, "language": language, "language_score": score}
            if self.languages and language not in self.languages:
                self.context.exclude(Document(doc.id, doc.text, metadata), f"language:{language}")
            elif score < self.threshold:
                self.context.exclude(Document(doc.id, doc.text, metadata), "language_score_below_threshold")
            else:
                yield Document(doc.id, doc.text, metadata)
