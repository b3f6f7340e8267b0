"""Conversations into packed shards with a loss mask (data_pipeline/chat.py, steps/chat_tokenize.py): only the
assistant's tokens count, the tokenizer's chat template (prefix diffs, or its {% generation %} marks: the same
mask) or the Loom template, every conversation ended by the end token, and bad input quarantined or excluded with
its file and line, never written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from chat_testing import CHATML_GENERATION, hf_tokenizer_dir, tokenizer_json, write_jsonl

from data_pipeline.chat import ChatRenderer
from data_pipeline.executors.base import PipelinePlan, StepSpec
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.formats import PackedDataset, ShardFormatError, ShardWriter
from data_pipeline.readers import InputSpec
from data_pipeline.shards import read_records

pytest.importorskip("transformers")

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "good bye"},
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return hf_tokenizer_dir(tmp_path_factory.mktemp("hf"))


def counted_text(renderer: ChatRenderer, ids: np.ndarray, mask: np.ndarray) -> str:
    return renderer.backend.decode([int(i) for i in ids[mask == 1]], skip_special_tokens=False)


def test_tokenizer_template_counts_only_the_assistant_turns(hf_dir):
    renderer = ChatRenderer(str(hf_dir))
    ids, mask = renderer.render(CONVERSATION)
    assert counted_text(renderer, ids, mask) == "Paris.<|im_end|>\ngood bye<|im_end|>\n<|endoftext|>"
    assert ids[-1] == renderer.end_id and list(ids).count(renderer.end_id) == 1
    whole = renderer.backend.decode([int(i) for i in ids], skip_special_tokens=False)
    assert whole == renderer.hf.apply_chat_template(CONVERSATION, tokenize=False) + "<|endoftext|>"


def test_generation_marks_give_the_prefix_diff_mask(hf_dir, tmp_path):
    marked = ChatRenderer(str(hf_tokenizer_dir(tmp_path / "marked", CHATML_GENERATION)))
    ids, mask = ChatRenderer(str(hf_dir)).render(CONVERSATION)
    marked_ids, marked_mask = marked.render(CONVERSATION)
    np.testing.assert_array_equal(ids, marked_ids)
    np.testing.assert_array_equal(mask, marked_mask)


def test_loom_template_without_a_chat_template(tmp_path):
    renderer = ChatRenderer(str(tokenizer_json(tmp_path)))
    ids, mask = renderer.render(CONVERSATION)
    assert counted_text(renderer, ids, mask) == "Paris.<|end|>\ngood bye<|end|>\n<|endoftext|>"
    text = renderer.backend.decode([int(i) for i in ids], skip_special_tokens=False)
    assert text.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is")
    ids_all, mask_all = ChatRenderer(str(tokenizer_json(tmp_path)), mask="all").render(CONVERSATION)
    np.testing.assert_array_equal(ids_all, ids)
    assert mask_all.all()


def test_a_last_user_turn_and_its_end_do_not_count(hf_dir):
    renderer = ChatRenderer(str(hf_dir))
    ids, mask = renderer.render(CONVERSATION[:3] + [{"role": "user", "content": "thanks"}])
    assert counted_text(renderer, ids, mask) == "Paris.<|im_end|>\n"
    assert mask[-1] == 0 and ids[-1] == renderer.end_id


def test_an_end_token_the_template_uses_inside_is_refused_early(tmp_path):
    directory = hf_tokenizer_dir(tmp_path / "hf", eos="<|im_end|>")
    with pytest.raises(ValueError, match="end_token"):
        ChatRenderer(str(directory)).check()
    ChatRenderer(str(directory), end_token="<|endoftext|>").check()


def test_the_pipeline_writes_masked_shards_and_sets_bad_input_aside(hf_dir, tmp_path):
    good = [
        {"messages": CONVERSATION},
        {"prompt": "hello", "completion": "good bye", "id": "pc-1"},
    ]
    bad = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
        '{"messages": [',
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        {"text": "not a conversation"},
    ]
    unknown_role = {"messages": [{"role": "tool", "content": "3"}, {"role": "assistant", "content": "yes"}]}
    source = write_jsonl(tmp_path / "chats.jsonl", [good[0], *bad, unknown_role, good[1]])
    plan = PipelinePlan(
        input=InputSpec(path=str(source), format="chat"),
        output=str(tmp_path / "out"),
        steps=[StepSpec("chat_tokenize", {"tokenizer": str(hf_dir)})],
        tasks=1,
    )
    LocalExecutor(plan, workers=1, progress=lambda _: None).run()
    out = tmp_path / "out"
    quarantined = [json.loads(line) for line in (out / "quarantine/chat_tokenize/shard-00000.jsonl").open()]
    assert [(q["source"], q["line"], q["reason"].split(" ")[0]) for q in quarantined] == [
        ("chats.jsonl", 2, "chat:no_assistant_turn"),
        ("chats.jsonl", 3, "chat:empty_content:0"),
        ("chats.jsonl", 4, "invalid_json:Expecting"),
        ("chats.jsonl", 5, "chat:empty_content:0"),
        ("chats.jsonl", 6, "chat:missing_field:messages"),
    ]
    (excluded,) = list(read_records(out / "excluded/chat_tokenize/shard-00000.jsonl.zst"))
    assert excluded["origin"] == "chats.jsonl:7" and excluded["excluded_reason"] == "chat_tokenize:template_error"
    assert "unknown role tool" in excluded["excluded_value"]

    dataset = PackedDataset(out / "tokens")
    assert dataset.has_loss_mask and dataset.n_documents == 2
    renderer = ChatRenderer(str(hf_dir))
    expected = [
        renderer.render(CONVERSATION),
        renderer.render(
            [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "good bye"},
            ]
        ),
    ]
    shard = dataset.shards[0]
    for i, (ids, mask) in enumerate(expected):
        np.testing.assert_array_equal(shard.document(i), ids)
        start, end = int(shard.offsets[i]), int(shard.offsets[i + 1])
        np.testing.assert_array_equal(dataset.read_loss_mask(start, end - start), mask)
    assert shard.header["tokenizer"]["eos_id"] == renderer.end_id
    assert (out / "tokens" / "tokenizer.json").is_file()


def test_the_loss_mask_file_is_checked_like_the_other_shard_files(tmp_path):
    with ShardWriter(tmp_path, "s", vocab_size=10, eos_id=0, tokenizer_id="t") as writer:
        writer.add_document([1, 2, 0], loss_mask=[0, 1, 1])
        writer.add_document([3, 0], loss_mask=[1, 1])
    with ShardWriter(tmp_path, "t", vocab_size=10, eos_id=0, tokenizer_id="t") as writer:
        writer.add_document([4, 0], loss_mask=[0, 1])
    dataset = PackedDataset(tmp_path)
    np.testing.assert_array_equal(dataset.read_loss_mask(1, 6), [1, 1, 1, 1, 0, 1])  # across the two shards
    with pytest.raises(ShardFormatError, match="every document or for none"):
        with ShardWriter(tmp_path / "mixed", "m", vocab_size=10, eos_id=0, tokenizer_id="t") as writer:
            writer.add_document([1, 0], loss_mask=[1, 1])
            writer.add_document([1, 0])
    assert not list((tmp_path / "mixed").iterdir())  # nothing published
    (tmp_path / "t.mask").write_bytes(b"\x01")
    with pytest.raises(ShardFormatError, match="t.mask: size 1 bytes"):
        PackedDataset(tmp_path)
    (tmp_path / "t.mask").unlink()
    with pytest.raises(ShardFormatError, match="t.mask: missing"):
        PackedDataset(tmp_path)


def test_unmasked_shards_read_as_before(tmp_path):
    with ShardWriter(tmp_path, "s", vocab_size=10, eos_id=0, tokenizer_id="t") as writer:
        writer.add_document([1, 2, 0])
    dataset = PackedDataset(tmp_path)
    assert not dataset.has_loss_mask and "loss_mask" not in dataset.shards[0].header
    assert not (tmp_path / "s.mask").exists()


def test_pipeline_sft_from_the_command_line(hf_dir, tmp_path, capsys):
    """The documented command: pipeline=sft with input_format=chat; exact duplicates go before tokenizing, and a
    text pipeline's documents are refused by chat_tokenize with the fix (input_format=chat)."""
    from data_pipeline.cli import main

    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION}, {"prompt": "hello", "completion": "yes"}]
    source = write_jsonl(tmp_path / "chats.jsonl", rows)
    tokenizer = f"pipeline.steps.1.params.tokenizer={hf_dir}"
    common = ["run", "pipeline=sft", f"input={source}", "tasks=1", "report=false", tokenizer]
    assert main([*common, "input_format=chat", f"output={tmp_path / 'out'}"]) == 0
    dataset = PackedDataset(tmp_path / "out" / "tokens")
    assert dataset.has_loss_mask and dataset.n_documents == 2
    assert main([*common, "input_format=chats", f"output={tmp_path / 'typo'}"]) != 0
    assert "input_format=chats: choose one of ['text', 'chat']" in capsys.readouterr().err
    text = write_jsonl(tmp_path / "texts.jsonl", [{"text": "plain text"}])
    args = ["run", "pipeline=sft", f"input={text}", "tasks=1", "report=false", tokenizer, f"output={tmp_path / 't'}"]
    assert main(args) != 0
    assert "is not a conversation: run the pipeline with input_format=chat" in capsys.readouterr().err
