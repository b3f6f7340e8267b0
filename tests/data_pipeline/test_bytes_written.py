"""What the README's data pipeline example writes: at most 2.5 times its input (issue #23), everything under the
output directory counted (documents, exclusion records, tokens, the report and its charts, work files, stats).
Run as the README runs it, through the CLI, on the corpus `data_pipeline generate n_clean=300` writes."""

from __future__ import annotations

from data_pipeline.cli import main
from data_pipeline.shards import read_records


def _bytes(directory) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def test_the_readme_example_writes_at_most_two_and_a_half_times_its_input(tmp_path):
    assert main(["generate", f"output={tmp_path / 'raw'}", "n_clean=300"]) == 0
    corpus, out = tmp_path / "raw" / "corpus", tmp_path / "processed"
    assert main(["run", "pipeline=default", f"input={corpus}", f"output={out}", "workers=2"]) == 0
    written, read = _bytes(out), _bytes(corpus)
    print(f"README example: {written:,} bytes written for {read:,} read ({written / read:.2f}x)")
    assert written <= 2.5 * read
    # What makes it so: no per-step copy, compressed exclusion records and barrier inputs, one tokenizer file.
    assert not (out / "normalize").exists() and not (out / "exact_dedup").exists()
    assert list((out / "heuristics").glob("shard-*.jsonl.zst")) and list((out / "pii").glob("shard-*.jsonl"))  # final
    assert [path.name for path in out.rglob("tokenizer.json")] == ["tokenizer.json"]
    excluded = [record for path in (out / "excluded").rglob("*.jsonl.zst") for record in read_records(path)]
    assert excluded and all(record["text"] and record["excluded_reason"] for record in excluded)
