"""One sshd "host": its config, its sshd process, its reaper, its network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _netns, _reaper, _util
from ._reaper import Proc
from ._util import (
    MAX_PORT_TRIES,
    START_TIMEOUT,
    STOP_TIMEOUT,
    HarnessError,
    SshdStartError,
    SshdUnavailable,
)

if TYPE_CHECKING:
    from .harness import SshCluster

log = logging.getLogger("xqute_ssh.testing")


class _ReaperPipe:
    """The harness's end of a host's reaper: line requests with a deadline."""

    def __init__(self, argv: list[str], stderr_path: Path) -> None:
        with open(stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # a Ctrl-C meant for pytest must not hit it
            )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float) -> str:
        """Next line from the reaper; '' on EOF or when ``timeout`` runs out."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def request(self, line: str, timeout: float = 10.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(os.fsencode(line) + b"\n")
        self.proc.stdin.flush()
        return self.read_line(timeout)

    def hang_up(self) -> None:
        """EOF makes the reaper kill what is left under it and exit."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self) -> None:
        """Hang up and wait for the reaper to exit (SIGKILL it if it hangs)."""
        self.hang_up()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_KBD_NAMES = frozenset({"kbdinteractiveauthentication", "challengeresponseauthentication"})


class _Bind(Exception):
    """sshd could not bind its port (someone took it): pick another one."""


class SshdHost:
    """One sshd "host".  Made by :class:`SshCluster`; do not build it yourself.

    Attributes:
        name: ``host1``, ``host2``, ...
        address: its own ``127.0.0.x``, or its veth address with netns.
        port: chosen by the harness (22 inside a network namespace); fixed for
            the host's life, restarts included.
        dir: where its sshd_config, host key, pid file and log live.
    """

    def __init__(
        self, cluster: SshCluster, index: int, address: str, link: _netns.VethLink | None
    ) -> None:
        self.name = f"host{index}"
        self.address = address
        self.port = 22 if link else 0
        self.dir = cluster.base_dir / self.name
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.config_file = self.dir / "sshd_config"
        self.log_file = self.dir / "sshd.log"
        self.pid_file = self.dir / "sshd.pid"
        self._cluster = cluster
        self._link = link
        self._reaper: _ReaperPipe | None = None
        self._sshd_pid: int | None = None
        self._ever_started = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------ identity
    @property
    def user(self) -> str:
        """The login user: whoever runs the harness (sshd runs as them too)."""
        return self._cluster.user

    @property
    def client_key(self) -> Path:
        return self._cluster.client_key

    @property
    def known_hosts(self) -> Path:
        return self._cluster.known_hosts

    @property
    def host_key_pub(self) -> str:
        """The host's public key line (``ssh-ed25519 AAAA... comment``)."""
        return self.host_key.with_suffix(".pub").read_text().strip()

    @property
    def spec_string(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        """This host's known_hosts entry (bare address when on port 22)."""
        where = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{where} {' '.join(self.host_key_pub.split()[:2])}"

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect(**opts)``, host key checked."""
        return {
            "host": self.address,
            "port": self.port,
            "username": self.user,
            "client_keys": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
        }

    def server_spec(self) -> dict[str, Any]:
        """This host as an entry of the scheduler's ``servers`` option."""
        return {
            "host": self.address,
            "port": self.port,
            "user": self.user,
            "keyfile": str(self.client_key),
            "known_hosts": str(self.known_hosts),
        }

    def log_text(self) -> str:
        """Everything sshd logged so far (LogLevel VERBOSE), restarts included."""
        return self._log_since(0)

    def _log_since(self, offset: int) -> str:
        # byte offsets; sshd ends its log lines with \r\n
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return ""
        return data.decode(errors="replace").replace("\r\n", "\n")

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<SshdHost {self.name} {self.spec_string} {state}>"

    # ------------------------------------------------------------ processes
    def is_running(self) -> bool:
        """True while the listening sshd is alive."""
        pid, reaper = self._sshd_pid, self._reaper
        if pid is None or reaper is None:
            return False
        p = _reaper.read_proc(pid)
        return p is not None and p.alive and p.ppid == reaper.pid

    def pids(self) -> list[int]:
        """Every live process of this host: sshd, its connections, and all
        that logins started, detached jobs included (they stay under the
        host's reaper whatever they do)."""
        return sorted(self._members(_reaper.snapshot()))

    def job_pids(self) -> list[int]:
        """:meth:`pids` without sshd's own processes: what the users run."""
        procs = _reaper.snapshot()
        return sorted(p for p in self._members(procs) if procs[p].comm != "sshd")

    def _members(self, procs: dict[int, Proc]) -> set[int]:
        if self._reaper is None:
            return set()
        return {p for p in _reaper.descendants(procs, self._reaper.pid) if procs[p].alive}

    def _sshd_processes(self, procs: dict[int, Proc]) -> set[int]:
        """The listener and every per-connection sshd process."""
        return {p for p in self._members(procs) if procs[p].comm == "sshd"}

    def _kill(self, pick: Callable[[dict[int, Proc]], Iterable[int]]) -> None:
        killed = _reaper.freeze_and_kill(pick)
        left = _reaper.wait_gone(killed, STOP_TIMEOUT)
        if left:
            log.warning("%s: processes survived SIGKILL: %s", self.name, sorted(left))

    def stop(self) -> None:
        """Kill sshd and EVERY process of this host: connections, sessions,
        detached jobs.  The host's namespaces and private dirs stay (a powered
        off machine keeps its disk); :meth:`start` brings sshd back."""
        with self._lock:
            if self._reaper is not None:
                self._kill(self._members)
            self._sshd_pid = None
            log.debug("%s stopped", self.name)

    def start(self) -> None:
        """Start sshd (no-op if running) on the same address, port and key."""
        with self._lock:
            if self._reaper is None:
                raise HarnessError(f"{self.name}: its cluster is not started")
            if not self.is_running():
                self._start_sshd()

    def restart(self, kill_sessions: bool = False, *, keep_connections: bool = False) -> None:
        """Restart sshd on the same address, port and host key.

        Default (as after a crash of the SSH server): sshd dies, the listener
        and every per-connection process, so clients see their connections
        drop.  What logins started lives on as on a real host whose sshd
        crashed: a session's processes lose the pipes to their client
        (reading gets EOF, writing gets SIGPIPE) but get no signal, so
        detached jobs keep running.

        ``kill_sessions=True``: :meth:`stop` then :meth:`start`; nothing the
        host ran survives.  ``keep_connections=True``: only the listener
        restarts, as ``systemctl restart ssh`` does; open connections carry on.
        """
        with self._lock:
            if kill_sessions:
                self.stop()
            elif self._reaper is not None:
                listener = {self._sshd_pid} if self._sshd_pid else set()
                if keep_connections:
                    self._kill(lambda procs: listener & self._members(procs))
                else:
                    self._kill(self._sshd_processes)
                self._sshd_pid = None
            self.start()

    def kill_sshd(self) -> None:
        """Kill sshd (the listener and every connection) and leave it down,
        as after a crash nobody restarted yet; what logins started lives on.
        :meth:`start` brings sshd back."""
        with self._lock:
            if self._reaper is not None:
                self._kill(self._sshd_processes)
            self._sshd_pid = None

    async def astart(self) -> None:
        """:meth:`start` in a thread, for async tests."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a thread, for async tests."""
        await asyncio.to_thread(self.stop)

    async def arestart(
        self, kill_sessions: bool = False, *, keep_connections: bool = False
    ) -> None:
        """:meth:`restart` in a thread, for async tests."""
        await asyncio.to_thread(self.restart, kill_sessions, keep_connections=keep_connections)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        input: str | None = None,
        timeout: float | None = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` locally, inside this host's namespaces, as its user.

        Shows the files and network that sessions on the host see (its
        private dirs, its netns) without going through SSH.  Works while
        sshd is stopped too.
        """
        prefix: list[str] = []
        if self._cluster.private_dirs or self._link:
            if self._reaper is None:
                raise HarnessError(f"{self.name}: its cluster is not started")
            prefix = [
                _util.tool("nsenter", "util-linux"),
                f"--target={self._reaper.pid}",
                "--mount",
            ]
            if self._link:
                prefix.append("--net")
        return subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=timeout,
        )

    # ------------------------------------------------------------ network
    def cut_network(self) -> None:
        """Silently drop every packet between controller and host (netns only).

        Open TCP connections stay half-open, as when a cable is pulled: no
        RST, no FIN; only timeouts and keepalives notice.
        """
        self._veth("cut")

    def restore_network(self) -> None:
        """Undo :meth:`cut_network`; returns once the link passes traffic."""
        self._veth("restore")

    def _veth(self, action: str) -> None:
        if self._link is None:
            raise HarnessError(f"{self.name} has no network namespace; use SshCluster(netns=True)")
        try:
            getattr(self._link, action)()
        except _netns.NetnsError as exc:
            raise HarnessError(f"{self.name}: {exc}") from exc
        log.debug("%s network %s", self.name, action)

    # ------------------------------------------------------------ setup
    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _util.keygen(self.host_key, f"xqute-ssh-test {self.name}")

    def _launch_reaper(self) -> None:
        argv = [sys.executable, "-I", "-S", _reaper.__file__, *map(str, self._cluster.private_dirs)]
        if self._cluster.private_dirs:
            argv = [
                _util.tool("unshare", "util-linux"),
                "--mount",
                "--propagation",
                "private",
                *argv,
            ]
        if self._link:
            argv = [_util.tool("ip", "iproute2"), "netns", "exec", self._link.netns, *argv]
        self._reaper = _ReaperPipe(argv, self.dir / "reaper.log")

    def _await_reaper(self) -> None:
        assert self._reaper is not None
        line = self._reaper.read_line(START_TIMEOUT)
        if line != "ready":
            err = (self.dir / "reaper.log").read_text(errors="replace").strip()
            raise SshdUnavailable(
                f"{self.name}: cannot set up the host's namespaces: {line or 'no answer'} {err}"
            )

    def _write_config(self) -> None:
        defaults = [
            ("ListenAddress", f"{self.address}:{self.port}"),
            ("HostKey", str(self.host_key)),
            ("PidFile", str(self.pid_file)),
            ("AuthorizedKeysFile", str(self._cluster.authorized_keys)),
            ("AllowUsers", self.user),
            ("PubkeyAuthentication", "yes"),
            ("PasswordAuthentication", "no"),
            # the old name: OpenSSH < 8.7 rejects the new one, later ones take both
            ("ChallengeResponseAuthentication", "no"),
            ("PermitRootLogin", "prohibit-password"),
            ("StrictModes", "no"),  # base_dir is under /tmp
            ("UsePAM", "no"),
            ("LogLevel", "VERBOSE"),
            ("PrintMotd", "no"),
            ("PrintLastLog", "no"),
            ("Subsystem", "sftp internal-sftp"),
            # Tests kill logins mid-way (host stops, restarts); a login killed
            # inside pyenv's rc-file rehash leaves its lock behind and every
            # later login then waits 60 s for it.  Harmless elsewhere.
            ("SetEnv", "PYENV_REHASH_TIMEOUT=1"),
        ]
        self._config_lines(defaults)

    def _config_lines(self, defaults: list[tuple[str, str]]) -> None:
        """Write sshd_config: ``defaults`` unless the user set the keyword, then theirs."""
        user_lines = list(self._cluster.sshd_config)
        overridden = set()
        for line in user_lines:
            if _util.keyword(line) == "match":
                break  # keywords inside Match blocks do not replace defaults
            overridden.add(_util.keyword(line))
        if overridden & _KBD_NAMES:  # one option, two names
            overridden |= _KBD_NAMES
        text = ["# written by xqute_ssh.testing; user lines come last (Match blocks)"]
        text += [f"{k} {v}" for k, v in defaults if k.lower() not in overridden]
        text += user_lines
        self.config_file.write_text("\n".join(text) + "\n")

    def _spawn_sshd(self) -> int:
        """Ask the reaper to start sshd; returns the log offset to watch from."""
        assert self._reaper is not None
        if not self.port:
            self.port = _util.free_port(self.address)
        self._write_config()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        argv = [self._cluster.sshd, "-D", "-f", str(self.config_file), "-E", str(self.log_file)]
        reply = self._reaper.request("\0".join(["spawn", str(self.log_file), *argv]))
        if not reply.startswith("pid "):
            raise SshdStartError(f"{self.name}: cannot start sshd: {reply or 'reaper gone'}")
        self._sshd_pid = int(reply.split()[1])
        return offset

    def _await_sshd(self, offset: int) -> None:
        """Wait until sshd listens; raise _Bind when its port was taken."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            pid = self._sshd_pid
            if pid is not None and _util.is_listening(pid, self.address, self.port):
                self._ever_started = True
                log.debug("%s listening on %s", self.name, self.spec_string)
                return
            if not self.is_running():
                self._sshd_pid = None
                text = self._log_since(offset)
                if "Address already in use" in text or "Cannot bind any address" in text:
                    raise _Bind(text)
                raise SshdStartError(f"{self.name}: sshd exited at start:\n{_util.tail(text)}")
            if time.monotonic() > deadline:
                self.stop()
                why = f"sshd not listening after {START_TIMEOUT:.0f}s"
                raise SshdStartError(f"{self.name}: {why}:\n{_util.tail(self._log_since(offset))}")
            time.sleep(0.005)

    def _start_sshd(self, offset: int | None = None) -> None:
        """Spawn (unless ``offset`` says it was) and wait; new port on a lost race."""
        for attempt in range(MAX_PORT_TRIES):
            if offset is None:
                offset = self._spawn_sshd()
            try:
                self._await_sshd(offset)
                return
            except _Bind as exc:
                if self._ever_started or self._link or attempt == MAX_PORT_TRIES - 1:
                    raise SshdStartError(
                        f"{self.name}: port {self.port} is taken:\n{_util.tail(str(exc))}"
                    ) from None
                log.debug("%s: port %d taken, picking another", self.name, self.port)
                self.port, offset = 0, None

    def _close(self) -> None:
        with self._lock:
            self.stop()
            if self._reaper is not None:
                self._reaper.close()
                self._reaper = None
