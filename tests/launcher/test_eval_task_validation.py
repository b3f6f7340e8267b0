"""Bad downstream tasks stop the launch in the validation pass (launcher/validation.py), before any process group:
the config is composed as `python -m launcher.train` composes it, `validate` raises a ConfigError naming the file
and the field, and `torch.distributed.init_process_group` is never called. Layout limits of the evaluation are
decided there too: pipeline parallel leaves generation tasks out with a note; tensor and context parallel score
every task, with scoring batches padded to the width they need, which must fit model.max_seq_len."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
from eval_corpus import write_corpus
from launcher_testing import REPO, tiny_overrides


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("eval_corpus"))


@pytest.fixture
def compose(corpus, tmp_path, monkeypatch):
    """compose(tasks, task_dir, overrides, world_size): the launcher's config as torchrun's rank 0 composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import launcher.train  # noqa: F401 - registers the schema and resolvers, as the entry point does

    def called(*args, **kwargs):
        raise AssertionError("init_process_group was called during validation")

    monkeypatch.setattr(dist, "init_process_group", called)
    shards, _ = corpus

    def make(tasks: list[str], task_dir: Path, overrides=(), world_size: int = 1):
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        base = tiny_overrides(shards, tmp_path / "run") + [
            "model.vocab_size=320",
            "model.n_kv_heads=2",
            f"eval.tasks=[{','.join(tasks)}]",
            f"eval.task_dirs=[{task_dir}]",
            "eval.max_length=32",
        ]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return hydra_compose("train", overrides=base + list(overrides))

    return make


def _cloze_task(directory: Path, name: str, rows: list[dict], **fields: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"doc_to_text": "'{{context}}'", "doc_to_choice": "choices", "doc_to_target": "label", **fields}
    yaml_path = directory / f"{name}.yaml"
    yaml_path.write_text(
        f"task: {name}\noutput_type: multiple_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        + "".join(f"{k}: {v}\n" for k, v in spec.items())
    )
    return yaml_path, data


ROWS = [
    {"context": f"The licence grants right number {i}", "choices": ["a", "b", "c", "d"], "label": i % 4}
    for i in range(4)
]


def _refused(cfg) -> str:
    from launcher.validation import ConfigError, validate

    with pytest.raises(ConfigError) as err:
        validate(cfg, 1)
    assert not dist.is_initialized()
    return str(err.value)


def test_missing_data_file_is_refused_naming_yaml_field_and_file(compose, tmp_path):
    yaml_path, data = _cloze_task(tmp_path / "tasks", "lost", ROWS)
    data.unlink()
    message = _refused(compose(["lost"], tmp_path / "tasks"))
    assert str(yaml_path) in message and "data_files" in message and str(data) in message


def test_unknown_task_is_refused_naming_the_task_dirs(compose, corpus):
    _, tasks = corpus
    message = _refused(compose(["lic_clozee"], tasks))
    assert "eval.tasks" in message and "'lic_clozee'" in message and str(tasks) in message


def test_template_field_the_data_lacks_is_refused_naming_yaml_field_and_file(compose, tmp_path):
    yaml_path, data = _cloze_task(tmp_path / "tasks", "asks_question", ROWS, doc_to_text="'Q: {{question}}'")
    message = _refused(compose(["asks_question"], tmp_path / "tasks"))
    assert str(yaml_path) in message and "doc_to_text" in message and "'question'" in message
    assert str(data) in message


