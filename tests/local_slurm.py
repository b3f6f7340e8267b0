"""A real single-node Slurm (Debian's 22.05 packages) for the tests, started without systemd.

`LocalSlurm.start()` installs slurmctld/slurmd/slurm-client/munge with apt-get when they are missing, starts a private
`munged` (its own socket in /run/munge, run as the munge user; auth/none if it cannot start), writes a slurm.conf for
this machine (its real CPUs and memory, free TCP ports, state under a temporary directory) and starts `slurmctld` and
`slurmd` in the foreground as child processes. `stop()` ends exactly those processes, by pid. Clients find the cluster
through `SLURM_CONF`, which `env()` adds to a copy of the environment.

The settings that matter, each learnt on these machines: `AuthInfo=cred_expire=10` (a requeued job otherwise
waits 120 s to start again), fast scheduler passes, `DependencyParameters=kill_invalid_depend` (a job whose
dependency failed otherwise pends for ever), `KillWait=5`, `task/none`, `cons_tres` with `CR_Core_Memory` (jobs ask
`--mem` so two fit at once), `proctrack/cgroup` where a writable cgroup-v1 freezer exists, else
`proctrack/linuxproc`. There is no slurmdbd, so no `sacct`: job states come from `scontrol show job`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from cluster.slurm import TERMINAL_STATES, job_records

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged")


# The slurm.conf lines every local cluster shares (the module docstring says why each matters).
SCHEDULING = """\
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
DependencyParameters=kill_invalid_depend
KillWait=5
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
"""


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the local Slurm; the message is the exact reason (tests skip with it)."""


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def ensure_installed() -> None:
    """apt-get install the Slurm and munge packages when a binary is missing (CI runs as root with apt)."""
    if all(_which(b) for b in BINARIES):
        return
    missing = [b for b in BINARIES if not _which(b)]
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"Slurm binaries {missing} are missing and installing them needs root "
            f"(apt-get install {' '.join(PACKAGES)})"
        )
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"Slurm binaries {missing} are missing and apt-get is not available to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # policy-rc.d 101: the packages' maintainer scripts must not start daemons through init (there is none)
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 and "Unable to locate package" in result.stdout + result.stderr:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    finally:
        if added_policy:
            policy.unlink()
    if result.returncode != 0:
        raise RuntimeError(
            f"apt-get install {' '.join(PACKAGES)} failed ({result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cgroup_freezer_writable() -> bool:
    freezer = Path("/sys/fs/cgroup/freezer")
    if not (freezer / "cgroup.procs").exists() or not os.access(freezer, os.W_OK):
        return False
    probe = freezer / f"loom-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


class LocalSlurm:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "etc" / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.munge_socket: Optional[Path] = None
        self.munge_files: list[Path] = []
        self.node = socket.gethostname()

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 60) -> "LocalSlurm":
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local Slurm needs root (slurmd launches jobs as their user; apt-get install)")
        ensure_installed()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            auth = self._start_munge()
            self._write_config(auth)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
            self._spawn_slurmds()
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn_slurmds(self) -> None:
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])

    def _spawn(self, name: str, command: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "w")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env(), **kwargs)
        log.close()
        self.procs.append(proc)
        return proc

    def _start_munge(self) -> str:
        """A private munged (its own socket, pid, log and seed files beside the packaged ones in /run/munge, the
        packaged key) run as the munge user; returns slurm.conf's auth lines. auth/none if munge cannot start."""
        try:
            user = pwd.getpwnam("munge")
        except KeyError:
            user = None
        munged, key = _which("munged"), Path("/etc/munge/munge.key")
        if user is not None and munged and key.exists():
            # /run/munge, not the temporary directory: munged refuses a socket whose directories it cannot
            # traverse or that others may write, and pytest's base temporary directory is private to root.
            directory = Path("/run/munge")
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chown(directory, user.pw_uid, user.pw_gid)
            stem = f"loom-test-{os.getpid()}-{self.root.name}"  # two clusters of one test run: two munged
            self.munge_socket = directory / f"{stem}.socket"
            self.munge_files = [
                directory / f"{stem}{suffix}" for suffix in (".socket", ".socket.lock", ".pid", ".log", ".seed")
            ]
            command = [
                munged,
                "-F",
                f"--socket={self.munge_socket}",
                f"--pid-file={directory / (stem + '.pid')}",
                f"--log-file={directory / (stem + '.log')}",
                f"--seed-file={directory / (stem + '.seed')}",
            ]
            proc = self._spawn("munged", command, user=user.pw_uid, group=user.pw_gid)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None and not self.munge_socket.exists():
                time.sleep(0.05)
            if self.munge_socket.exists():
                return f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket},cred_expire=10\nCredType=cred/munge\n"
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.procs.remove(proc)
        return "AuthType=auth/none\nCredType=cred/none\nAuthInfo=cred_expire=10\n"

    def _write_config(self, auth: str) -> None:
        node_line = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        node_line = node_line.splitlines()[0]
        node_line = re.sub(r"^NodeName=\S+", f"NodeName={self.node}", node_line)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        proctrack = "proctrack/cgroup" if _cgroup_freezer_writable() else "proctrack/linuxproc"
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        if proctrack == "proctrack/cgroup":
            (self.conf.parent / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n")
        self.proctrack = proctrack
        self.conf.write_text(f"""\
ClusterName=loomtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
{auth}StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "slurmctld.pid"}
SlurmdPidFile={self.root / "slurmd.pid"}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd.log"}
ProctrackType={proctrack}
{SCHEDULING}{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{self.logs()}")
            result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            last = result.stdout.strip() + result.stderr.strip()
            if result.returncode == 0 and last.split() and all(s.rstrip("*") == "idle" for s in last.split()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the local Slurm did not become idle within {timeout} s (sinfo: {last!r}):\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.out")) + sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what is left, then end the daemons this object started (newest first), by pid."""
        if any(p.poll() is None for p in self.procs) and self.conf.exists():
            user = pwd.getpwuid(os.getuid()).pw_name
            self.run("scancel", "--full", "-u", user, check=False)
            deadline = time.monotonic() + 20  # let the jobs' processes end before their slurmd does
            while time.monotonic() < deadline:
                queue = self.run("squeue", "-h", "-u", user, "-o", "%i", check=False)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        for path in self.munge_files:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ clients
    def env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env = {k: v for k, v in env.items() if not k.startswith(("SLURM_JOB", "SLURM_ARRAY", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *command: str, check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(command), env=self.env(), capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, StdOut, StartTime, ...)."""
        records = job_records(str(job_id), env=self.env())
        if not records:
            raise AssertionError(f"Slurm does not know job {job_id}")
        return records[0]

    def wait(self, job_id: str, timeout: float, states=TERMINAL_STATES) -> dict[str, str]:
        """Poll until the job reaches one of `states`; returns its fields."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not reach {sorted(states)} within {timeout} s: {info}\n{self.logs()}")
