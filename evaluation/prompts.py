"""lm-eval's plain-text prompt joining (its Message rendering without a chat template).

A few-shot example is question + target delimiter + answer + few-shot delimiter; the evaluated document is its
question alone (then the generation prefix, if any). A generation prefix is joined to the question with the
target delimiter, and to an answer with a space, only when neither side already has whitespace at the join.
"""

from __future__ import annotations

from evaluation.errors import TaskInputError


def qa_turn(question, choices, answer, gen_prefix, target_delimiter: str, fewshot_delimiter: str) -> str:
    """One question (and its answer, for a few-shot example) as lm-eval renders it."""
    if not isinstance(question, str):
        raise TaskInputError(f"doc_to_text gave {question!r}, not text")
    has_answer = answer is not None and answer != ""
    needs_delimiter = bool(gen_prefix) and requires_delimiter(question, gen_prefix)
    text = question + (target_delimiter if (has_answer and not gen_prefix) or needs_delimiter else "")
    if has_answer:
        if choices and isinstance(answer, int):
            answer = choices[answer]
        elif isinstance(answer, list):
            answer = answer[0]
        if not isinstance(answer, str):
            raise TaskInputError(f"a few-shot answer is {answer!r}, not text (give doc_to_choice for an index)")
        text += maybe_delimit(gen_prefix, answer) + fewshot_delimiter
    elif gen_prefix:
        text += gen_prefix
    return text


def requires_delimiter(prefix: str, suffix: str) -> bool:
    return prefix != "" and not (prefix[-1].isspace() or suffix[0].isspace())


def maybe_delimit(prefix: str | None, suffix: str, delimiter: str = " ") -> str:
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix
