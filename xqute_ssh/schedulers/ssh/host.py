"""One SSH server as the backend uses it: its pool, probe and paths.

Where the workdir is on the host is decided lazily, from the workdir of the
first job that uses the host, not at construction: pipen sets each process's
workdir after the scheduler was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from pathlib import PurePosixPath

import asyncssh

from ... import fileio
from ...errors import SshError
from ...path import SpecPath
from ...ssh import CommandResult, HostPool
from . import remote, unshared
from .events import EndEvents
from .launcher import LaunchBatcher
from .options import ServerSpec

logger = logging.getLogger("xqute_ssh")

#: Bound on the clean-up round trip when a host's pool is closed.
FLUSH_WAIT = 5.0
#: How long the first launches to a host wait for its end-event relay.
EVENTS_WAIT = 1.0


class SshHost:
    """A server's pool, capabilities and paths (I/O lives here)."""

    def __init__(
        self,
        spec: ServerSpec,
        on_connect: Callable[[BaseException | None], None] | None = None,
        on_end: Callable[[int], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self._on_connect = on_connect
        self.pool = HostPool(spec.config, on_connect=on_connect)
        self.probe: remote.ProbeResult | None = None
        self._probe_lock = asyncio.Lock()
        #: Why this host cannot run jobs at all (found once by the probe).
        self.unusable: SshError | None = None
        #: Whether this host sees the workdir (decided once, at first use).
        self.shared: bool | None = spec.shared_fs if spec.shared_fs != "auto" else None
        #: Where jobs run on a host without the workdir.
        self.remote_root: PurePosixPath | None = None
        #: Fetched remote job directories to delete on the next round trip.
        self.pending_rm: list[str] = []
        #: workdir -> the workdir as this host sees it (see mounted()).
        self._mounted_roots: dict[str, str] = {}
        #: Launches over the control session, batched under load.
        self.launches = LaunchBatcher(self.run_launch, self.label)
        #: The end-event relay (events.py); None when nobody listens.
        self.events: EndEvents | None = (
            EndEvents(self.label, on_end, self.run, self._listen) if on_end else None
        )

    def __repr__(self) -> str:
        shared = {None: "unprobed", True: "shared", False: "unshared"}[self.shared]
        return f"<SshHost {self.name} {shared} {self.pool!r}>"

    @property
    def label(self) -> str:
        return self.spec.config.label

    def host_workdir(self, workdir: SpecPath) -> PurePosixPath:
        """The workdir as this host sees it (its own mounted_workdir first)."""
        mounted = self.spec.mounted_workdir
        return PurePosixPath(mounted) if mounted else PurePosixPath(str(workdir.mounted))

    def mounted(self, workdir: SpecPath, path: SpecPath) -> str:
        """``path`` (under ``workdir``) as this host sees it."""
        base, full = str(workdir.path), str(path.path)
        if full.startswith(base + "/"):  # the usual case: plain string work
            # Several paths per launch: the workdir's side is worked out once.
            root = self._mounted_roots.get(base)
            if root is None:
                root = self._mounted_roots[base] = str(self.host_workdir(workdir)).rstrip("/")
            return f"{root}/{full[len(base) + 1 :]}"
        rel = PurePosixPath(full).relative_to(base)
        return str(self.host_workdir(workdir) / rel)

    def job_dir(self, index: int) -> str:
        """The remote job directory (hosts without the workdir)."""
        assert self.remote_root is not None
        return str(self.remote_root / str(index))

    async def run(self, snippet: str, timeout: float | None = None) -> CommandResult:
        return await self.pool.run(snippet, timeout=timeout)

    async def run_launch(self, snippet: str) -> CommandResult:
        """A launch: what it says on stderr (a redirection that failed, say)
        comes back in its stdout, where the launch's error names it; one
        packet per reply (see ssh/control.py)."""
        return await self.pool.run(snippet, merge_stderr=True)

    async def _listen(
        self, factory: Callable[[str, int], asyncssh.SSHTCPSession[bytes]]
    ) -> asyncssh.SSHListener:
        return await self.pool.listen_loopback(factory)

    def events_fifo(self) -> str | None:
        """Where a job launched now reports its end (None: polling only)."""
        return self.events.fifo_for_launch() if self.events is not None else None

    def open_connections(self) -> int:
        s = self.pool.stats()
        return s.connections + s.connecting

    async def close(self, flush: bool = True) -> None:
        """Close the pool; a later use opens a fresh one.  With ``flush``,
        fetched remote job directories are removed first (bounded wait)."""
        if self.events is not None:
            await self.events.close(remote=flush)
            self.events = EndEvents(self.label, self.events.on_end, self.run, self._listen)
        if self.pending_rm and flush:
            remove, self.pending_rm = self.pending_rm, []
            with contextlib.suppress(SshError, TimeoutError):
                async with asyncio.timeout(FLUSH_WAIT):
                    await self.run(unshared.read_statuses([], remove))
        old, self.pool = self.pool, HostPool(self.spec.config, on_connect=self._on_connect)
        await old.close()

    async def ensure_ready(self, workdir: SpecPath) -> None:
        """Check once per host that it can run jobs (bash >= 4.3, setsid),
        and find out whether it sees the workdir."""
        if self.probe is not None:
            return
        async with self._probe_lock:
            if self.probe is not None:
                return
            if self.unusable is not None:
                raise self.unusable
            result = await self.run(remote.PROBE)
            probe = remote.ProbeResult.parse(result.stdout)
            if not probe.has_bash:
                raise SshError(
                    self.label,
                    "bash was not found on PATH; xqute_ssh runs every job "
                    "through bash (4.3 or newer): install it on this host",
                )
            if not probe.has_setsid:
                raise SshError(
                    self.label,
                    "setsid was not found on PATH (util-linux); it is needed to "
                    "start jobs detached: install util-linux on this host",
                )
            if probe.bash_version is not None and probe.bash_version < (4, 3):
                raise SshError(
                    self.label,
                    f"bash {probe.bash_version[0]}.{probe.bash_version[1]} is too "
                    "old; xqute_ssh needs bash 4.3 or newer",
                )
            if self.shared is True:
                try:
                    await self.check_shared_writable(workdir)
                except SshError as exc:
                    self.unusable = exc  # said once; not probed again
                    raise
            if self.shared is None:
                self.shared = await self._sees_workdir(workdir)
                logger.info(
                    "%s %s the workdir: %s",
                    self.label,
                    "sees" if self.shared else "does not see",
                    "jobs use it directly"
                    if self.shared
                    else "jobs run in a remote directory, files are fetched back",
                )
            if not self.shared:
                root = self.spec.remote_workdir
                if root and root.startswith("~/"):
                    root = str(PurePosixPath(probe.home) / root[2:])
                self.remote_root = (
                    PurePosixPath(root)
                    if root
                    else unshared.default_remote_workdir(probe.home, str(workdir.path))
                )
            self.probe = probe
            logger.info("%s ready (bash %s)", self.label, probe.bash_version)
            if self.events is not None:
                # Usually up in a few ms; the first jobs should not miss it,
                # but a host where it hangs must not hold them back either.
                self.events.kick()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(EVENTS_WAIT):
                        await self.events.started()

    async def _sees_workdir(self, workdir: SpecPath) -> bool:
        """Does this host see the workdir, and can it write there?

        We write a random token locally and the host reads it at the mounted
        path; the host writes another one back, which we must read here.  A
        workdir the host sees but cannot write (mounted read-only, say) is
        reported once, with the host's own error, and the host runs its jobs
        in a remote directory instead (or, with ``shared_fs=True``, is not
        used)."""
        token, answer = secrets.token_hex(16), secrets.token_hex(16)
        name = f".xqute-fs-check-{token[:12]}"
        local, back = workdir / name, workdir / f"{name}.reply"
        host_workdir = self.host_workdir(workdir)
        await fileio.write_text(local, token + "\n")
        try:
            reply = await self.run(
                unshared.fs_token_check(
                    str(host_workdir / name), str(host_workdir / back.name), answer
                )
            )
            seen, write_error = unshared.parse_token_check(reply.stdout)
            written = (await fileio.read_text(back) or "").strip()
        finally:
            await fileio.unlink_many([local, back])
        if seen != token:
            return False
        if write_error is None and written == answer:
            return True
        cause = write_error or "what it wrote did not arrive in the workdir"
        logger.warning(
            "%s sees the workdir %s but cannot write to it (%s): its jobs run in "
            "a remote directory instead and their files are fetched back",
            self.label, host_workdir, cause,
        )
        return False

    async def check_shared_writable(self, workdir: SpecPath) -> None:
        """``shared_fs=True``: the workdir must be writable from here."""
        if not await self._sees_workdir(workdir):
            raise SshError(
                self.label,
                f"shared_fs=True, but this host cannot see or write the workdir "
                f"at {self.host_workdir(workdir)} (see the warning above); fix "
                "the mount or set shared_fs='auto'",
            )
