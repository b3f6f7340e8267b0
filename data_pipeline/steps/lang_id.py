"""Keep documents in the listed languages. Works with no download: the default model is py3langid's, shipped
inside its pip package (Naive Bayes over byte n-grams, 140 labels, ~0.3 ms per 2 KB document). A fastText
language-id model (e.g. `lid.176.bin`, FineWeb's choice) is used instead when `model_path` is given.

The predicted language and its probability are stored in the document's metadata (`language`,
`language_score`) so later steps and the report can use them. A document in another language is excluded as
`lang_id:other_language` with its probability as the value and the listed languages as the threshold (the label is
the record's `language`; counters `language.<label>` count every label); one in a listed language whose
probability is below `threshold` as `lang_id:score_below_threshold`.

Labels: py3langid's ISO 639 codes (`en`, `fr`, `zh`...; Wu and Cantonese count as `zh`, see ALIASES), plus `zxx`,
"no linguistic content", which it gives to text made of numbers, paths, URLs and symbols. A page of tables and
commands with a few English sentences got `zxx`, or `en` at 0.51-0.58, and was dropped (three paragraphs of the
json module's documentation followed by 20 rows of a number table: `zxx` at 0.75). So a document about to be
dropped gets a second look on its prose lines alone (`prose_lines`) when they hold at least `min_prose_chars`:
if the prose is in a listed language above the threshold, that answer is kept (`language.second_look_kept`
counts them); else the first answer and its exclusion stand. Only as a second look, because on code-heavy pages
the code's English keywords help the whole-text answer (486 real English texts mixed with standard-library code:
none under the cut on the whole text, 42 on their prose lines alone).

Threshold: 0.65, FineWeb's cut for fastText's lid.176, kept for py3langid's normalised probabilities because
they separate the same way on real English: of 584 texts (package READMEs, standard-library docstrings, licenses
and 330 pages of extracted HTML documentation) 4 scored under 0.65, all link-list index pages; redirect stubs of
about 40 characters score 0.15-0.65, and their length drops them later anyway. Lower it for short texts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, annotate, reject

# Labels a model may use for what a config calls by its ISO 639-1 code: py3langid labels some Chinese text as
# Wu or Cantonese, which a `languages: [zh]` filter means to keep.
ALIASES = {"wuu": "zh", "yue": "zh", "cmn": "zh"}
# A line that is code or a command, not prose: a shell or REPL prompt, or a comment/preprocessor line.
_PROMPT = re.compile(r"^(?:[$#%>]\s|>>>|\.\.\.\s|//|/\*|\*\s|<[a-zA-Z/!])")
_FENCE = re.compile(r"^\s*(?:```|~~~)")
_LETTER = re.compile(r"[^\W\d_]")


def prose_lines(text: str) -> str:
    """The lines of `text` that carry its language: not preformatted (indented, or in a fenced block: the layout
    the normalize step keeps), not a prompt or comment, three words or more, and at least half letters (paths,
    URLs, tables of numbers and option lists are not). The second look of language ID reads these."""
    kept, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or not line.strip() or line[:1].isspace() or _PROMPT.match(line):
            continue
        if len(line.split()) >= 3 and len(_LETTER.findall(line)) * 2 >= len(line.replace(" ", "")):
            kept.append(line)
    return "\n".join(kept)


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


class LangId(FilterStep):
    name = "lang_id"

    def __init__(
        self,
        model_path: Optional[str] = None,
        languages: Sequence[str] = ("en",),
        threshold: float = 0.65,
        max_chars: int = 10_000,
        min_prose_chars: int = 200,
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
        self.min_prose_chars = int(min_prose_chars)
        self._model = None

    def model(self):
        if self._model is None:
            self._model = FastTextLangId(self.model_path) if self.model_path else Py3LangId()
        return self._model

    def _predict(self, text: str) -> tuple[str, float]:
        label, score = self.model().predict(text[: self.max_chars])
        return ALIASES.get(label, label), score

    def _kept(self, language: str, score: float) -> bool:
        return (not self.languages or language in self.languages) and score >= self.threshold

    def identify(self, text: str) -> tuple[str, float]:
        """The label and its probability: on the whole text, or on its prose lines when the whole text's answer
        would drop the document and the prose alone is confidently in a listed language (module docstring)."""
        return self._identify(text)[:2]

    def _identify(self, text: str) -> tuple[str, float, bool]:
        """(label, probability, whether the second look on prose lines changed the answer)."""
        language, score = self._predict(text)
        if self._kept(language, score):
            return language, score, False
        prose = prose_lines(text[: self.max_chars * 2])
        if len(prose) < self.min_prose_chars or len(prose) == len(text):
            return language, score, False
        second = self._predict(prose)
        return (*second, True) if self._kept(*second) else (language, score, False)

    def filter(self, doc: Document) -> Verdict:
        """Labels every document (`language`, `language_score`), kept or dropped."""
        language, score, second_look = self._identify(doc.text)
        if second_look and self._kept(language, score):
            self.context.count("language.second_look_kept")
        self.context.score("language_score", score)
        self.context.count(f"language.{language}")
        annotate(doc, language=language, language_score=round(score, 4))
        if self.languages and language not in self.languages:
            return reject("other_language", round(score, 4), sorted(self.languages))
        if score < self.threshold:
            return reject("score_below_threshold", round(score, 4), self.threshold)
        return True
