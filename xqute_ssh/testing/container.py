"""One SSH host in its own container: own filesystem, process table and users.

The container runs with ``--network host`` (no bridge, no published port);
its server listens on the host's own ``127.0.0.x`` address and port.  The
harness mounts the host's directory (keys, sshd_config) read-only at /xq and
drives the server through ``docker exec <container> xq-host ...`` (see
containers/xq-host), so stop, restart and process listings mean the same as
for process hosts, counted in the container's own PID namespace.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _util
from ._docker import docker, docker_bin
from ._util import MAX_PORT_TRIES, HarnessError, SshdStartError
from .host import SshdHost
from .images import HostImage

if TYPE_CHECKING:
    from .harness import SshCluster

log = logging.getLogger("xqute_ssh.testing")

LOGIN_USER = "tester"
OWNER_LABEL = "org.xqute-ssh.owner"  # pid of the harness that made the container
SERVER_COMMS = frozenset({"sshd", "sshd-session", "sshd-auth", "dropbear"})


class ContainerHost(SshdHost):
    """An :class:`SshdHost` whose server runs in a container of ``image``.

    Same members as a process host; differences: the login user is
    ``tester`` (the container's own), :meth:`pids` are pids in the
    container's PID namespace, :meth:`run` runs inside the container, and
    there is no network to cut.
    """

    def __init__(self, cluster: SshCluster, index: int, address: str, image: HostImage) -> None:
        super().__init__(cluster, index, address, None)
        self.image = image
        self.container = f"xqute-ssh-{cluster._token}-{self.name}"
        self._created = False

    @property
    def user(self) -> str:
        return LOGIN_USER

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ContainerHost {self.name} {self.image.name} {self.spec_string} {state}>"

    # ------------------------------------------------------------ docker exec
    def _xq(self, *args: str, timeout: float = 30) -> str:
        if not self._created:
            raise HarnessError(f"{self.name}: its cluster is not started")
        argv = ["exec", self.container, "/bin/sh", "/usr/local/sbin/xq-host", *args]
        return docker(argv, timeout=timeout).stdout

    def is_running(self) -> bool:
        return self._created and self._xq("running").strip() == "yes"

    def _processes(self) -> dict[int, str]:
        out = self._xq("pids") if self._created else ""
        return {int(p): c for p, _, c in (ln.partition(" ") for ln in out.splitlines()) if p}

    def pids(self) -> list[int]:
        """Every live process in the container but its init and keeper."""
        return sorted(self._processes())

    def job_pids(self) -> list[int]:
        return sorted(p for p, c in self._processes().items() if c not in SERVER_COMMS)

    def log_text(self) -> str:
        if not self._created:
            return ""
        done = docker(["exec", self.container, "cat", "/var/log/xq-server.log"], check=False)
        return done.stdout.replace("\r\n", "\n")

    # ------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Kill the server and every process in the container; its files stay."""
        with self._lock:
            if self._created:
                self._xq("kill", "all")
            log.debug("%s stopped", self.name)

    def start(self) -> None:
        with self._lock:
            if not self._created:
                raise HarnessError(f"{self.name}: its cluster is not started")
            if not self.is_running():
                self._start_server()

    def restart(self, kill_sessions: bool = False, *, keep_connections: bool = False) -> None:
        """As :meth:`SshdHost.restart`, counting the container's processes."""
        with self._lock:
            if kill_sessions:
                self._xq("kill", "all")
            elif keep_connections:
                self._xq("kill", "listener")
            else:
                self._xq("kill", "server")
            self._start_server()

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        input: str | None = None,
        timeout: float | None = 30,
        as_root: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container as the login user (or root), from
        the login user's home: the files and processes the host's logins see."""
        if not self._created:
            raise HarnessError(f"{self.name}: its cluster is not started")
        user = "root" if as_root else LOGIN_USER
        cmd = [docker_bin(), "exec", "-i", "-u", user, "-w", f"/home/{LOGIN_USER}"]
        return subprocess.run(
            [*cmd, self.container, *argv],
            capture_output=True,
            text=True,
            check=check,
            input=input if input is not None else "",
            timeout=timeout,
        )

    def _veth(self, action: str) -> None:
        raise HarnessError(
            f"{self.name} is a container host on the host network: it has no link to cut; "
            "use a process cluster with netns=True"
        )

    # ------------------------------------------------------------ setup
    def _prepare(self) -> None:
        super()._prepare()
        os.chmod(self.dir, 0o755)  # the container's root reads it through the mount
        pub = self._cluster.client_key.with_suffix(".pub").read_text()
        (self.dir / "authorized_keys").write_text(pub)

    def _create(self) -> None:
        """``docker run`` the container (its server is not started yet)."""
        docker(
            [
                "run",
                "--detach",
                "--init",  # docker's init reaps orphans at once, as a host's init does
                "--network",
                "host",
                "--name",
                self.container,
                "--label",
                f"{OWNER_LABEL}={os.getpid()}",
                "--volume",
                f"{self.dir}:/xq:ro",
                self.image.tag,
            ],
            timeout=120,
        )
        self._created = True

    def _write_config(self) -> None:
        if self.image.server != "openssh":
            return  # dropbear takes its options on the command line (xq-host)
        defaults = [
            ("ListenAddress", f"{self.address}:{self.port}"),
            ("HostKey", "/xq/ssh_host_ed25519_key"),
            ("PidFile", "/run/xq/sshd.pid"),
            ("AllowUsers", LOGIN_USER),
            ("PubkeyAuthentication", "yes"),
            ("PasswordAuthentication", "no"),
            # OpenSSH < 8.7 knows only this name; later ones take it as an alias
            ("ChallengeResponseAuthentication", "no"),
            ("PermitRootLogin", "no"),
            ("StrictModes", "no"),
            ("UsePAM", "no"),
            ("LogLevel", "VERBOSE"),
            ("PrintMotd", "no"),
            ("PrintLastLog", "no"),
            ("Subsystem", "sftp internal-sftp"),
        ]
        self._config_lines(defaults)

    def _start_server(self) -> None:
        """Start the server; on a lost port race pick another port (first start only)."""
        for attempt in range(MAX_PORT_TRIES):
            if not self.port:
                self.port = _util.free_port(self.address)
            self._write_config()
            reply = self._xq("start", self.address, str(self.port)).strip()
            first, _, rest = reply.partition("\n")
            if first.startswith("listening "):
                self._ever_started = True
                log.debug("%s listening on %s", self.name, self.spec_string)
                return
            if first == "bind" and not self._ever_started and attempt < MAX_PORT_TRIES - 1:
                self.port = 0
                continue
            raise SshdStartError(f"{self.name} ({self.image.name}): server did not start:\n{rest}")

    def _close(self) -> None:
        with self._lock:
            if self._created:
                docker(["rm", "--force", self.container], check=False, timeout=60)
                self._created = False


def remove_orphans() -> None:
    """Remove test host containers whose harness process is gone (SIGKILLed)."""
    done = docker(
        [
            "ps",
            "--all",
            "--filter",
            f"label={OWNER_LABEL}",
            "--format",
            f'{{{{.Names}}}} {{{{.Label "{OWNER_LABEL}"}}}}',
        ],
        check=False,
    )
    dead = []
    for line in done.stdout.splitlines():
        name, _, owner = line.partition(" ")
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            dead.append(name)
    if dead:
        log.debug("removing containers of dead harnesses: %s", dead)
        docker(["rm", "--force", *dead], check=False, timeout=120)
