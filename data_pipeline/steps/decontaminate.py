"""Remove training documents that share a long word n-gram (default 13, as in GPT-3) with an evaluation set,
so benchmark scores measure generalisation rather than memorisation.

The eval n-grams go into a Python dict once per task; eval sets are small compared with the corpus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import Step

_WORD = re.compile(r"\w+", re.UNICODE)


def word_ngrams(text: str, n: int) -> Iterator[tuple[str, ...]]:
    """Lower-cased word n-grams (punctuation ignored), as tuples: exact matches, no hash collisions."""
    words = _WORD.findall(text.lower())
    return zip(*(words[i:] for i in range(n)))


def read_eval_texts(path: Path, text_key: str) -> Iterator[str]:
    """Eval set texts: JSONL (one object per line, `text_key` field) or plain text (one example per line)."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    record = json.loads(line)
                    yield str(record[text_key])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"{path}:{line_no + 1}: not a JSON object with field {text_key!r} ({exc})"
                    ) from exc
            else:
                yield line


class Decontaminate(Step):
    name = "decontaminate"

    def __init__(self, eval_sets: Optional[Sequence[str]] = None, ngram: int = 13, text_key: str = "text") -> None:
        super().__init__()
        self.eval_sets = [Path(p) for p in (eval_sets or [])]
        for path in self.eval_sets:
            if not path.is_file():
                raise ValueError(f"decontaminate.eval_sets: {path} does not exist")
        if ngram < 1:
            raise ValueError(f"decontaminate.ngram={ngram}: must be positive")
        self.ngram = ngram
        self.text_key = text_key
        self._index: Optional[dict[tuple[str, ...], str]] = None

    def enabled(self) -> bool:
        return bool(self.eval_sets)

    def index(self) -> dict[tuple[str, ...], str]:
        if self._index is None:
            self._index = {}
            for path in self.eval_sets:
                for text in read_eval_texts(path, self.text_key):
                    for gram in word_ngrams(text, self.ngram):
                        self._index.setdefault(gram, path.name)
        return self._index

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        index = self.index()
        for doc in documents:
            hit = next((index[g] for g in word_ngrams(doc.text, self.ngram) if g in index), None)
            if hit is not None:
                shared = [g for g in word_ngrams(doc.text, self.ngram) if g in index]  # contaminated: rare
                self.context.exclude(doc, "contaminated", len(shared), 0, eval_set=hit, ngram=" ".join(shared[0]))
            else:
                yield doc
