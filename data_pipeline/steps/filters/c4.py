"""C4's rules (Raffel et al. 2020, section 2.2; TFDS c4_utils), with the defaults datatrove and FineWeb use, measured
as datatrove measures them.

Line rules decide, as in datatrove: each line is stripped; a line is dropped when a whitespace word is longer than
`max_word_length`, when it has fewer than `min_words_per_line` whitespace words (blank lines too), when it
mentions javascript, or a cookie/terms-of-use phrase, and (only with `remove_no_terminal_punct_lines`) when it
does not end in terminal punctuation. Wikipedia-style citations ("[1]", "[edit]", "[citation needed]") are cut
from lines. Page rules drop the document: "lorem ipsum" or a curly bracket in a kept line, or fewer than
`min_sentences` sentences in the kept lines, each counted by the word tokenizer's sentencizer
(`words.WordTokenizer.count_sentences`: spaCy's rule, a sentence ends at ".", "!", "?" and the other scripts'
marks when a non-punctuation token follows).

The kept lines, stripped and joined by newlines, are datatrove's view of the document: the families after C4
(FineWeb's) decide on that view, so the chain's decisions are datatrove's whatever is written. What is written
is `rewrite`'s choice:
- `none` (default): the document as it came, byte for byte. Indented code keeps every line and its indentation;
  a short code line (`    return x`: 2 words) is not cut out of its block.
- `original_lines`: the lines C4 removed are gone; every other line (blank lines between kept lines included) is
  written as it came, indentation kept; citations are still cut. Leading and trailing blank lines go.
- `datatrove`: datatrove's text: the kept lines, stripped, joined by newlines (blank lines go).

FineWeb runs C4 with the terminal-punctuation rule off (`C4QualityFilter(filter_no_terminal_punct=False)`):
on hard-wrapped text that rule cuts every paragraph into fragments. It is off here by default too; C4's own
default (on) is one keyword away.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject
from data_pipeline.steps.filters.words import word_tokenizer

TERMINAL_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
REWRITES = ("none", "original_lines", "datatrove")


class C4(FilterStep):
    name = "c4"

    def __init__(
        self,
        remove_no_terminal_punct_lines: bool = False,
        min_words_per_line: Optional[int] = 3,
        max_word_length: Optional[int] = 1000,
        min_sentences: Optional[int] = 5,
        remove_citations: bool = True,
        remove_javascript_lines: bool = True,
        remove_policy_lines: bool = True,
        drop_lorem_ipsum: bool = True,
        drop_curly_bracket: bool = True,
        policy_phrases: Sequence[str] = POLICY_PHRASES,
        language: str = "en",
        rewrite: str = "none",
    ) -> None:
        super().__init__()
        self.remove_no_terminal_punct_lines = remove_no_terminal_punct_lines
        self.min_words_per_line = min_words_per_line or 0
        self.max_word_length = max_word_length
        self.min_sentences = min_sentences
        self.remove_citations = remove_citations
        self.remove_javascript_lines = remove_javascript_lines
        self.remove_policy_lines = remove_policy_lines
        self.drop_lorem_ipsum = drop_lorem_ipsum
        self.drop_curly_bracket = drop_curly_bracket
        self.policy_phrases = tuple(p.lower() for p in policy_phrases)
        self.language = language
        if rewrite not in REWRITES:
            raise ValueError(f"c4.rewrite={rewrite!r}: use one of {list(REWRITES)}")
        self.rewrite = rewrite

    def filter(self, doc: Document) -> Verdict:
        verdict, _, written = self.screen(doc.text)
        if verdict is True:
            doc.text = written
        return verdict

    def screen(self, text: str) -> tuple[Verdict, str, str]:
        """(verdict, datatrove's view of the kept text, the text to write per `rewrite`). The heuristics chain
        hands the view to the families after C4 and writes the other."""
        kept: list[str] = []  # stripped, citations cut: datatrove's view
        written: list[str] = []  # original_lines: the lines as they came, None for a removed line
        sentences = 0
        lines_removed = 0
        count_sentences = word_tokenizer(self.language).count_sentences
        for original in text.splitlines():
            line = original.strip()
            words = line.split()
            if self.max_word_length is not None and words and max(map(len, words)) > self.max_word_length:
                lines_removed += 1
                continue
            if self.remove_citations and "[" in line:
                line = _CITATION.sub("", line)
                original = _CITATION.sub("", original)
            if self.remove_no_terminal_punct_lines and (
                not line.endswith(TERMINAL_PUNCTUATION) or line.endswith("...")
            ):
                lines_removed += 1
                continue
            if len(words) < self.min_words_per_line:
                if not line:
                    written.append(original)  # a blank line: a paragraph break for original_lines
                else:
                    lines_removed += 1
                continue
            lowered = line.lower()
            if self.drop_lorem_ipsum and "lorem ipsum" in lowered:
                return reject("lorem_ipsum", 1, 0, line=line[:200]), "", text
            if self.remove_javascript_lines and "javascript" in lowered:
                lines_removed += 1
                continue
            if self.drop_curly_bracket and "{" in line:
                return reject("curly_bracket", 1, 0, line=line[:200]), "", text
            if self.remove_policy_lines and any(p in lowered for p in self.policy_phrases):
                lines_removed += 1
                continue
            if self.min_sentences is not None:
                sentences += count_sentences(line)
            kept.append(line)
            written.append(original)
        view = "\n".join(kept).strip()
        if self.min_sentences is not None and sentences < self.min_sentences:
            return reject("min_sentences", sentences, self.min_sentences), view, text
        if lines_removed:
            self.context.count("c4_lines_removed", lines_removed)
        if self.rewrite == "datatrove":
            return True, view, view
        if self.rewrite == "original_lines":
            return True, view, _without_edge_blank_lines(written)
        return True, view, text


def _without_edge_blank_lines(lines: list[str]) -> str:
    """The lines joined by newlines, without the blank lines before the first and after the last line with text;
    the first line keeps its indentation."""
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    last = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].strip()), -1)
    return "\n".join(lines[first : last + 1])
