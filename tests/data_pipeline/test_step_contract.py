"""One step contract: every exclusion record of the default and web pipelines names its rule as `<step>:<rule>`
and carries the measured value and the threshold; and the refactor that unified the contract kept every kept
document and token byte for byte (digests of the same planted runs made with the code before it).

The code before it wrote C4's kept lines stripped, as datatrove does; the default pipeline now writes a kept
document as it came (c4.rewrite: none), so its run here asks for datatrove's writing to compare with those digests.
The web pipeline's C4 writes the kept lines as they came (original_lines): on these pages that is the same text.
Those runs keep every step's documents (keep_intermediate=true, the layout the digests were made with); the same
runs streamed (the default, data_pipeline/executors/streams.py) must write the same final documents, tokens,
exclusion records, quarantine and work files byte for byte, and no intermediate copy."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from step_contract_runs import (
    DEDUP_FIRST_DEFAULT,
    DEDUP_FIRST_WEB,
    exclusion_records,
    kept_digests,
    run_default,
    run_web,
)

from data_pipeline.document import Document
from data_pipeline.shards import read_records
from data_pipeline.steps import build_step
from data_pipeline.steps.heuristics import FAMILIES

# Produced by the unmodified code (main at 5e27e33, before the step contract was unified) with
# `kept_digests(run_default(tmp))` and `kept_digests(run_web(tmp))`: not invented, and the same on two runs there.
MAIN_DEFAULT_DIGESTS = {
    "boilerplate_dedup/shard-00000.jsonl": "ddee787cc47f8ebfd69fa59898025d110f4e3646f90994ee4277993c09654eb7",
    "boilerplate_dedup/shard-00001.jsonl": "2de0f616418057ce76da091f517560d0cb7843789f29108b020f33cdbac71856",
    "decontaminate/shard-00000.jsonl": "958af2f738b86ef816e75763dd1fd6682c2b46fd900fed9fdb22c4387b8e81d6",
    "decontaminate/shard-00001.jsonl": "327f2a903bdc32ab71219642ab3da26bfa1832bec831a5b5f54e9890350daaef",
    "exact_dedup/shard-00000.jsonl": "2e6cb8f17500858569a7816497c0d50235dd9a709bb26f13b1f4684df3c10210",
    "exact_dedup/shard-00001.jsonl": "a94bc412c4f8089e75357bd85676f4f8812b9d7fd9d3f19439b1d563118af923",
    "heuristics/shard-00000.jsonl": "f6d63f705baa4f131e55d23a3a87db35da84542fbbdb2df1a24d2d0d3dd1e45e",
    "heuristics/shard-00001.jsonl": "b391a119eac851a2fbb1f3068151e96f1c074a9f890bfa11d1de7a37e19a94a1",
    "minhash_dedup/shard-00000.jsonl": "ddee787cc47f8ebfd69fa59898025d110f4e3646f90994ee4277993c09654eb7",
    "minhash_dedup/shard-00001.jsonl": "2de0f616418057ce76da091f517560d0cb7843789f29108b020f33cdbac71856",
    "normalize/shard-00000.jsonl": "aadf71f178eb547e352a9d14f049b9a8d1d168ca1f4f506fe234f6de8e583c23",
    "normalize/shard-00001.jsonl": "de7d7be54bafa9a9b86f4024cd887d0374dc90524fea430bfd792c9f14289d19",
    "pii/shard-00000.jsonl": "f6d63f705baa4f131e55d23a3a87db35da84542fbbdb2df1a24d2d0d3dd1e45e",
    "pii/shard-00001.jsonl": "b391a119eac851a2fbb1f3068151e96f1c074a9f890bfa11d1de7a37e19a94a1",
    "tokens/shard-00000.index": "2a6b1b5cf18ed814feefc5927c620980bc0913c4ac49d4822bba43394b4a23bf",
    "tokens/shard-00000.json": "da28c8f62689f6383b879cda5c84ed401074a00aa470577ebf6c8168aff1f11f",
    "tokens/shard-00000.tokens": "b7d3d7011207f5227efba98880ec8787c0dedd7e75d2a1783f1d8f587c38ac79",
    "tokens/shard-00001.index": "50459ee5132cfba4f9b3ceb8f27966eb47465c8b78995f4b2e265d9f4be72aec",
    "tokens/shard-00001.json": "439fbaa3240608a6ef80e046eb9dcb547571fef8a831104050136082f7e06317",
    "tokens/shard-00001.tokens": "f40f0ff112bdb288eaee501c22b311d2a7fcaee70ecf31037a1605e3a95f7ef4",
    "tokens/tokenizer.json": "563350e63bc943a631c4e635ad516afe5cf7a9328bae8dfbbbf70f4326c00597",
}
MAIN_WEB_DIGESTS = {
    "boilerplate_dedup/shard-00000.jsonl": "f4833351a8872b528d08d745ba5e6408d2df887344e4e209a457d4e0c8e6c3d8",
    "boilerplate_dedup/shard-00001.jsonl": "d30df31702145faa43706b980614f4229ebee431db950de8bef32f33e02851cd",
    "classifier/shard-00000.jsonl": "330b7ded295b1ab60d93e534c30163dd04674218a9a6e44dd084b2c72110eb5c",
    "classifier/shard-00001.jsonl": "ddc4a1f0a9b6c90313143ee527ab7c54ae037dc165157b29636fcbb269e0ec45",
    "decontaminate/shard-00000.jsonl": "e3448baaf607ee671bbe7e01688bddb2148513a02db036161cc17ac4043cf50a",
    "decontaminate/shard-00001.jsonl": "ddc4a1f0a9b6c90313143ee527ab7c54ae037dc165157b29636fcbb269e0ec45",
    "exact_dedup/shard-00000.jsonl": "f4833351a8872b528d08d745ba5e6408d2df887344e4e209a457d4e0c8e6c3d8",
    "exact_dedup/shard-00001.jsonl": "5c208f672cbfab48148f32643f8f6263be546d5240e0d51b87b5b615943f0ff8",
    "extract/shard-00000.jsonl": "8627446eeb19f69e3be1c8269ca516c6fcfc3056886ce394476d989a0854dfd5",
    "extract/shard-00001.jsonl": "e377f08c4f1845d750caff7e240b32e9684efe07cec768c8e6f045e79c881896",
    "heuristics/shard-00000.jsonl": "347d61a945eca10f27d5d1ca29109d5ff88d2d1edac2b3d9e56ecb3c09225bf2",
    "heuristics/shard-00001.jsonl": "6e106e51e002c9eaf870f87b947666ecc22f97f573a960f84c36b728442deb5c",
    "lang_id/shard-00000.jsonl": "f4833351a8872b528d08d745ba5e6408d2df887344e4e209a457d4e0c8e6c3d8",
    "lang_id/shard-00001.jsonl": "5e298a37beaf7113fcf4df9e002ba67887df52cae3c77f7329e3c03ba8f106ea",
    "minhash_dedup/shard-00000.jsonl": "f4833351a8872b528d08d745ba5e6408d2df887344e4e209a457d4e0c8e6c3d8",
    "minhash_dedup/shard-00001.jsonl": "d30df31702145faa43706b980614f4229ebee431db950de8bef32f33e02851cd",
    "normalize/shard-00000.jsonl": "8627446eeb19f69e3be1c8269ca516c6fcfc3056886ce394476d989a0854dfd5",
    "normalize/shard-00001.jsonl": "e377f08c4f1845d750caff7e240b32e9684efe07cec768c8e6f045e79c881896",
    "pii/shard-00000.jsonl": "330b7ded295b1ab60d93e534c30163dd04674218a9a6e44dd084b2c72110eb5c",
    "pii/shard-00001.jsonl": "ddc4a1f0a9b6c90313143ee527ab7c54ae037dc165157b29636fcbb269e0ec45",
    "tokens/shard-00000.index": "f7a1efa80e678571f0f469b007869db22cc0fa4ed5b7f19ec9dd84d4fadc027d",
    "tokens/shard-00000.json": "64f846eaa1ba888ab2c4b5940505c7c0ab0deef5d8fb398decf94766e29bd16e",
    "tokens/shard-00000.tokens": "6291fe4991c8e5336121e8d47e0b278c575dab4cfddc479bd68cc25024a73644",
    "tokens/shard-00001.index": "1e97ed0ddff45c4a9e40d419463ad72c35346649c92a0d634b2f4976b75562ca",
    "tokens/shard-00001.json": "96517cdd0bd6414822330138a67534db8fa2fd35e1b63c2a292e1d5a98991341",
    "tokens/shard-00001.tokens": "7601e8866a82b845f966a2cc0a0724a142da42d8bb2294feecb14287bdc76b38",
    "tokens/tokenizer.json": "39ee4f4442ddee7543aa9bf6222197352eaa5d6bc7e6bdb4a4f435dd6b488e82",
    "url_filter/shard-00000.jsonl": "e1068c84680b8f7650538ac1a6ee88e5ed97aec485b9b11149d25bc293a87131",
    "url_filter/shard-00001.jsonl": "f4001c1659c8bba94b3f40732e8edcf509e0a46c0555bab8d8907bae225b5a66",
}


AS_BEFORE = ("keep_intermediate=true",)
DATATROVE_WRITING = ("pipeline.steps.1.params.c4.rewrite=datatrove",)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default pipeline's steps as the digests were made: in their old order, every step's copy kept."""
    return run_default(tmp_path_factory.mktemp("contract_default"), AS_BEFORE + DATATROVE_WRITING, DEDUP_FIRST_DEFAULT)


