"""Document filters with the steps' one contract (`filter(doc) -> True | reject(rule, value, threshold)`: datatrove's
contract with the value and threshold required; data_pipeline/steps/base.py), one module per rule family: Gopher
quality and repetition (Rae et al. 2021), C4 (Raffel et al. 2020), FineWeb (Penedo et al. 2024) and URL block lists.
Each family's keyword arguments carry its published defaults (as datatrove and FineWeb set them); `None` switches one
rule off. `data_pipeline.steps.heuristics` chains the families in FineWeb's order.

Every statistic is counted as datatrove 0.10 counts it, because FineWeb's thresholds were tuned on those counts
(tests/data_pipeline/test_datatrove_agreement.py runs datatrove's own filters beside these). Which unit each uses:

| statistic | unit |
|---|---|
| Gopher quality: word count, mean word length | word tokens without symbol tokens (`text.PUNCTUATION` only) |
| Gopher quality: hash / ellipsis per word, alphabetic-word ratio | all word tokens |
| Gopher quality: stop words | word tokens, case kept |
| Gopher quality: bullet / ellipsis lines | `str.splitlines()` |
| Gopher repetition: duplicated paragraphs / lines | text cut at `\\n{2,}` (stripped) / at `\\n+` |
| Gopher repetition: top 2-4-gram, duplicated 5-10-gram characters | word tokens |
| C4: words per line, longest word | whitespace (`str.split`), as C4 and datatrove |
| C4: sentences | sentencizer over each kept line's word tokens |
| FineWeb: line rules | `text.split("\\n")`, blank lines left out |
| FineWeb: newlines per word | word tokens |

Word tokens are datatrove's English word tokenizer's (spaCy's rule tokenizer, `spacy.blank("en")`): the text is
cut at whitespace, then punctuation, symbols, contractions and units are split off ("don't" -> "do" "n't", "(see"
-> "(" "see", "*****" -> five "*"), URLs and special cases ("e.g.", ":)") kept whole. `words.WordTokenizer`
applies spaCy's rules from tables exported once (`word_rules/`), without importing spaCy; each family takes a
`language` (the tables present: English). Sentences are spaCy's sentencizer's.
"""
