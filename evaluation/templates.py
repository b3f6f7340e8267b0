"""Jinja rendering of task fields with lm-evaluation-harness's semantics.

lm-eval renders `doc_to_text` / `doc_to_target` / `doc_to_choice` / `description` / `gen_prefix` with one jinja2
Environment (StrictUndefined, trailing newline kept, a `regex_replace` filter); a value that is a column name is
that column, not a template. The variables a template names are read from its syntax tree, so a field the data
lacks is refused while loading, before anything is scored.
"""

from __future__ import annotations

import re
from functools import lru_cache

import jinja2
from jinja2 import meta


def _regex_replace(string, pattern, repl, count: int = 0):
    return re.sub(pattern, repl, string, count=count)


_ENV = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["regex_replace"] = _regex_replace


@lru_cache(maxsize=4096)
def _compiled(template: str) -> jinja2.Template:
    return _ENV.from_string(template)


def render(template: str, doc: dict) -> str:
    """The template rendered over the document's fields (a missing field raises jinja2.UndefinedError)."""
    return _compiled(template).render(**doc)


@lru_cache(maxsize=4096)
def fields_named(template: str) -> frozenset[str]:
    """The top-level variables the template reads (loop variables and `set` names excluded)."""
    return frozenset(meta.find_undeclared_variables(_ENV.parse(template)))