def test_empty_choice_list_is_refused_naming_yaml_document_and_field(compose, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["choices"] = []
    yaml_path, data = _cloze_task(tmp_path / "tasks", "no_choices", rows)
    message = _refused(compose(["no_choices"], tmp_path / "tasks"))
    assert str(yaml_path) in message and "doc_to_choice" in message and "document 1" in message
    assert str(data) in message


def test_pipeline_leaves_generation_out_with_a_note_and_keeps_the_rest(compose, corpus):
    from launcher.validation import validate

    _, tasks = corpus
    plan = validate(compose(["lic_cloze", "lic_complete"], tasks, ["parallel=pp"], world_size=2), 2)
    assert [t.name for t in plan.eval_tasks] == ["lic_cloze"]
    assert "lic_complete" in plan.notes[0] and "pipeline parallel" in plan.notes[0]


@pytest.mark.parametrize("layout", ["tp", "cp", "fsdp_tp"])
def test_tensor_and_context_parallel_score_every_task_generation_included(compose, corpus, layout):
    from launcher.validation import validate

    _, tasks = corpus
    world = 4 if layout == "fsdp_tp" else 2
    plan = validate(compose(["lic_cloze", "lic_ppl", "lic_complete"], tasks, [f"parallel={layout}"], world), world)
    assert [t.name for t in plan.eval_tasks] == ["lic_cloze", "lic_ppl", "lic_complete"]
    assert not [note for note in plan.notes if "eval" in note]


def test_scoring_width_a_layout_pads_to_must_fit_the_model():
    """tp under sequence parallel; the cp chunks (2*cp zig-zag), each rank's share divisible by tp."""
    from launcher.validation import scoring_width_multiple
    from parallel.config import ParallelConfig
    from parallel.dims import ParallelDims

    def multiple(world: int, **cfg) -> int:
        return scoring_width_multiple(ParallelDims.from_config(ParallelConfig(**cfg), world))

    assert multiple(1) == 1 and multiple(2, tp=2) == 2
    assert multiple(2, cp=2) == 4 and multiple(2, cp=2, cp_load_balance=False) == 2
    assert multiple(4, cp=2, tp=2) == 4 and multiple(8, cp=2, tp=4) == 8 and multiple(6, cp=3, tp=2) == 6


def test_layouts_and_keys_the_evaluation_cannot_use_are_refused(compose, corpus):
    from launcher.validation import ConfigError, validate

    _, tasks = corpus
    # zig-zag cp=2 pads scoring batches to a multiple of 4 tokens: 34 would become 36, past the model's 34
    with pytest.raises(ConfigError, match=r"eval.max_length=34 .* multiple of 4 .* eval.max_length<=32"):
        validate(compose(["lic_cloze"], tasks, ["parallel=cp", "model.max_seq_len=34", "eval.max_length=null"], 2), 2)
    with pytest.raises(ConfigError, match=r"eval.max_length=33 .* multiple of 2 .* eval.max_length<=32"):
        validate(compose(["lic_cloze"], tasks, ["parallel=tp", "model.max_seq_len=33", "eval.max_length=null"], 2), 2)
    with pytest.raises(ConfigError, match=r"eval.max_length=64 .* data.seq_len=32"):
        validate(compose(["lic_cloze"], tasks, ["parallel=pp", "eval.max_length=null"], world_size=2), 2)
    with pytest.raises(ConfigError, match="eval.batch_size=0"):
        validate(compose(["lic_cloze"], tasks, ["eval.batch_size=0"]), 1)
    with pytest.raises(ConfigError, match=r"lic_complete.yaml.*max_gen_toks=6 .* eval.max_length=6"):
        validate(compose(["lic_complete"], tasks, ["eval.max_length=6"]), 1)
    with pytest.raises(ConfigError, match="data=synthetic"):
        validate(compose(["lic_cloze"], tasks, ["data=synthetic"]), 1)


def test_eval_keys_may_change_when_a_run_resumes():
    from launcher.run_dir import changed_keys

    saved = {"optim": {"lr": 0.003}, "trainer": {"max_steps": 10}}  # a run saved before the eval group existed
    new = {"optim": {"lr": 0.003}, "trainer": {"max_steps": 10}, "eval": {"tasks": ["lic_cloze"], "every": 5}}
    assert changed_keys(saved, new, []) == []
    assert changed_keys(saved, {**new, "optim": {"lr": 0.001}}, []) == ["optim.lr: 0.003 -> 0.001"]