@pytest.fixture(scope="module")
def web_run(tmp_path_factory):
    return run_web(tmp_path_factory.mktemp("contract_web"), AS_BEFORE, DEDUP_FIRST_WEB)


def files_by_digest(output) -> dict[str, str]:
    """Every file of a run but those that record when or how long (stats, markers, the report, the plan). A
    zstd-compressed JSONL file is digested decompressed, under its name without `.zst`: its frames end where the
    task checkpointed, which depends on how its steps were grouped, while its records may not."""
    timed = ("stats", ".markers")
    untimed = {".lock", "plan.json", "report.md", "report.html", "report.json", "summary.json"}
    digests = {}
    for path in sorted(output.rglob("*")):
        if not path.is_file() or path.relative_to(output).parts[0] in timed or path.name in untimed:
            continue
        if path.suffix == ".png":
            continue
        name = str(path.relative_to(output))
        if name.endswith(".jsonl.zst"):
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_records(path))
            digests[name.removesuffix(".zst")] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        elif name.endswith(".jsonl"):  # the same canonical form, for a plain copy to equal a compressed one
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_records(path))
            digests[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        else:
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def bytes_written(output) -> int:
    return sum(path.stat().st_size for path in output.rglob("*") if path.is_file())


@pytest.mark.parametrize("pipeline", ["default", "web"])
def test_a_streamed_run_writes_what_a_run_with_every_copy_writes_without_the_copies(
    pipeline, default_run, web_run, tmp_path
):
    """In the pipeline's own order (the quality filters before the dedup steps) and in the digests' old one."""
    run, writing = (run_default, DATATROVE_WRITING) if pipeline == "default" else (run_web, ())
    _check_streamed(run(tmp_path / "streamed", writing), run(tmp_path / "copies", AS_BEFORE + writing))
    old_order, old_copies = (DEDUP_FIRST_DEFAULT, default_run) if pipeline == "default" else (DEDUP_FIRST_WEB, web_run)
    _check_streamed(run(tmp_path / "streamed_old", writing, old_order), old_copies)


def _check_streamed(streamed, per_step) -> None:
    kept, every = files_by_digest(streamed), files_by_digest(per_step)
    assert {name: every[name] for name in kept} == kept  # each file the streamed run wrote, byte for byte
    copies = {name.split("/")[0] for name in set(every) - set(kept)}
    # Only intermediate document copies are missing: the final documents' step and the steps a barrier reads remain.
    assert copies and all((per_step / step).is_dir() and step not in ("tokens", "excluded") for step in copies)
    assert any(name.startswith("decontaminate/shard-") for name in kept)  # the final documents
    assert bytes_written(streamed) < bytes_written(per_step)
    for step in copies:  # every step still recorded its exclusions and stats
        assert (streamed / "excluded" / step).is_dir() and (streamed / "stats" / f"{step}.json").is_file()


def test_default_pipeline_keeps_the_same_documents_and_tokens_as_before(default_run):
    assert kept_digests(default_run) == MAIN_DEFAULT_DIGESTS


def test_web_pipeline_keeps_the_same_documents_and_tokens_as_before(web_run):
    assert kept_digests(web_run) == MAIN_WEB_DIGESTS


RULE = re.compile(r"^([a-z0-9_]+):([a-z0-9_]+)$")


def assert_records_conform(output) -> set[str]:
    """Every exclusion record names `<step>:<rule>` (heuristics: `<family>:<rule>`, the family being a step of its
    own) and carries a value and a threshold; returns the steps that excluded something."""
    records = exclusion_records(output)
    assert records
    for step, record in records:
        reason = record["excluded_reason"]
        match = RULE.match(reason)
        assert match, (step, reason)
        assert match.group(1) == step or (step == "heuristics" and match.group(1) in FAMILIES), (step, reason)
        assert record["excluded_value"] is not None and record["excluded_threshold"] is not None, (step, record)
    return {step for step, _ in records}


def test_every_exclusion_of_the_default_pipeline_is_step_rule_value_and_threshold(default_run):
    excluding = assert_records_conform(default_run)
    assert excluding == {"exact_dedup", "minhash_dedup", "heuristics", "decontaminate"}


def test_every_exclusion_of_the_web_pipeline_is_step_rule_value_and_threshold(web_run):
    excluding = assert_records_conform(web_run)
    assert excluding == {
        "url_filter",
        "extract",
        "lang_id",
        "exact_dedup",
        "minhash_dedup",
        "heuristics",
        "classifier",
        "decontaminate",
    }


def test_normalize_drops_an_empty_document_as_normalize_empty():
    step = build_step("normalize")
    assert step([Document("blank", "\u200b \n\t")]) == []
    assert [(rule, x) for _, rule, x in step.context.excluded] == [("normalize:empty", {"value": 0, "threshold": 1})]
