"""Several "hosts" on one machine for multi-node tests: one network namespace per host, joined by veth links to a
bridge in the root namespace, so traffic between hosts is real TCP over separate interfaces and addresses, and
a host can be cut off (its link set down: a partition in which no socket closes) or have its processes killed.

Each command runs in its host's network namespace with a hostname of its own and a hosts file naming every host,
so torchrun, gloo, Slurm and Loom's own messages name a different host per node, as on a cluster. Needs root and
iproute2 (CI runs as root); `NetnsUnavailable` carries the exact reason otherwise, for the tests to skip with.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


class NetnsUnavailable(RuntimeError):
    """This machine cannot make network namespaces; the message is the exact reason."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Hosts:
    """`n` hosts named node0..node{n-1} with addresses 10.<net>.0.1.. on one bridge; start() makes them."""

    n: int
    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000:04d}")
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def net(self) -> int:
        return 200 + int(self.tag) % 50

    def namespace(self, i: int) -> str:
        return f"loom{self.tag}n{i}"

    def hostname(self, i: int) -> str:
        return f"node{i}"

    def address(self, i: int) -> str:
        return f"10.{self.net}.0.{i + 1}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the hosts' network (a controller outside the hosts listens there)."""
        return f"10.{self.net}.0.254"

    def _veth(self, i: int) -> str:
        return f"lv{self.tag}n{i}"  # the host side of node i's link (<= 15 characters)

    @property
    def _bridge(self) -> str:
        return f"lb{self.tag}"

    def start(self) -> "Hosts":
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (ip netns add); run the tests as root")
        if not all(shutil.which(tool) for tool in ("ip", "unshare", "nsenter")):
            raise NetnsUnavailable("`ip` (iproute2), `unshare` and `nsenter` (util-linux) are needed")
        self.stop()  # leftovers of a killed test run with the same tag
        probe = _ip("netns", "add", self.namespace(0), check=False)
        if probe.returncode != 0:
            raise NetnsUnavailable(f"ip netns add failed: {probe.stderr.strip()}")
        try:
            _ip("link", "add", self._bridge, "type", "bridge")
            _ip("link", "set", self._bridge, "up")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self._bridge)
            for i in range(self.n):
                ns = self.namespace(i)
                if i:
                    _ip("netns", "add", ns)
                _ip("link", "add", self._veth(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", self._veth(i), "master", self._bridge)
                _ip("link", "set", self._veth(i), "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            self._write_hosts_files()
        except subprocess.CalledProcessError as exc:
            self.stop()
            raise NetnsUnavailable(f"setting up the hosts failed: {' '.join(exc.cmd)}: {exc.stderr.strip()}") from exc
        return self

    def _write_hosts_files(self) -> None:
        """Names resolve as on a cluster: each host's commands see /etc/netns/<ns>/hosts as /etc/hosts."""
        lines = ["127.0.0.1 localhost", f"{self.gateway} gateway"]
        lines += [f"{self.address(i)} {self.hostname(i)}" for i in range(self.n)]
        for i in range(self.n):
            directory = Path("/etc/netns") / self.namespace(i)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "hosts").write_text("\n".join(lines) + "\n")

    def command(self, i: int, argv: list[str]) -> list[str]:
        """`argv` as run on host i: in its network namespace, under its own hostname, with the hosts file naming
        every host. Not `ip netns exec`, which remounts /sys and so hides the cgroup hierarchy slurmd needs: the
        network namespace is entered alone, then a private mount namespace gets the hosts file."""
        hosts_file = Path("/etc/netns") / self.namespace(i) / "hosts"
        script = f'mount --bind {hosts_file} /etc/hosts && hostname {self.hostname(i)} && exec "$@"'
        enter = ["nsenter", f"--net=/run/netns/{self.namespace(i)}", "unshare", "--mount", "--uts"]
        return [*enter, "sh", "-c", script, "sh", *argv]

    def popen(self, i: int, argv: list[str], *, log: Path, env: Optional[dict] = None, cwd=None) -> subprocess.Popen:
        """Start `argv` on host i in a session of its own (so kill(i) reaches all its processes), output to `log`."""
        with open(log, "w") as out:
            process = subprocess.Popen(
                self.command(i, argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        process.host = i  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def kill(self, i: int) -> None:
        """Every process started on host i dies at once (SIGKILL to each process group): a node lost."""
        for process in self.processes:
            if process.host == i and process.poll() is None:  # type: ignore[attr-defined]
                os.killpg(process.pid, signal.SIGKILL)

    def cut(self, i: int) -> None:
        """Take host i's link down: its packets are dropped and no connection is closed (a network partition)."""
        _ip("link", "set", self._veth(i), "down")

    def restore(self, i: int) -> None:
        """Bring host i's link back up."""
        _ip("link", "set", self._veth(i), "up")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=30)
        self.processes.clear()
        for i in range(self.n):
            _ip("netns", "del", self.namespace(i), check=False)
            shutil.rmtree(Path("/etc/netns") / self.namespace(i), ignore_errors=True)
            _ip("link", "del", self._veth(i), check=False)
        _ip("link", "del", self._bridge, check=False)
        time.sleep(0.1)
