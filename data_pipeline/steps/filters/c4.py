"""C4's rules (Raffel et al. 2020, section 2.2; TFDS c4_utils), with the defaults datatrove and FineWeb use, measured
as datatrove measures them.

Line rules edit the text: each line is stripped; a line is dropped when a whitespace word is longer than
`max_word_length`, when it has fewer than `min_words_per_line` whitespace words (blank lines too), when it
mentions javascript, or a cookie/terms-of-use phrase, and (only with `remove_no_terminal_punct_lines`) when it
does not end in terminal punctuation. Wikipedia-style citations ("[1]", "[edit]", "[citation needed]") are cut
from lines. Page rules drop the document: "lorem ipsum" or a curly bracket in a kept line, or fewer than
`min_sentences` sentences in the kept lines, each counted by the word tokenizer's sentencizer
(`words.WordTokenizer.count_sentences`: spaCy's rule, a sentence ends at ".", "!", "?" and the other scripts'
marks when a non-punctuation token follows). The kept lines, joined by newlines, are the document's new text, as
in datatrove: blank lines go (they have fewer than 3 words) and every line is stripped. `keep_blank_lines: true`
keeps paragraph breaks (runs of blank lines as one) and leaves a document no line rule touched as it was; the
FineWeb family after it then counts those newlines too, so its decisions drift from datatrove's.

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
        keep_blank_lines: bool = False,
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
        self.keep_blank_lines = keep_blank_lines

    def filter(self, doc: Document) -> Verdict:
        kept: list[str] = []
        sentences = 0
        lines_removed = 0
        cited = False
        count_sentences = word_tokenizer(self.language).count_sentences
        for line in doc.text.splitlines():
            line = line.strip()
            if not line and self.keep_blank_lines:
                if kept and kept[-1]:
                    kept.append("")  # a paragraph break
                continue
            words = line.split()
            if self.max_word_length is not None and words and max(map(len, words)) > self.max_word_length:
                lines_removed += 1
                continue
            if self.remove_citations and "[" in line:
                uncited = _CITATION.sub("", line)
                cited = cited or uncited != line
                line = uncited
            if self.remove_no_terminal_punct_lines and (
                not line.endswith(TERMINAL_PUNCTUATION) or line.endswith("...")
            ):
                lines_removed += 1
                continue
            if len(words) < self.min_words_per_line:
                lines_removed += 1
                continue
            lowered = line.lower()
            if self.drop_lorem_ipsum and "lorem ipsum" in lowered:
                return reject("lorem_ipsum", 1, 0, line=line[:200])
            if self.remove_javascript_lines and "javascript" in lowered:
                lines_removed += 1
                continue
            if self.drop_curly_bracket and "{" in line:
                return reject("curly_bracket", 1, 0, line=line[:200])
            if self.remove_policy_lines and any(p in lowered for p in self.policy_phrases):
                lines_removed += 1
                continue
            if self.min_sentences is not None:
                sentences += count_sentences(line)
            kept.append(line)
        if self.min_sentences is not None and sentences < self.min_sentences:
            return reject("min_sentences", sentences, self.min_sentences)
        if lines_removed:
            self.context.count("c4_lines_removed", lines_removed)
        if lines_removed or cited or not self.keep_blank_lines:
            doc.text = "\n".join(kept).strip()
        return True
