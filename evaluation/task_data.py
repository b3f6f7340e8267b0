"""A task's documents from local files only: `dataset_path: json` with `data_files`, or a saved `datasets` dataset.

As in lm-eval, `data_files` sits under `dataset_kwargs` (a path or list of paths is the split "train"; a mapping
names the splits). JSON Lines and JSON arrays are read directly; a directory written by `datasets.save_to_disk`
is read with `datasets.load_from_disk`. Nothing is fetched over the network: any other `dataset_path` is refused.
A relative data file is looked up from the working directory (lm-eval's rule), then beside the YAML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.errors import TaskInputError

Rows = list[dict[str, Any]]


def load_splits(cfg: dict[str, Any], yaml_path: Path | None) -> dict[str, Rows]:
    """{split name: documents} for the task's dataset, or a TaskInputError naming the file and key."""
    where = str(yaml_path) if yaml_path else f"task {cfg.get('task')!r}"
    dataset_path = cfg.get("dataset_path")
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    data_files = kwargs.pop("data_files", cfg.get("data_files"))
    if dataset_path == "json":
        if data_files is None:
            raise TaskInputError(f"{where}: dataset_path: json needs dataset_kwargs.data_files (a path or split: path)")
        return _json_splits(data_files, kwargs.get("field"), where, yaml_path)
    if dataset_path is not None:
        local = _existing(str(dataset_path), yaml_path)
        if local is not None and local.is_dir():
            return _saved_dataset(local, cfg.get("dataset_name"), where)
    raise TaskInputError(
        f"{where}: dataset_path {dataset_path!r} is not local; use `dataset_path: json` with "
        "dataset_kwargs.data_files, or the directory of a dataset saved with datasets' save_to_disk "
        "(evaluation never downloads)"
    )


def _existing(name: str, yaml_path: Path | None) -> Path | None:
    candidates = [Path(name).expanduser()]
    if yaml_path is not None and not Path(name).is_absolute():
        candidates.append(yaml_path.parent / name)
    return next((p for p in candidates if p.exists()), None)


def _json_splits(data_files, field: str | None, where: str, yaml_path: Path | None) -> dict[str, Rows]:
    by_split = data_files if isinstance(data_files, dict) else {"train": data_files}
    splits: dict[str, Rows] = {}
    for split, files in by_split.items():
        rows: Rows = []
        for name in [files] if isinstance(files, str) else list(files):
            path = _existing(str(name), yaml_path)
            if path is None or not path.is_file():
                tried = f"{Path(name).expanduser().resolve()}"
                if yaml_path is not None and not Path(name).is_absolute():
                    tried += f" or {(yaml_path.parent / name).resolve()}"
                raise TaskInputError(
                    f"{where}: dataset_kwargs.data_files[{split!r}] = {name!r}: no such file ({tried})"
                )
            rows.extend(_read_json_rows(path, field))
        splits[str(split)] = rows
    return splits


def _read_json_rows(path: Path, field: str | None) -> Rows:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if field is not None or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskInputError(f"{path}: not valid JSON ({err})") from err
        data = data[field] if field is not None else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise TaskInputError(f"{path}: expected a JSON array of objects")
        return data
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskInputError(f"{path}:{number}: not a JSON object ({err})") from err
        if not isinstance(row, dict):
            raise TaskInputError(f"{path}:{number}: each line must be a JSON object, found {type(row).__name__}")
        rows.append(row)
    return rows


def _saved_dataset(path: Path, name: str | None, where: str) -> dict[str, Rows]:
    import datasets  # lazy: only saved datasets need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise TaskInputError(f"{where}: dataset_path {path} is not a dataset saved with save_to_disk ({err})") from err
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded.to_list()}
    return {split: ds.to_list() for split, ds in loaded.items()}
