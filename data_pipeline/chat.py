"""Conversations for supervised fine-tuning: what a chat row is, and how one becomes tokens with a loss mask.

A chat row (JSONL, Parquet, a saved dataset; read with `input_format=chat`, data_pipeline/readers.py) holds
either `messages`: a list of {"role": str, "content": non-empty str} with at least one assistant turn, or a
`prompt` and a `completion` (non-empty strings), which stand for one user turn and one assistant turn. Rows that
are not are quarantined by the reader with their file and line (`conversation_row_problem` says why).

Rendering (`ChatRenderer`) uses the tokenizer's own chat template when it has one (a Hugging Face tokenizer
directory with `chat_template`), else the Loom template, documented here:

    <|system|>\\n{content}<|end|>\\n<|user|>\\n{content}<|end|>\\n<|assistant|>\\n{content}<|end|>\\n ... <eos>

one block `<|{role}|>\\n{content}<|end|>\\n` per message (roles: system, user, assistant), the conversation closed
by the tokenizer's end-of-text token. The markers are plain text to a tokenizer that lacks them as special tokens.

The loss mask marks the tokens an assistant wrote: its content and the end of its turn (`<|end|>\\n` in the Loom
template, the template's own end-of-turn text in others), so the model learns to stop. With a Hugging Face
template that marks assistant text with `{% generation %}` the template's own mask
(`return_assistant_tokens_mask`) is used; with others an assistant turn is the text between the rendering of the
conversation before it (with the generation prompt) and the rendering up to and including it, which must be
prefixes of the whole rendering (templates that rewrite earlier turns, e.g. dropping past reasoning, are refused
for that conversation). Characters map to tokens through the tokenizer's offsets: a token counts when its first
character lies in an assistant span. `mask="all"` counts every token.

Every conversation ends with the end token (appended unless the template already ends with it), counted when the
conversation's last turn is the assistant's; the end token must not occur inside a conversation, because the
trainer's document mask (model.document_mask_eos_id) starts a new document after each one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

LOOM_ROLES = ("system", "user", "assistant")
LOOM_END_OF_TURN = "<|end|>\n"
MASK_MODES = ("assistant", "all")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatError(ValueError):
    """One conversation cannot be rendered (the reason is a short rule name, the message says more)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def conversation_messages(record: dict) -> tuple[Optional[list[dict]], Optional[str]]:
    """(messages, None) for a well-formed chat row, else (None, the quarantine reason)."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return None, "chat:messages_not_a_list"
    elif "prompt" in record or "completion" in record:
        messages = [
            {"role": "user", "content": record.get("prompt")},
            {"role": "assistant", "content": record.get("completion")},
        ]
    else:
        return None, "chat:missing_field:messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return None, f"chat:malformed_message:{i}"
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return None, f"chat:empty_content:{i}"
    if not any(m["role"] == "assistant" for m in messages):
        return None, "chat:no_assistant_turn"
    return [{"role": m["role"], "content": m["content"]} for m in messages], None


def encode_conversation(messages: list[dict]) -> str:
    """The document text a chat row travels as between pipeline steps (canonical JSON)."""
    return json.dumps({"messages": messages}, ensure_ascii=False, sort_keys=True)


def decode_conversation(text: str) -> list[dict]:
    return json.loads(text)["messages"]


class ChatRenderer:
    """Renders conversations to (token ids, loss mask) with one tokenizer: a Hugging Face tokenizer directory
    (its chat template when it has one) or a tokenizer.json (the Loom template)."""

    def __init__(self, tokenizer: str, *, end_token: Optional[str] = None, mask: str = "assistant") -> None:
        if mask not in MASK_MODES:
            raise ValueError(f"chat_tokenize: mask={mask!r}; choose one of {list(MASK_MODES)}")
        self.mask_mode = mask
        path = Path(tokenizer)
        self.hf = None
        if path.is_dir():
            from transformers import AutoTokenizer

            self.hf = AutoTokenizer.from_pretrained(path)
            self.backend = getattr(self.hf, "backend_tokenizer", None)
            if self.backend is None:
                raise ValueError(
                    f"chat_tokenize: tokenizer={tokenizer} has no fast tokenizer (tokenizer.json), whose character "
                    f"offsets the loss mask needs: save it with a tokenizer.json"
                )
            end_token = end_token or self.hf.eos_token
        elif path.is_file():
            from data_pipeline.tokenizer import DEFAULT_EOS, load_tokenizer

            self.backend = load_tokenizer(path)
            end_token = end_token or DEFAULT_EOS  # the pipeline's tokenize step ends documents with it
        else:
            raise ValueError(f"chat_tokenize: tokenizer={tokenizer}: no such Hugging Face directory or tokenizer.json")
        if end_token is None:
            raise ValueError(f"chat_tokenize: tokenizer={tokenizer} names no eos token: set end_token")
        self.end_id = self.backend.token_to_id(end_token)
        if self.end_id is None:
            raise ValueError(f"chat_tokenize: end_token={end_token!r} is not a token of {tokenizer}")
        self.end_token = end_token
        self.template = getattr(self.hf, "chat_template", None) if self.hf is not None else None
        self.roles = None if self.template else LOOM_ROLES

    @property
    def template_name(self) -> str:
        return "tokenizer" if self.template else "loom"

    def render(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, 0/1 loss mask) of one conversation, ended by the end token; ChatError when it cannot be."""
        if self.roles is not None:
            for i, message in enumerate(messages):
                if message["role"] not in self.roles:
                    known = ", ".join(self.roles)
                    raise ChatError(
                        "unknown_role", f"message {i} has role {message['role']!r}; the Loom template knows {known}"
                    )
        if self.template and _GENERATION_TAG.search(self.template):
            ids, mask = self._template_mask(messages)
        else:
            text, spans = self._text_and_spans(messages)
            encoding = self.backend.encode(text, add_special_tokens=False)
            ids = list(encoding.ids)
            starts = np.array([start for start, _ in encoding.offsets], dtype=np.int64)
            mask = np.zeros(len(ids), dtype=np.uint8)
            for begin, end in spans:
                mask[(starts >= begin) & (starts < end)] = 1
            mask = list(mask)
        if self.end_id in ids[:-1]:
            raise ChatError(
                "end_token_inside",
                f"the end token {self.end_token!r} occurs inside the conversation, where the document mask would cut "
                f"it: set end_token to a token the template does not use",
            )
        if not ids or ids[-1] != self.end_id:
            ids.append(self.end_id)
            mask.append(int(messages[-1]["role"] == "assistant"))
        mask = np.asarray(mask, dtype=np.uint8)
        if self.mask_mode == "all":
            mask[:] = 1
        return np.asarray(ids, dtype=np.int64), mask

    def _text_and_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of the assistant's turns."""
        if not self.template:
            text, spans = "", []
            for message in messages:
                text += f"<|{message['role']}|>\n"
                begin = len(text)
                text += message["content"] + LOOM_END_OF_TURN
                if message["role"] == "assistant":
                    spans.append((begin, len(text)))
            return text, spans
        text = self._apply(messages, add_generation_prompt=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._apply(messages[:i], add_generation_prompt=True) if i else ""
            through = self._apply(messages[: i + 1], add_generation_prompt=False)
            if not (text.startswith(before) and text.startswith(through) and len(through) >= len(before)):
                raise ChatError(
                    "template_not_prefix",
                    f"the template renders the conversation before assistant turn {i} differently inside the "
                    f"whole conversation, so that turn's tokens cannot be told apart",
                )
            spans.append((len(before), len(through)))
        return text, spans

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # noqa: BLE001 - jinja's raise_exception and template bugs alike
            raise ChatError("template_error", f"the chat template refused the conversation: {exc}") from exc

    def _template_mask(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        try:
            out = self.hf.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
        except Exception as exc:  # noqa: BLE001
            raise ChatError("template_error", f"the chat template refused the conversation: {exc}") from exc
        return list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]

    def check(self) -> None:
        """Fail early (a ValueError naming end_token) when the end token occurs inside a two-turn conversation:
        every conversation would be cut by the document mask."""
        probe = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye"},
        ]
        try:
            self.render(probe)
        except ChatError as exc:
            if exc.rule == "end_token_inside":
                raise ValueError(f"chat_tokenize: {exc}") from exc


def chat_row_metadata(record: dict) -> dict[str, Any]:
    """The fields of a chat row that are not its conversation (they travel as the document's metadata)."""
    return {k: v for k, v in record.items() if k not in ("messages", "prompt", "completion")}
