"""A real Slurm of two nodes on one machine: the controller in the root network namespace, one slurmd per host of
tests/netns_hosts.py (its own network namespace, address and hostname: node0, node1), so a job with --nodes=2 runs
one task per "node" and its processes talk over real TCP, as on a cluster.

Built on tests/local_slurm.py's single-node cluster (the same packages, munge, settings learnt there); what
differs: the controller listens on the hosts' gateway address, each node's spool, pid and log files carry its name
(slurm.conf's %n), and processes are tracked by their parent (proctrack/linuxproc: two slurmds on one kernel would
share one cgroup tree). Each node offers one CPU, the machine's share.
"""

from __future__ import annotations

import socket
from pathlib import Path

from local_slurm import SCHEDULING, LocalSlurm, _which, free_port
from netns_hosts import Hosts


class TwoNodeSlurm(LocalSlurm):
    def __init__(self, root: Path, hosts: Hosts) -> None:
        super().__init__(root)
        self.hosts = hosts
        self.node = hosts.hostname(0)

    def _spawn_slurmds(self) -> None:
        for i in range(self.hosts.n):
            name = self.hosts.hostname(i)
            command = [_which("slurmd"), "-D", "-f", str(self.conf), "-N", name]
            self.procs.append(self.hosts.popen(i, command, log=self.root / f"slurmd-{name}.out", env=self.env()))

    def _write_config(self, auth: str) -> None:
        for sub in ("state", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        for i in range(self.hosts.n):
            (self.root / f"spool-{self.hosts.hostname(i)}").mkdir(exist_ok=True)
        self.proctrack = "proctrack/linuxproc"
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        nodes = "\n".join(
            f"NodeName={self.hosts.hostname(i)} NodeAddr={self.hosts.address(i)} CPUs=1 Boards=1 SocketsPerBoard=1 "
            f"CoresPerSocket=1 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
            for i in range(self.hosts.n)
        )
        self.conf.write_text(f"""\
ClusterName=loomtwonodes
SlurmctldHost={socket.gethostname()}({self.hosts.gateway})
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
{auth}StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool-%n"}
SlurmctldPidFile={self.root / "slurmctld.pid"}
SlurmdPidFile={self.root / "slurmd-%n.pid"}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd-%n.log"}
ProctrackType=proctrack/linuxproc
{SCHEDULING}{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
