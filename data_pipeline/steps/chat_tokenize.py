"""Tokenize conversations into packed shards with a per-token loss mask, for supervised fine-tuning.

Reads the documents of `input_format=chat` (each a conversation, data_pipeline/chat.py), renders each with the
tokenizer's chat template (or the Loom template when it has none), and writes <output>/tokens/shard-RRRRR with
a `.mask` beside the tokens (formats.ShardWriter: atomic, header last): 1 on the tokens the loss counts (the
assistant's, `mask: assistant`, the default; every token with `mask: all`). Conversations are packed back to back,
each closed by the end token, so the trainer's document mask (model.document_mask_eos_id = the shards' eos_id)
keeps every conversation from attending to another. A conversation the template cannot render (a role it does not
know, a template error, the end token inside it) is excluded with its rule, `chat_tokenize:<rule>`, and the
`origin` file:line of its row, never written. The tokenizer's tokenizer.json goes beside the shards for the
trainer's decoded samples.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Optional

from data_pipeline.chat import ChatError, ChatRenderer, decode_conversation
from data_pipeline.document import Document
from data_pipeline.formats import NO_SOURCE, ShardWriter
from data_pipeline.steps.base import Step
from data_pipeline.tokenizer import TOKENIZER_FILE, save_tokenizer, tokenizer_id


class ChatTokenize(Step):
    name = "chat_tokenize"
    writes_documents = False

    def __init__(self, tokenizer: Optional[str] = None, mask: str = "assistant", end_token: Optional[str] = None):
        super().__init__()
        if tokenizer is None:
            raise ValueError(
                "chat_tokenize: set tokenizer= to a Hugging Face tokenizer directory (its chat template is used) or "
                "a tokenizer.json (the Loom template, data_pipeline/chat.py)"
            )
        self.renderer = ChatRenderer(tokenizer, end_token=end_token, mask=mask)
        self.renderer.check()

    @property
    def tokens_dir(self) -> Path:
        return self.context.output_dir or self.context.work_dir / "tokens"

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        renderer = self.renderer
        save_tokenizer(renderer.backend, self.tokens_dir / TOKENIZER_FILE)
        sources: Counter = Counter()
        with ShardWriter(
            self.tokens_dir,
            f"shard-{rank:05d}",
            vocab_size=renderer.backend.get_vocab_size(with_added_tokens=True),
            eos_id=renderer.end_id,
            tokenizer_id=tokenizer_id(renderer.backend),
            sources=None,
        ) as writer:
            for doc in documents:
                messages = _conversation(doc)
                try:
                    ids, mask = renderer.render(messages)
                except ChatError as exc:
                    # The record keeps the document's metadata, with the row's `origin` (file:line)
                    self.context.exclude(doc, self.rule(exc.rule), str(exc), renderer.template_name)
                    continue
                source = doc.metadata.get("source")
                writer.add_document(ids, None if source is None else str(source), loss_mask=mask)
                self.context.count("tokens", len(ids))
                self.context.count("loss_tokens", int(mask.sum()))
                sources[NO_SOURCE if source is None else str(source)] += 1
                yield doc
            writer.sources = {"documents": dict(sorted(sources.items())), "template": renderer.template_name}


def _conversation(doc: Document) -> list[dict]:
    try:
        return decode_conversation(doc.text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"chat_tokenize: document {doc.id} is not a conversation: run the pipeline with input_format=chat"
        ) from exc
