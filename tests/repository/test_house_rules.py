"""House rules a checkout must keep, each shown to fail on a planted violation:
- nothing generated in git: no tracked file over 1 MB, none under a path .gitignore ignores (run outputs, weights);
- no import circle between the project's modules (function-level imports count);
- no library module imports a command module (`python -m X` modules hold the command line only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from import_graph import command_modules, import_cycles, import_graph

ROOT = Path(__file__).resolve().parents[2]
MAX_TRACKED_BYTES = 1 << 20


def tracked_file_problems(repo: Path) -> list[str]:
    """Tracked files that are too large or that the ignore rules say are outputs, one line each."""

    def git(*args: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout
        return [line for line in out.split("\0") if line]

    problems = []
    for name in git("ls-files", "-z"):
        path = repo / name
        if path.is_file() and path.stat().st_size > MAX_TRACKED_BYTES:
            problems.append(
                f"{name}: {path.stat().st_size} bytes tracked (limit {MAX_TRACKED_BYTES}); "
                f"outputs, data and weights do not belong in git"
            )
    for name in git("ls-files", "-z", "--cached", "--ignored", "--exclude-standard"):
        problems.append(f"{name}: tracked, but .gitignore ignores it (a generated output): git rm --cached it")
    return problems


def _git_checkout() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


@pytest.mark.skipif(not _git_checkout(), reason="not a git checkout (or no git): nothing tracked to check")
def test_no_generated_or_large_file_is_tracked() -> None:
    assert tracked_file_problems(ROOT) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_tracked_file_check_finds_planted_outputs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    (repo / "small.py").write_text("x = 1\n")
    (repo / "weights.bin").write_bytes(b"\0" * (MAX_TRACKED_BYTES + 1))
    (repo / "outputs" / "run").mkdir(parents=True)
    (repo / "outputs" / "run" / "metrics.jsonl").write_text("{}\n")
    subprocess.run(["git", "-C", str(repo), "add", "-f", "."], check=True)
    problems = tracked_file_problems(repo)
    assert len(problems) == 2, problems
    assert problems[0].startswith("weights.bin: ") and "bytes tracked" in problems[0]
    assert problems[1].startswith("outputs/run/metrics.jsonl: tracked, but .gitignore ignores it")


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph(ROOT)) == []


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cycle_check_finds_planted_cycles(tmp_path: Path) -> None:
    # a lazy (function-level) import closes a three-module circle; a TYPE_CHECKING import does not count
    _write(tmp_path, "model/__init__.py", "")
    _write(tmp_path, "model/a.py", "from model.b import f\n")
    _write(tmp_path, "model/b.py", "def f():\n    from model import c\n")
    _write(tmp_path, "model/c.py", "from .a import f\n")
    _write(tmp_path, "model/d.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from model.e import g\n")
    _write(tmp_path, "model/e.py", "import model.d\n")
    assert import_cycles(import_graph(tmp_path, ("model",))) == [["model.a", "model.b", "model.c"]]


def library_imports_of_commands(root: Path, packages=None) -> list[str]:
    kwargs = {} if packages is None else {"packages": packages}
    graph, commands = import_graph(root, **kwargs), command_modules(root, **kwargs)
    return sorted(
        f"{module} imports the command module {target}"
        for module, targets in graph.items()
        if module not in commands
        for target in targets & commands
    )


def test_no_library_module_imports_a_command() -> None:
    assert library_imports_of_commands(ROOT) == []


def test_command_check_finds_a_library_importing_a_command(tmp_path: Path) -> None:
    _write(tmp_path, "launcher/__init__.py", "")
    _write(tmp_path, "launcher/run.py", "def main():\n    pass\n\n\nif __name__ == '__main__':\n    main()\n")
    _write(tmp_path, "launcher/lib.py", "def helper():\n    from launcher.run import main\n")
    _write(tmp_path, "launcher/__main__.py", "from launcher.lib import helper\n")
    assert library_imports_of_commands(tmp_path, ("launcher",)) == [
        "launcher.lib imports the command module launcher.run"
    ]
