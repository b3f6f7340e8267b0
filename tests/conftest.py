"""Session-wide fixtures: a real single-node Slurm (tests/local_slurm.py) for the tests with `slurm` in their names."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items) -> None:
    """Tests that use the real Slurm fixture carry the `slurm` marker, so `make test-fast` can leave them out."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """Debian's Slurm 22.05 on this machine, installed with apt-get when missing and started without systemd;
    skipped (with the reason) only where that cannot be done: not root, or no apt-get."""
    from local_slurm import LocalSlurm, SlurmUnavailable

    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()
