"""Real OpenSSH ``sshd`` hosts on loopback, for tests of code that uses SSH.

A :class:`SshCluster` starts ``n`` sshd processes, each a "host" with its own
address (``127.0.0.2``, ``127.0.0.3``, ... or, with ``netns=True``, its own
network namespace), a fresh host key, and one throwaway client key that all of
them accept.  Host keys are always verifiable: every host hands out a
known_hosts file, so tests never need ``known_hosts=None``.

Each host runs under its own tiny init process (see ``_reaper``): the host's
namespaces live as long as it does, and every process a login starts stays
under it, even after ``setsid``.  That is what lets :meth:`SshdHost.stop` leave
nothing behind and :meth:`SshdHost.pids` see everything.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import pwd
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

from . import _docker, _netns, _util
from . import container as _container
from ._util import (
    LOOPBACK_PREFIX,
    RESERVED_KEYWORDS,
    HarnessError,
    SshdStartError,
    SshdUnavailable,
    sshd_path,
)
from .container import ContainerHost
from .host import SshdHost
from .images import HostImage, ensure_image

__all__ = [
    "ContainerHost",
    "HarnessError",
    "SshCluster",
    "SshdHost",
    "SshdStartError",
    "SshdUnavailable",
    "sshd_path",
]

log = logging.getLogger("xqute_ssh.testing")


class SshCluster:
    """``n`` sshd hosts sharing one client key and one known_hosts file.

    Args:
        base_dir: where keys, configs and logs go (created if missing).
        n: number of hosts.
        sshd_config: extra sshd_config lines for every host, e.g.
            ``("MaxSessions 2",)``.  A keyword given here replaces the
            harness's default for it; ListenAddress, Port, HostKey and
            PidFile are the harness's own.
        private_dirs: directories (created if missing) that each host sees
            as its own empty tmpfs, so files are not shared with the
            controller or other hosts.  Root only.
        netns: give each host its own network namespace and a veth link
            that :meth:`SshdHost.cut_network` can cut.  Root only.
        container: run each host's SSH server in its own Docker container
            of this image (``"openssh-bookworm"``, ``"openssh-bullseye"``,
            ``"openssh-trixie"``, ``"dropbear-bookworm"``,
            ``"openssh-bookworm-nobash"``; see :mod:`.images`), built if
            missing.  Hosts are then :class:`ContainerHost`: own filesystem,
            processes and users (login ``tester``), on the host network.

    Use as ``with``/``async with`` or call :meth:`start` and :meth:`stop`.
    :meth:`stop` is idempotent and also runs at interpreter exit.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        n: int = 2,
        *,
        sshd_config: Sequence[str] = (),
        private_dirs: Sequence[str | os.PathLike[str]] = (),
        netns: bool = False,
        container: str | None = None,
    ) -> None:
        if not 1 <= n <= 250:
            raise HarnessError(f"n must be between 1 and 250, not {n}")
        if isinstance(sshd_config, str):
            raise HarnessError("sshd_config is a sequence of lines, not one string")
        for line in sshd_config:
            if _util.keyword(line) in RESERVED_KEYWORDS:
                raise HarnessError(f"sshd_config may not set {line.split()[0]}: the harness does")
        self.base_dir = Path(base_dir).resolve()
        self.n = n
        self.sshd_config = tuple(sshd_config)
        self.private_dirs = tuple(Path(d).resolve() for d in private_dirs)
        self.netns = netns
        self.image = HostImage.parse(container) if container else None
        if self.image is not None:
            if self.private_dirs or netns:
                raise HarnessError(
                    "container hosts have their own filesystem and no veth: "
                    "private_dirs and netns are for process hosts"
                )
            if self.sshd_config and self.image.server != "openssh":
                raise HarnessError(
                    f"sshd_config lines apply to OpenSSH only, not to {self.image.name}"
                )
        self.sshd = sshd_path() if self.image is None else ""
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.client_key = self.base_dir / "client_ed25519_key"
        self.authorized_keys = self.base_dir / "authorized_keys"
        self.known_hosts = self.base_dir / "known_hosts"
        self.hosts: list[SshdHost] = []
        self._links: list[_netns.VethLink] = []
        self._token = secrets.token_hex(3)  # names this cluster's netns and veths
        self._started = False
        self._lock = threading.RLock()
        root = os.geteuid() == 0
        if (self.private_dirs or netns) and not root:
            what = "private_dirs" if self.private_dirs else "netns"
            raise SshdUnavailable(f"{what} needs root (mount and network namespaces)")
        for d in self.private_dirs:
            if d == Path("/") or self.base_dir.is_relative_to(d):
                raise HarnessError(f"private dir {d} would hide base_dir {self.base_dir}")

    def __repr__(self) -> str:
        running = sum(h.is_running() for h in self.hosts)
        extra = (" netns" if self.netns else "") + (" private_dirs" if self.private_dirs else "")
        extra += f" {self.image.name} containers" if self.image else ""
        return f"<SshCluster {self.n} hosts, {running} running{extra} {self.base_dir}>"

    def start(self) -> None:
        """Make keys and namespaces, start every sshd, write known_hosts.

        sshds start in parallel; returns when all listen.  On failure,
        everything started so far is torn down before the error propagates.
        """
        with self._lock:
            if self._started:
                return
            self._started = True
            _track(self)
            t0 = time.monotonic()
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
            log.debug("%r started in %.3fs", self, time.monotonic() - t0)

    def _start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.image is not None:
            self._start_containers(self.image)
            return
        if os.geteuid() == 0:  # sshd's privilege separation chroot
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for d in self.private_dirs:
            d.mkdir(parents=True, exist_ok=True)
        _util.keygen(self.client_key, "xqute-ssh-test client")
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        if self.netns:
            _util.tool("ip", "iproute2")
            try:
                self._links = _netns.create_links(self._token, self.n)
            except _netns.NetnsError as exc:
                raise SshdUnavailable(f"cannot create network namespaces: {exc}") from exc
            self.hosts = [
                SshdHost(self, i + 1, ln.host_addr, ln) for i, ln in enumerate(self._links)
            ]
        else:
            self.hosts = [
                SshdHost(self, i + 1, f"{LOOPBACK_PREFIX}{i + 2}", None) for i in range(self.n)
            ]
        # each stage runs for all hosts before the next, so the waits overlap
        for h in self.hosts:
            h._prepare()
        for h in self.hosts:
            h._launch_reaper()
        for h in self.hosts:
            h._await_reaper()
        offsets = [h._spawn_sshd() for h in self.hosts]
        for h, offset in zip(self.hosts, offsets, strict=True):
            h._start_sshd(offset)
        self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts))

    def _start_containers(self, image: HostImage) -> None:
        _docker.check_daemon()
        _container.remove_orphans()
        tag = ensure_image(image)
        log.debug("image %s ready", tag)
        _util.keygen(self.client_key, "xqute-ssh-test client")
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        hosts = [
            ContainerHost(self, i + 1, f"{LOOPBACK_PREFIX}{i + 2}", image) for i in range(self.n)
        ]
        self.hosts = list(hosts)
        for h in hosts:
            h._prepare()
        with ThreadPoolExecutor(max_workers=min(8, self.n)) as pool:
            list(pool.map(lambda h: h._create(), hosts))  # docker run: ~0.3 s each
            list(pool.map(lambda h: h._start_server(), hosts))
        self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts))

    def stop(self) -> None:
        """Kill every process of every host, remove namespaces.  Idempotent."""
        with self._lock:
            if not self._started:
                return
            if self.image is not None:
                self._stop_containers()
                return
            for h in self.hosts:  # kill first, then all reapers exit together
                try:
                    h.stop()
                    if h._reaper is not None:
                        h._reaper.hang_up()
                except Exception:
                    log.exception("stopping %s", h.name)
            for h in self.hosts:
                h._close()
            _netns.delete_links(self._token, self._links)
            self._links = []
            self._started = False
            _live.discard(self)
            log.debug("%r stopped", self)

    def _stop_containers(self) -> None:
        hosts = [h for h in self.hosts if isinstance(h, ContainerHost)]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(hosts)))) as pool:
            list(pool.map(lambda h: h._close(), hosts))
        self._started = False
        _live.discard(self)
        log.debug("%r stopped", self)

    async def astart(self) -> None:
        """:meth:`start` in a thread, for async code."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a thread, for async code."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            await self.astart()
        except BaseException:  # cancelled mid-start: the thread holds the lock until done
            await asyncio.shield(self.astop())
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.astop())


# clusters still running, stopped at interpreter exit as a last resort (strong
# references: a forgotten cluster must still lose its namespaces at exit)
_live: set[SshCluster] = set()
_atexit_done = False


def _track(cluster: SshCluster) -> None:
    global _atexit_done
    _live.add(cluster)
    if not _atexit_done:
        atexit.register(_stop_all)
        _atexit_done = True


def _stop_all() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.stop()
