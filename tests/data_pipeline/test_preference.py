"""`python -m data_pipeline preference`: preference JSONL -> preference shards. Rows that cannot be trained on (a
malformed line, a missing field, an empty side, chosen identical to rejected) are quarantined with their file and
line, never written; plain and chat-templated pairs tokenise as documented; a damaged shard is refused naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.preference_format import PreferenceDataset, PreferenceFormatError

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A word-level tokenizer (a b c ... and the chat roles) with <eos> and a chat template, as a HF directory."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    directory = tmp_path_factory.mktemp("tokenizer")
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "user", "assistant", *"abcdefgh"])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens(["<pad>", "<eos>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<pad>"}
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return directory


GOOD = {"prompt": "a b ", "chosen": "c d", "rejected": "e"}
CHAT = {
    "prompt": [{"role": "user", "content": "a b"}],
    "chosen": [{"role": "assistant", "content": "c"}],
    "rejected": "d e",  # a string response to a conversational prompt: one assistant message
}
BAD = [
    ('{"prompt": "a", "chosen": "b"', "malformed_json"),
    ('["a", "b", "c"]', "not_an_object"),
    ('{"prompt": "a ", "chosen": "b"}', "missing_field"),
    ('{"prompt": "a ", "chosen": "", "rejected": "c"}', "empty_chosen"),
    ('{"prompt": "a ", "chosen": "b", "rejected": "   "}', "empty_rejected"),
    ('{"prompt": "a ", "chosen": "b c", "rejected": "b c"}', "identical_responses"),
    ('{"prompt": "", "chosen": "b", "rejected": "c"}', "empty_prompt"),
    ('{"prompt": 3, "chosen": "b", "rejected": "c"}', "bad_type"),
    ('{"prompt": "a ", "chosen": ["b"], "rejected": "c"}', "bad_type"),
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline", "preference", *args], cwd=REPO, capture_output=True, text=True
    )


def test_pairs_are_tokenised_and_bad_rows_quarantined_with_file_and_line(tokenizer_dir, tmp_path):
    lines = [json.dumps(GOOD)] + [line for line, _ in BAD] + [json.dumps(CHAT)]
    source = tmp_path / "prefs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = _run(f"input={source}", f"output={tmp_path / 'out'}", f"tokenizer={tokenizer_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"2 pairs from {len(lines)} rows" in result.stdout and f"quarantined {len(BAD)}" in result.stdout

    records = [json.loads(r) for r in (tmp_path / "out/quarantine/preference.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in records] == [
        (str(source), number, reason) for number, (_, reason) in enumerate(BAD, start=2)
    ]
    for number, (_, reason) in enumerate(BAD, start=2):  # and said on the console, file:line first
        assert f"quarantined {source}:{number}: {reason}" in result.stderr

    data = PreferenceDataset(tmp_path / "out")
    assert data.n_pairs == 2 and data.tokenizer["eos_id"] == 1
    # plain text: prompt, then each response with <eos> appended (ids: a=4 b=5 c=6 d=7 e=8)
    assert [list(x) for x in data.pair(0)] == [[4, 5], [6, 7, 1], [8, 1]]
    # chat template: "user a b <eos> assistant" is the prompt, each response its rendered assistant turn
    assert [list(x) for x in data.pair(1)] == [[2, 4, 5, 1, 3], [6, 1], [7, 8, 1]]
    assert data.source(0) == f"{source}:1" and data.source(1) == f"{source}:{len(lines)}"
    assert (tmp_path / "out/tokenizer.json").is_file()  # beside the shards, for the run directory


def test_too_much_quarantine_fails_the_run(tokenizer_dir, tmp_path):
    source = tmp_path / "prefs.jsonl"
    source.write_text(json.dumps(GOOD) + "\n" + BAD[3][0] + "\n")
    result = _run(
        f"input={source}", f"output={tmp_path / 'out'}", f"tokenizer={tokenizer_dir}", "max_quarantine_fraction=0.2"
    )
    assert result.returncode == 1 and "1 of 2 preference rows quarantined" in result.stderr


def test_conversational_rows_need_a_chat_template(tokenizer_dir, tmp_path):
    plain = tmp_path / "plain_tokenizer"
    plain.mkdir()
    (plain / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    source = tmp_path / "chat.jsonl"
    source.write_text(json.dumps(CHAT) + "\n")
    result = _run(f"input={source}", f"output={tmp_path / 'out'}", f"tokenizer={plain}")
    assert result.returncode == 1 and f"{source}:1: conversational prompt" in result.stderr
    assert "no chat template" in result.stderr


def test_a_damaged_or_incomplete_shard_is_refused_naming_it(tokenizer_dir, tmp_path):
    from data_pipeline.preference import build_preference_shards

    source = tmp_path / "prefs.jsonl"
    source.write_text(json.dumps(GOOD) + "\n" + json.dumps(CHAT) + "\n")
    out = tmp_path / "out"
    report = build_preference_shards([source], out, tokenizer_dir, pairs_per_shard=1)
    assert len(report.shards) == 2 and PreferenceDataset(out).n_pairs == 2
    arrays = out / "preference-00001.pref.npz"
    data = bytearray(arrays.read_bytes())
    data[-40] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(PreferenceFormatError, match=f"{arrays}: SHA-256 differs"):
        PreferenceDataset(out)
    arrays.unlink()
    with pytest.raises(PreferenceFormatError, match="preference-00001.pref.json: its arrays file .* is missing"):
        PreferenceDataset(out)
    (out / "preference-00001.pref.json").write_text('{"format": "loom-preference"')
    with pytest.raises(PreferenceFormatError, match="preference-00001.pref.json: unreadable"):
        PreferenceDataset(out)
    with pytest.raises(PreferenceFormatError, match="no preference shards"):
        PreferenceDataset(tmp_path)
    assert np.load(out / "preference-00000.pref.npz")["lengths"].tolist() == [[2, 3, 2]]
