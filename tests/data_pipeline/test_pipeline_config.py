"""One source per key of the pipeline's run config: the dataclasses in data_pipeline/cli.py hold every default, the
YAML files only what a choice changes; `--cfg job` still shows every resolved key and documented overrides work."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf

from data_pipeline.cli import CONFIG_DIR, PipelineRunConfig, PipelineStepsConfig, compose_config, main


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return MISSING


def repeated_defaults(node: Any, schema: type, where: str) -> list[str]:
    """Keys of a YAML mapping whose value equals the dataclass default, in nested dataclasses and lists of them."""
    found = []
    fields, hints = {f.name: f for f in dataclasses.fields(schema)}, typing.get_type_hints(schema)
    for key, value in (node or {}).items():
        if key == "defaults":
            continue
        assert key in fields, f"{where}: {key} is not a field of {schema.__name__}"
        kind = hints[key]
        if value == default_of(fields[key]):
            found.append(f"{where}:{key}")
        elif dataclasses.is_dataclass(kind) and isinstance(value, dict):
            found += repeated_defaults(value, kind, f"{where}:{key}")
        elif typing.get_origin(kind) is list and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            for i, item in enumerate(value):
                found += repeated_defaults(item, typing.get_args(kind)[0], f"{where}:{key}.{i}")
    return found


def test_yaml_repeats_no_dataclass_default():
    files = [CONFIG_DIR / "pipeline.yaml", *sorted((CONFIG_DIR / "pipeline").glob("*.yaml"))]
    found = []
    for path in files:
        node = yaml.safe_load(path.read_text())
        schema = PipelineRunConfig if path.name == "pipeline.yaml" else PipelineStepsConfig
        found += repeated_defaults(node, schema, str(path.relative_to(CONFIG_DIR)))
    assert found == []


def leaf_keys(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return set().union(*(leaf_keys(v, f"{prefix}{k}.") for k, v in node.items())) if node else {prefix.rstrip(".")}
    return {prefix.rstrip(".")}


def test_cfg_job_prints_every_resolved_key(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--cfg",
                "job",
                "--resolve",
                "input=raw",
                f"output={tmp_path}",
                "tasks=8",
                "cluster.mem=16G",
                "eval_sets=[evals.jsonl]",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    schema = OmegaConf.to_container(OmegaConf.structured(PipelineRunConfig))
    schema_keys = {k for k in leaf_keys(schema) if not k.startswith("pipeline.")}
    assert schema_keys <= leaf_keys(printed)
    assert printed["tasks"] == 8 and printed["cluster"]["mem"] == "16G" and printed["workers"] == 1
    assert printed["pipeline"]["name"] == "default"
    decontaminate = next(s for s in printed["pipeline"]["steps"] if s["name"] == "decontaminate")
    assert decontaminate["params"]["eval_sets"] == ["evals.jsonl"]  # interpolation resolved
    assert not list(Path(tmp_path).iterdir())  # inspection runs nothing


def test_documented_overrides_still_work(tmp_path):
    cfg = compose_config(
        [
            "pipeline=web",
            "input=raw",
            f"output={tmp_path}",
            "pipeline.steps.1.params.model_path=lid.bin",
            "pipeline.steps.5.params.model_path=quality.bin",
            "cluster.partition=cpu",
            "executor=slurm",
            "+step_params.c4.min_sentences=3",
            "output_format=parquet",
            "max_doc_chars=10",
        ]
    )
    assert (
        cfg.pipeline.steps[1].params.model_path == "lid.bin"
        and cfg.pipeline.steps[5].params.model_path == "quality.bin"
    )
    assert cfg.cluster.partition == "cpu" and cfg.executor == "slurm" and cfg.step_params.c4.min_sentences == 3
    assert cfg.output_format == "parquet" and cfg.max_doc_chars == 10
    assert [s.name for s in compose_config(["pipeline=clean", "input=a", "output=b"]).pipeline.steps][
        -1
    ] == "decontaminate"
