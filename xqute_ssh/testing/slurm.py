"""A one-node Slurm cluster for tests, next to a loopback sshd login host.

Debian's ``slurm-wlm`` and ``munge`` run here as root.  Everything the
cluster needs lives in one directory: its own ``munged`` (own key, own
socket, started as the ``munge`` user), ``slurm.conf``, state, spool, pid
and log files; ``slurmctld`` and ``slurmd`` run in the foreground (``-D``)
on free loopback ports.  Nothing in /etc is touched, so a second cluster (or
the machine's own Slurm) is never disturbed.

The login host is an :class:`~xqute_ssh.testing.SshCluster` host whose
sshd sets ``SLURM_CONF`` for every login (``SetEnv``), so ``sbatch`` typed
over SSH talks to this cluster.  Accounting: no slurmdbd; the scheduler
reads job states with ``squeue -t all`` (jobs stay listed for
``MinJobAge`` seconds after they end) and the wrapper's own files.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ._util import HarnessError, SshdUnavailable, free_port

INSTALL_HINT = "install Slurm and munge: apt-get install slurm-wlm munge"
START_TIMEOUT = 30.0

_LIVE: set[SlurmCluster] = set()
_LIVE_LOCK = threading.Lock()


def slurm_tools() -> dict[str, str]:
    """Paths of the daemons and commands the harness needs, or SshdUnavailable."""
    found: dict[str, str] = {}
    for name in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol"):
        path = shutil.which(name) or next(
            (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)),
            None,
        )
        if path is None:
            raise SshdUnavailable(f"{name} not found; {INSTALL_HINT}")
        found[name] = path
    if os.geteuid() != 0:
        raise SshdUnavailable("the Slurm test cluster runs its daemons as root")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        raise SshdUnavailable(f"no 'munge' user; {INSTALL_HINT}") from None
    return found


class SlurmCluster:
    """munged + slurmctld + slurmd for one node, all under ``base_dir``.

    Args:
        base_dir: where configuration, state and logs go.
        cpus: CPUs the node offers (jobs that ask for one CPU each run this
            many at once; above the real count slurmd is told to trust us).
        min_job_age: seconds an ended job stays visible to ``squeue``.

    ``env`` is what a client needs (``SLURM_CONF``); :meth:`sshd_lines`
    gives the sshd_config lines that put it into every SSH login.
    """

    def __init__(
        self, base_dir: str | os.PathLike[str], *, cpus: int = 2, min_job_age: int = 300
    ) -> None:
        self.tools = slurm_tools()
        self.dir = Path(base_dir).resolve()
        self.cpus = cpus
        self.min_job_age = min_job_age
        self.hostname = socket.gethostname()
        self.conf = self.dir / "slurm.conf"
        # munged runs as the munge user, who must reach its directory: it
        # lives directly under the system temp dir (test dirs are private);
        # made by start(), removed by stop().
        self.munge_dir = Path(tempfile.gettempdir()) / f"xqute-munge-{secrets.token_hex(6)}"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.partition = "debug"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        alive = [n for n, p in self._procs.items() if p.poll() is None]
        return f"<SlurmCluster {self.dir} running={alive}>"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def sshd_lines(self) -> list[str]:
        """sshd_config lines: every login gets SLURM_CONF (and the harness's
        PYENV_REHASH_TIMEOUT, which a SetEnv line of ours would replace)."""
        return [f"SetEnv PYENV_REHASH_TIMEOUT=1 SLURM_CONF={self.conf}"]

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Write the configuration, start the daemons, wait for an idle node."""
        with self._lock:
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._write_files()
                self._start_munge()
                self.start_ctld()
                self._spawn("slurmd", [self.tools["slurmd"], "-D", "-f", str(self.conf)])
                self.wait_ready()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop every daemon (TERM, then KILL); idempotent."""
        with self._lock:
            for name in ("slurmd", "slurmctld"):
                self._stop_proc(name)
            self._stop_munge()
            # slurmstepd processes of jobs still running would outlive slurmd.
            self._kill_steps()
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def start_ctld(self) -> None:
        """(Re)start slurmctld; jobs keep their state across (StateSaveLocation)."""
        args = [self.tools["slurmctld"], "-D", "-f", str(self.conf)]
        self._spawn("slurmctld", args)

    def ensure_ctld(self) -> None:
        """Start slurmctld if it is not running (a test stopped it)."""
        proc = self._procs.get("slurmctld")
        if proc is None or proc.poll() is not None:
            self.start_ctld()
        self.wait_ready()

    def stop_ctld(self) -> None:
        self._stop_proc("slurmctld")

    def restart_ctld(self) -> None:
        self.stop_ctld()
        self.start_ctld()
        self.wait_ready()

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------- utilities
    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster (locally)."""
        return subprocess.run(
            list(argv),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until sinfo reports the node idle (or mixed/allocated)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise HarnessError(
                        f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}"
                    )
            out = self.run("sinfo", "-h", "-o", "%T", check=False)
            last = (out.stdout + out.stderr).strip()
            if out.returncode == 0 and last.rstrip("*~#") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.2)
        raise HarnessError(
            f"the Slurm node never became ready ({last!r})\n{self.log_tail('slurmctld')}"
        )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.dir / "log" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------ internals
    def _write_files(self) -> None:
        for sub in ("state", "spool", "log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        ctld_port = free_port("127.0.0.1")
        slurmd_port = free_port("127.0.0.1")
        while slurmd_port == ctld_port:
            slurmd_port = free_port("127.0.0.1")
        d = self.dir
        lines = [
            "ClusterName=xqtest",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmUser=root",
            "SlurmdUser=root",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            # Node and job time-outs short enough for tests, long enough for
            # a loaded 2-core machine.
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "KillWait=2",
            # Clients give up on an unreachable slurmctld after about twice
            # this (default 10 s: squeue then takes 18 s to fail).
            "MessageTimeout=3",
            "InactiveLimit=0",
            f"MinJobAge={self.min_job_age}",
            "MaxJobCount=20000",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=defer_batch=0",
            "SlurmdParameters=config_overrides",
            f"NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            "RealMemory=4000 State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.hostname} Default=YES "
            "MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_munge(self) -> None:
        mu = pwd.getpwnam("munge")
        self.munge_dir.mkdir(mode=0o700)
        key = self.munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        for path in (self.munge_dir, key):
            os.chown(path, mu.pw_uid, mu.pw_gid)
        key.chmod(0o400)
        # Clients (root here) must reach the socket; nobody may list the key.
        self.munge_dir.chmod(0o711)
        args = [
            self.tools["munged"],
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.munge_dir / 'munged.pid'}",
            f"--log-file={self.munge_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
        ]

        def demote() -> None:
            os.setgid(mu.pw_gid)
            os.setgroups([])
            os.setuid(mu.pw_uid)

        log = open(self.dir / "log" / "munged.out", "ab")
        try:
            self._procs["munged"] = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                preexec_fn=demote, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.munge_socket.exists():
            if self._procs["munged"].poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "log" / "munged.out").read_text(errors="replace")
                raise HarnessError(f"munged did not start:\n{text[-2000:]}")
            time.sleep(0.05)

    def _stop_munge(self) -> None:
        self._stop_proc("munged")
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        try:
            self._procs[name] = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        finally:
            log.close()

    def _stop_proc(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _kill_steps(self) -> None:
        """KILL slurmstepd processes and job processes of this cluster (their
        environment names our slurm.conf)."""
        marker = str(self.dir).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            ours = marker in environ or marker in cmdline
            if ours and (b"slurmstepd" in cmdline or b"SLURM_JOB_ID=" in environ):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for cluster in live:
        cluster.stop()
