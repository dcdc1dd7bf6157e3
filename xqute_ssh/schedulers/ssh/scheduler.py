"""SshScheduler: run, track and kill jobs across SSH hosts.

* Placement: the host with the most free slots (``forks`` per server),
  among the hosts known to answer (:mod:`~xqute_ssh.ssh.health`): a host
  that fails to connect is out of placement at once and probed in the
  background with backoff until it answers again.
* Launch: one round trip over the host's control session starts the wrapper
  detached (``setsid``, stdin /dev/null, output to files) and returns its pid
  and start time; the job id is ``<server>:<pid>:<starttime>``, so a reused
  pid never makes an ended job look alive.
* Tracking: the wrapper writes the job's files, which the controller reads
  on the shared filesystem; liveness of all active jobs of a host is checked
  with one round trip per host.
* Kill: TERM to the job's process group, KILL after ``kill_grace`` (the
  escalation runs on the host, so it happens even if we die).
* Restart: a job id on disk whose process still runs is re-attached, never
  started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import shlex
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from ... import fileio, staging
from ...attempt import AttemptRecord
from ...errors import (
    ConfigError,
    JobSubmissionError,
    SftpUnavailable,
    SshConnectError,
    SshConnectionLost,
    SshError,
    SshPoolClosed,
    SshTimeoutError,
)
from ...job import Job
from ...path import SpecPath
from ...scheduler import Scheduler
from ...ssh import CommandResult, HostPool
from ...ssh.config import DEFAULT_KNOWN_HOSTS
from ...ssh.health import (
    HOST_COOLDOWN,
    PROBE_BACKOFF,
    PROBE_MAX_INTERVAL,
    HostHealth,
)
from ...status import JobStatus
from ...wrapper import render
from . import remote, unshared
from .fencing import Fence, Verdict
from .options import CONNECTION_KEYS, ServerSpec, parse_servers
from .placement import HostSlots, Placement
from .watch import HostWatch

logger = logging.getLogger("xqute_ssh")

#: How long to look for a job that may have started when the connection
#: dropped while we were starting it (the wrapper writes job.pid at once).
LAUNCH_ADOPT_WAIT = 3.0
#: On a stop, how long to wait for the reply of a launch already sent (the
#: job may have started: its id is needed to kill it).
LAUNCH_STOP_WAIT = 3.0
#: Bound on each round trip of a kill, so a stop never waits on a dead host.
KILL_ROUND_TRIP = 5.0


def parse_jid(jid: str | None) -> tuple[str, int, int] | None:
    """``server:pid:starttime`` -> (server, pid, starttime); None if malformed."""
    if not jid:
        return None
    parts = jid.rsplit(":", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


class _Host:
    """A server's pool, capabilities and paths (I/O lives here)."""

    def __init__(
        self,
        spec: ServerSpec,
        workdir: SpecPath,
        on_connect: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.pool = HostPool(spec.config, on_connect=on_connect)
        mounted = spec.mounted_workdir
        self.workdir = (
            PurePosixPath(mounted) if mounted else PurePosixPath(str(workdir.mounted))
        )
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

    def job_dir(self, index: int) -> str:
        """The remote job directory (hosts without the workdir)."""
        assert self.remote_root is not None
        return str(self.remote_root / str(index))

    @property
    def label(self) -> str:
        return self.spec.config.label

    def mounted(self, workdir: SpecPath, path: SpecPath) -> str:
        """``path`` (under the workdir) as this host sees it."""
        base, full = str(workdir.path), str(path.path)
        if full.startswith(base + "/"):  # the usual case: plain string work
            return f"{str(self.workdir).rstrip('/')}/{full[len(base) + 1 :]}"
        rel = PurePosixPath(full).relative_to(base)
        return str(self.workdir / rel)

    async def run(self, snippet: str, timeout: float | None = None) -> CommandResult:
        return await self.pool.run(snippet, timeout=timeout)

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
        await fileio.write_text(local, token + "\n")
        try:
            reply = await self.run(
                unshared.fs_token_check(
                    str(self.workdir / name), str(self.workdir / back.name), answer
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
            self.label, self.workdir, cause,
        )
        return False

    async def check_shared_writable(self, workdir: SpecPath) -> None:
        """``shared_fs=True``: the workdir must be writable from here."""
        if not await self._sees_workdir(workdir):
            raise SshError(
                self.label,
                f"shared_fs=True, but this host cannot see or write the workdir "
                f"at {self.workdir} (see the warning above); fix the mount or "
                "set shared_fs='auto'",
            )


class SshScheduler(Scheduler):
    """Run jobs on SSH hosts that share the workdir's filesystem.

    Args (besides the base Scheduler's):
        servers: ``{name: {host, port, user, keyfile, password, known_hosts,
            config, proxy_jump, forks, max_sessions, mounted_workdir,
            shared_fs, ...}}`` or a list of ``"[user@]host[:port]"``.
        host_cooldown: seconds from a host's failure to its first background
            probe (it takes no jobs meanwhile).
        probe_backoff: each failed probe multiplies the wait before the next.
        probe_max_interval: the longest wait between two probes.
        lost_after: seconds a host may stay unreachable before the jobs that
            were running there are given up (see ``fencing.py`` and
            docs/reliability.md: a job whose attempt may still be alive is
            never started elsewhere); also how long an outage of every host
            is waited out before the jobs not started fail.
        Any server option at this level is a default for every server.
    """

    name = "ssh"

    def __init__(
        self,
        *args: Any,
        servers: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None = None,
        host_cooldown: float = HOST_COOLDOWN,
        probe_backoff: float = PROBE_BACKOFF,
        probe_max_interval: float = PROBE_MAX_INTERVAL,
        lost_after: float = 30.0,
        **kwargs: Any,
    ) -> None:
        server_defaults = {
            k: kwargs.pop(k)
            for k in list(kwargs)
            if k in CONNECTION_KEYS | {"shared_fs"}
        }
        if "forks_per_server" in kwargs:
            server_defaults["forks"] = kwargs.pop("forks_per_server")
        super().__init__(*args, **kwargs)
        server_defaults.setdefault("known_hosts", DEFAULT_KNOWN_HOSTS)
        self.servers = parse_servers(servers, server_defaults)
        if self.workdir.is_cloud:
            # No host mounts a bucket: jobs run in remote job directories and
            # their files are copied into the cloud workdir as they end.
            for i, spec in enumerate(self.servers):
                if spec.shared_fs is True:
                    raise ConfigError(
                        f"server {spec.name!r}: shared_fs=True, but the workdir "
                        f"{self.workdir} is in cloud storage"
                    )
                self.servers[i] = dataclasses.replace(spec, shared_fs=False)
        for name, value in (
            ("host_cooldown", host_cooldown),
            ("probe_max_interval", probe_max_interval),
        ):
            if not float(value) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
        if not float(probe_backoff) >= 1:
            raise ConfigError(f"probe_backoff must be >= 1, got {probe_backoff!r}")
        self.hosts: dict[str, _Host] = {
            s.name: _Host(
                s, self.workdir, functools.partial(self._connected, s.name)
            )
            for s in self.servers
        }
        self.placement = Placement(
            HostSlots(s.name, s.forks or self.forks) for s in self.servers
        )
        self.health = HostHealth(
            self.hosts,
            cooldown=float(host_cooldown),
            backoff=float(probe_backoff),
            max_interval=float(probe_max_interval),
            labels={
                n: h.label if n == h.label else f"{n} ({h.label})"
                for n, h in self.hosts.items()
            },
        )
        self.watch = HostWatch(
            self.health, self._probe_host, self.workdir, lambda: self._slot_freed.set()
        )
        self.lost_after = lost_after
        # A job can only run where a slot is; never admit more than all hosts hold.
        if self.forks > self.placement.capacity:
            logger.warning(
                "forks=%d is more than the servers' slots together (%d): "
                "at most %d jobs will run at once",
                self.forks, self.placement.capacity, self.placement.capacity,
            )
            self.forks = self.placement.capacity
        self._slot_freed = asyncio.Event()
        self._hopeless_said = False
        self._unreachable_since: dict[str, float] = {}
        self._reported_alive: set[str] = set()
        self.fence = Fence(lost_after)

    def __repr__(self) -> str:
        hosts = ", ".join(self.hosts)
        return (
            f"<SshScheduler [{hosts}] workdir={str(self.workdir)!r} forks={self.forks}>"
        )

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.watch.close()

        async def flush(host: _Host) -> None:
            if host.pending_rm and self.health.usable(host.name):
                remove, host.pending_rm = host.pending_rm, []
                with contextlib.suppress(SshError, TimeoutError):
                    async with asyncio.timeout(KILL_ROUND_TRIP):
                        await host.run(unshared.read_statuses([], remove))

        await asyncio.gather(
            *(flush(h) for h in self.hosts.values()), return_exceptions=True
        )
        await asyncio.gather(
            *(h.pool.close() for h in self.hosts.values()), return_exceptions=True
        )

    def _connected(self, name: str, exc: BaseException | None) -> None:
        self.watch.connected(name, exc)

    async def _probe_host(self, name: str) -> None:
        """One probe (for the HostWatch): readiness once, then a round trip."""
        host = self.hosts[name]
        if host.probe is None:
            await host.ensure_ready(self.workdir)
        else:
            # A fresh login, not a round trip over a connection that outlived
            # the listener (that would call the host back while connects fail).
            await host.pool.try_connect()

    # ------------------------------------------------------------ placement
    async def _reserve(self, job: Job, avoid: set[str]) -> _Host:
        """A host that answers, with a free slot; waits while there is none.

        Raises CancelledError once the run stops, JobSubmissionError when
        every host is down for good (the message names each host and why).
        """
        self.watch.start()
        while True:
            if self.stopping:
                raise asyncio.CancelledError
            slots = self.placement.pick(
                job.index, avoid=avoid, among=self.health.usable_names()
            )
            if slots is not None:
                return self.hosts[slots.name]
            reason = self.health.hopeless(self.lost_after)
            if reason is not None:
                if not self._hopeless_said:
                    self._hopeless_said = True
                    logger.error(
                        "%s; the jobs not started yet fail", reason
                    )
                err = JobSubmissionError(f"no host could start the job: {reason}")
                err.reported = True
                raise err
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._slot_freed.wait()

    def _release(self, job: Job, ok: bool | None = None) -> None:
        self.placement.release(job.extra.get("host"), job.index, ok)
        self._slot_freed.set()

    async def transition_job_status(
        self,
        job: Job,
        new_status: JobStatus,
        rc: str | int | None = None,
        error_msg: str | None = None,
        is_killed: bool = False,
        *,
        persist: bool = False,
    ) -> None:
        await super().transition_job_status(
            job, new_status, rc, error_msg, is_killed, persist=persist
        )
        if JobStatus(new_status).is_terminal:
            self._release(job, ok=JobStatus(new_status) == JobStatus.FINISHED)

    # --------------------------------------------------------------- submit
    def _render_for(self, job: Job, host: _Host) -> str:
        spec = self.wrapper_spec(job)
        old_job_dir = spec.job_metadir
        if host.shared:
            spec.metadir = str(host.workdir)
            spec.job_metadir = host.mounted(self.workdir, job.metadir)
        else:
            spec.metadir = str(host.remote_root)
            spec.job_metadir = host.job_dir(job.index)
        if spec.cwd == old_job_dir:  # staging jobs run in their job dir
            spec.cwd = spec.job_metadir
        if host.shared:
            spec.heartbeat = self.fence.heartbeat_interval
        return render(spec)

    async def _stage_in(self, job: Job, host: _Host) -> None:
        """Shared host: copy locally.  Otherwise: SFTP into the job dir."""
        if not job.stage_in:
            return
        if host.shared:
            await self.stage_job_in(job)
            return
        job_dir = host.job_dir(job.index)
        await host.pool.run_checked(f"umask 077; mkdir -p -- {shlex.quote(job_dir)}")
        try:
            async with host.pool.connection() as conn, _sftp(conn, host.label) as sftp:
                for item in job.stage_in:
                    dest = staging.remote_path(job_dir, item.dest)
                    parent = str(PurePosixPath(dest).parent)
                    await sftp.makedirs(parent, exist_ok=True)
                    await sftp.put(str(item.source), dest, recurse=True, preserve=True)
        except SftpUnavailable as exc:
            raise JobSubmissionError(f"stage_in failed: {exc}") from None
        except (OSError, asyncssh.Error) as exc:
            raise JobSubmissionError(
                f"{host.label}: stage_in failed: {_sftp_hint(exc)}"
            ) from exc

    async def _stage_out_remote(self, job: Job, host: _Host, job_dir: str) -> list[str]:
        errors = []
        try:
            async with host.pool.connection() as conn, _sftp(conn, host.label) as sftp:
                for item in job.stage_out:
                    src = staging.remote_path(job_dir, item.source)
                    dst = staging.local_target(item, Path(str(job.metadir.path)))
                    await asyncio.to_thread(
                        dst.parent.mkdir, parents=True, exist_ok=True
                    )
                    if not await sftp.exists(src):
                        errors.append(f"stage_out: {item.source!r} was not produced")
                        continue
                    await sftp.get(src, str(dst), recurse=True, preserve=True)
        except (OSError, asyncssh.Error, SshError) as exc:
            errors.append(f"stage_out from {host.label} failed: {_sftp_hint(exc)}")
        return errors

    async def stage_job_out(self, job: Job) -> list[str]:
        host = self._unshared_host(job)
        if host is None:
            return await super().stage_job_out(job)
        return job.extra.pop("stage_out_errors", [])

    def _launch_request(self, job: Job, host: _Host, text: str) -> str:
        script = job.wrapped_script_file(self.name)
        if host.shared:
            return remote.launch(
                host.mounted(self.workdir, script),
                host.mounted(self.workdir, job.stdout_file),
                host.mounted(self.workdir, job.stderr_file),
            )
        return unshared.launch(host.job_dir(job.index), text)

    async def submit_job(self, job: Job) -> str:
        avoid: set[str] = set(job.extra.get("failed_hosts", ()))
        lost_once: set[str] = set()
        while True:
            host = await self._reserve(job, avoid)
            job.extra["host"] = host.name
            try:
                await host.ensure_ready(self.workdir)
                await self._stage_in(job, host)
                script = job.wrapped_script_file(self.name)
                text = self._render_for(job, host)
                # On a host without the workdir this local copy is for reading
                # only; the script travels inside the launch request.  The
                # job id "<server>:" says where the job goes before it exists:
                # if we die before its pid is recorded, a restart finds it.
                await fileio.to_thread(_write_script_and_jid, job, script, text, host.name)
                if self.stopping:
                    raise asyncio.CancelledError
                reply = await self._launch(job, host, self._launch_request(job, host, text))
            except SshPoolClosed:
                self.placement.release(host.name, job.index)
                raise  # shutting down: no other host will do either
            except SshError as exc:
                self.placement.release(host.name, job.index)
                adopted = await self._adopt_after_lost_launch(job, host, exc)
                if adopted is not None:
                    return adopted
                if isinstance(exc, SshConnectionLost) and host.name not in lost_once:
                    # The connection dropped under us (sshd restarted, say):
                    # the pool reconnects; try this host once more first.
                    lost_once.add(host.name)
                    logger.info("job %s: %s; trying %s again", job.index, exc, host.name)
                    continue
                # Unreachable or unusable: the host is out of placement (one
                # warning, from the health) and the job goes elsewhere.
                logger.debug("job %s: %s; trying another host", job.index, exc)
                self.watch.failed(host.name, exc)
                continue
            except BaseException:
                self.placement.release(host.name, job.index)
                raise
            launched = remote.parse_launch(reply.stdout)
            if isinstance(launched, str):
                self.placement.release(host.name, job.index)
                if launched == "noscript":
                    raise JobSubmissionError(
                        f"{host.label}: the job script "
                        f"{host.mounted(self.workdir, script)} is not visible on "
                        "this host; the workdir must be on a filesystem the host "
                        "shares (set mounted_workdir if it is mounted elsewhere)"
                    )
                raise JobSubmissionError(
                    f"{host.label}: could not start the job: {launched} "
                    f"{reply.stderr.strip()}".strip()
                )
            return f"{host.name}:{launched.pid}:{launched.starttime}"

    async def _launch(self, job: Job, host: _Host, request: str) -> CommandResult:
        """Send the launch request; if the run stops meanwhile, still learn
        the job's id (it may have started) so that the stop can kill it."""
        task = asyncio.ensure_future(host.run(request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            reply: CommandResult | None = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LAUNCH_STOP_WAIT):
                    reply = await task
            if not task.done():
                task.cancel()
            launched = remote.parse_launch(reply.stdout) if reply is not None else None
            if launched is not None and not isinstance(launched, str):
                jid = f"{host.name}:{launched.pid}:{launched.starttime}"
                with contextlib.suppress(OSError):
                    await job.set_jid(jid)
            raise

    async def _adopt_after_lost_launch(
        self, job: Job, host: _Host, exc: SshError
    ) -> str | None:
        """The connection dropped while starting the job: did it start?

        The wrapper writes job.pid ("pid starttime") first thing; if it
        appears, the job runs and is adopted instead of being started twice.
        """
        if not exc.retryable or host.probe is None:
            return None  # probe not done: the launch was never sent
        pid_file = job.metadir / "job.pid"
        remote_pid = "" if host.shared else shlex.quote(host.job_dir(job.index) + "/job.pid")
        deadline = time.monotonic() + LAUNCH_ADOPT_WAIT
        while time.monotonic() < deadline:
            if host.shared:
                text = await fileio.read_text(pid_file)
            else:  # a host without the workdir: ask it (the pool reconnects)
                try:
                    text = (await host.run(f"cat -- {remote_pid} 2>/dev/null")).stdout
                except SshError:
                    text = None
            if text and len(text.split()) == 2:
                pid, start = text.split()
                self.placement.hold(host.name, job.index)
                logger.warning(
                    "job %s: connection lost while starting it, but it started "
                    "(pid %s on %s): adopted",
                    job.index,
                    pid,
                    host.name,
                )
                return f"{host.name}:{pid}:{start}"
            await asyncio.sleep(0.1)
        return None

    def launch_may_be_in_flight(self, job: Job, record: AttemptRecord) -> bool:
        # "<server>:" is written just before the launch request goes out.
        return bool(record.jid and record.jid.endswith(":") and not record.started)

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        if jid and jid.endswith(":") and jid[:-1] in self.hosts:
            host = self.hosts[jid[:-1]]
            text: str | None
            try:
                await host.ensure_ready(self.workdir)
                if host.shared:
                    text = await fileio.read_text(job.metadir / "job.pid")
                else:
                    reply = await host.run(
                        f"cat -- {shlex.quote(host.job_dir(job.index) + '/job.pid')}"
                        " 2>/dev/null"
                    )
                    text = reply.stdout
            except SshError:
                text = None
            parts = (text or "").split()
            jid = f"{host.name}:{parts[0]}:{parts[1]}" if len(parts) >= 2 else None
        return await super().recover_jid(job, jid)

    async def ended_unobserved(self, job: Job) -> JobStatus | None:
        parsed = parse_jid(job.jid)
        host = self.hosts.get(parsed[0]) if parsed else None
        if host is None or host.shared is not False:
            return await super().ended_unobserved(job)
        job_dir = host.job_dir(job.index)
        reply = await host.run(
            f"[ -e {shlex.quote(job_dir + '/job.pid')} ] && "
            f"cat -- {shlex.quote(job_dir + '/job.status')} 2>/dev/null"
        )
        status = JobStatus.parse(reply.stdout)
        if status is None or not status.is_terminal:
            return None
        job.extra["host"] = host.name
        return status if await self._fetch(job, host) else None

    async def job_is_submitted_or_running(self, job: Job) -> bool:
        running = await super().job_is_submitted_or_running(job)
        if running:
            parsed = parse_jid(job.jid)
            if parsed is not None:
                job.extra["host"] = parsed[0]
                self.placement.hold(parsed[0], job.index)
        return running

    async def retry_job(self, job: Job) -> None:
        failed = set(job.extra.get("failed_hosts", ()))
        if job.extra.get("host"):
            failed.add(job.extra["host"])
        job.extra["failed_hosts"] = failed
        await super().retry_job(job)

    # ------------------------------------------------------------ liveness
    async def job_is_running(self, job: Job) -> bool:
        parsed = parse_jid(await job.get_jid())
        if parsed is None or parsed[0] not in self.hosts:
            return False
        name, pid, start = parsed
        host = self.hosts[name]
        await host.ensure_ready(self.workdir)  # re-attach needs its paths
        reply = await host.run(remote.dead_among([(pid, start)]))
        return pid not in remote.parse_pids(reply.stdout)

    # --------------------------------------------- hosts without the workdir
    def _unshared_host(self, job: Job) -> _Host | None:
        host = self.hosts.get(job.extra.get("host") or "")
        return host if host is not None and host.shared is False else None

    async def refresh_job_statuses(self, jobs: Sequence[Job]) -> list[JobStatus | None]:
        """Shared hosts: the local files.  Others: one round trip per host,
        and a job that ended has its files fetched before it is reported."""
        result: list[JobStatus | None] = [None] * len(jobs)
        local: list[int] = []
        by_host: dict[str, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            host = self._unshared_host(job)
            if host is None:
                local.append(i)
            else:
                by_host[host.name].append(i)
        if local:
            read = await super().refresh_job_statuses([jobs[i] for i in local])
            for i, status in zip(local, read, strict=True):
                result[i] = status

        async def poll(host: _Host, idxs: list[int]) -> None:
            remove, host.pending_rm = host.pending_rm, []
            try:
                reply = await host.run(
                    unshared.read_statuses(
                        [(jobs[i].index, host.job_dir(jobs[i].index)) for i in idxs],
                        remove,
                    )
                )
            except SshError as exc:
                host.pending_rm[:0] = remove
                logger.debug("%s: cannot read statuses: %s", host.label, exc)
                return
            parsed = unshared.parse_statuses(reply.stdout)

            async def one(i: int) -> None:
                job = jobs[i]
                status = JobStatus.parse(parsed.get(job.index, ""))
                if status is None:
                    return
                if status.is_terminal:
                    if not await self._fetch(job, host):
                        return  # try again next cycle
                elif status == JobStatus.RUNNING and job.status == JobStatus.SUBMITTED:
                    await fileio.write_text(job.status_file, f"{int(status)}\n")
                result[i] = status

            await asyncio.gather(*(one(i) for i in idxs))

        if by_host:
            async with asyncio.TaskGroup() as tg:
                for name, idxs in by_host.items():
                    tg.create_task(poll(self.hosts[name], idxs))
        return result

    async def _fetch(self, job: Job, host: _Host) -> bool:
        """Bring rc, stdout, stderr and the status home; False if not possible."""
        job_dir = host.job_dir(job.index)
        snippet, mark = unshared.fetch_small(job_dir)
        fetched: unshared.Fetched | None = None
        try:
            reply = await host.run(snippet)
            fetched = unshared.parse_fetch(reply.stdout, mark)
            if fetched is None:
                return False
            if fetched.stdout is None or fetched.stderr is None:
                await self._stream_outputs(job, host, job_dir)
            else:
                await fileio.to_thread(
                    _write_outputs, job, fetched.stdout, fetched.stderr
                )
        except (SshError, OSError, asyncssh.Error) as exc:
            logger.warning(
                "job %s: cannot fetch its files from %s: %s", job.index, host.label, exc
            )
            return False
        if fetched.rc.strip() == "0" and job.stage_out:
            # Before the remote directory is scheduled for removal.
            job.extra["stage_out_errors"] = await self._stage_out_remote(
                job, host, job_dir
            )
        status = await fileio.to_thread(_write_end, job, fetched.rc)
        # Fetched: remove the directory (or at least job.pid, which would
        # otherwise say "ended with nobody watching" to a later controller).
        host.pending_rm.append(job_dir + "/job.pid" if host.spec.keep_remote else job_dir)
        return status

    async def _stream_outputs(self, job: Job, host: _Host, job_dir: str) -> None:
        """Large outputs: copied in chunks straight into the local files,
        never whole in memory (a cloud workdir: into a temporary file first,
        then uploaded).  No SFTP, so hosts without an SFTP subsystem work
        too."""
        for name, dest in (
            ("job.stdout", job.stdout_file),
            ("job.stderr", job.stderr_file),
        ):
            src = f"{job_dir}/{name}"
            if not dest.is_cloud:
                await self._cat_into(host, src, Path(str(dest.path)))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / name
                await self._cat_into(host, src, local)
                await fileio.to_thread(fileio.upload_sync, local, dest)

    async def _cat_into(self, host: _Host, src: str, dest: Path) -> None:
        """Copy a remote file into ``dest``, one chunk per round trip over
        the control session (``unshared.read_chunk``): memory stays bounded
        by the chunk, and neither SFTP nor another channel is needed.

        (asyncssh's exec-channel streams were tried first: under a slow
        reader their receive buffer grew without bound, ~50 MB for 100 MB.)
        """
        out = await fileio.to_thread(open, dest, "wb")
        try:
            offset = 0
            while True:
                snippet, mark = unshared.read_chunk(src, offset)
                reply = await host.run(snippet)
                data = unshared.parse_chunk(reply.stdout, mark)
                if data is None:
                    raise SshError(
                        host.label, f"could not read {src} at byte {offset}"
                    )
                if data:
                    await fileio.to_thread(out.write, data)
                offset += len(data)
                if len(data) < unshared.CHUNK:
                    return
        finally:
            await fileio.to_thread(out.close)

    async def jobs_fail_before_running(self, jobs: Sequence[Job]) -> list[bool]:
        """One round trip per host for all of its active jobs."""
        by_host: dict[str, list[tuple[int, Job, int, int]]] = defaultdict(list)
        result = [False] * len(jobs)
        for i, job in enumerate(jobs):
            parsed = parse_jid(job.jid)
            if parsed is None or parsed[0] not in self.hosts:
                result[i] = True
                job.extra["lost_reason"] = f"its job id {job.jid!r} names no known host"
                continue
            by_host[parsed[0]].append((i, job, parsed[1], parsed[2]))

        async def check(name: str, items: list[tuple[int, Job, int, int]]) -> None:
            host = self.hosts[name]
            try:
                self._raise_if_cut_off(host)
                reply = await host.run(
                    remote.dead_among([(pid, start) for _, _, pid, start in items])
                )
            except SshError as exc:
                await self._fence_unreachable(host, items, result, exc)
                return
            if self._unreachable_since.pop(name, None) is not None:
                logger.warning("%s answers again", host.label)
            for _, job, _, _ in items:
                self.fence.forget(job.index)
            dead = remote.parse_pids(reply.stdout)
            for i, job, pid, _ in items:
                if pid in dead:
                    result[i] = True
                    job.extra["lost_reason"] = (
                        f"the job's process (pid {pid}) on {host.label} is gone "
                        "but it never wrote a final status (killed from outside, "
                        "out of memory, or the host rebooted)"
                    )

        async with asyncio.TaskGroup() as tg:
            for name, items in by_host.items():
                tg.create_task(check(name, items))
        return result

    async def _fence_unreachable(
        self,
        host: _Host,
        items: list[tuple[int, Job, int, int]],
        result: list[bool],
        exc: SshError,
    ) -> None:
        """Jobs of a host that did not answer: which may be given up now
        (fencing.py says why a job is never started elsewhere while its
        attempt may be alive)."""
        now = time.monotonic()
        since = self._unreachable_since.setdefault(host.name, now)
        away = now - since
        beats = (
            await fileio.to_thread(_heartbeats, [j for _, j, _, _ in items])
            if host.shared
            else {}
        )
        waiting_alive = 0
        for i, job, _, _ in items:
            verdict = self.fence.verdict(job.index, beats.get(job.index), away, now)
            if verdict == Verdict.WAIT:
                if away >= self.lost_after:
                    waiting_alive += 1
                continue
            result[i] = True
            self.fence.forget(job.index)
            if verdict == Verdict.DEAD:
                job.extra["lost_reason"] = (
                    f"host {host.label} has been unreachable for {away:.0f}s "
                    f"({exc}) and the job's heartbeat has not changed for "
                    f"{self.fence.lease:.0f}s: taken as dead"
                )
            else:
                job.extra["fenced"] = (
                    f"its attempt may still run on {host.label}, unreachable for "
                    f"{away:.0f}s"
                )
                job.extra["lost_reason"] = (
                    f"host {host.label} has been unreachable for {away:.0f}s "
                    f"({exc}); the job is given up, but its attempt may still run "
                    "there, so it is not started elsewhere and its files are left "
                    "for a later run on this workdir to settle"
                )
        if waiting_alive and host.name not in self._reported_alive:
            self._reported_alive.add(host.name)
            logger.warning(
                "%s has been unreachable for %.0fs, but the heartbeats of %d of its "
                "jobs go on: waiting for them", host.label, away, waiting_alive,
            )

    def _raise_if_cut_off(self, host: _Host, more: str = "") -> None:
        """A host that is down with no connection open: say so at once
        rather than wait for a connect (a stop or a poll cycle must not)."""
        rec = self.health.health_of(host.name)
        if rec.is_down and host.pool.stats().connections == 0:
            raise SshConnectError(host.label, f"the host is down ({rec.reason}){more}")

    # ----------------------------------------------------------------- kill
    async def kill_job_and_update_status(self, job: Job) -> None:
        host = self._unshared_host(job)
        if host is not None:
            job.extra["fetch_after_kill"] = host.name
        await super().kill_job_and_update_status(job)

    async def kill_job(self, job: Job) -> None:
        parsed = parse_jid(job.jid or await job.get_jid())
        if parsed is None or parsed[0] not in self.hosts:
            return
        name, pid, start = parsed
        host = self.hosts[name]
        self._raise_if_cut_off(host, f"; job {job.index} (pid {pid}) may still run there")
        try:
            async with asyncio.timeout(KILL_ROUND_TRIP):
                reply = await host.run(remote.kill_group(pid, start, self.kill_grace))
        except TimeoutError:
            raise SshTimeoutError(
                host.label, f"no answer to the kill within {KILL_ROUND_TRIP:g}s"
            ) from None
        if "xq-killing" not in reply.stdout:
            return
        # The host escalates to KILL by itself; wait until the group is gone
        # (a remote process exit sends us nothing, so ask a few times).
        deadline = time.monotonic() + self.kill_grace + 5
        while time.monotonic() < deadline:
            check = await host.run(remote.group_alive(pid), timeout=KILL_ROUND_TRIP)
            if "gone" in check.stdout:
                if job.extra.pop("fetch_after_kill", None) and host.shared is False:
                    await self._fetch(job, host)  # what it wrote before dying
                return
            await asyncio.sleep(0.1)
        logger.warning("job %s: its processes on %s outlived the kill", job.index, name)


@contextlib.asynccontextmanager
async def _sftp(
    conn: asyncssh.SSHClientConnection, label: str
) -> AsyncIterator[asyncssh.SFTPClient]:
    """An SFTP client; SftpUnavailable when the server has no SFTP subsystem.

    A server without one (Dropbear lacking sftp-server, sshd without
    ``Subsystem sftp``) accepts the channel and then closes it, which asyncssh
    reports as an SFTPError while the connection itself stays open.
    """
    try:
        client = await conn.start_sftp_client()
    except asyncssh.sftp.SFTPError as exc:
        if conn.is_closed():
            raise
        raise SftpUnavailable(
            label,
            f"it has no SFTP server ({exc}); install one (Debian: openssh-sftp-server) "
            "or enable 'Subsystem sftp' in its sshd_config",
        ) from None
    async with client:
        yield client


def _sftp_hint(exc: BaseException) -> str:
    """An SFTP failure, saying what to do when the subsystem is missing."""
    if isinstance(exc, asyncssh.ChannelOpenError | asyncssh.ProcessError) or (
        "subsystem" in str(exc).lower() or "session request failed" in str(exc).lower()
    ):
        return (
            f"{exc}: staging files to or from a host without the workdir needs "
            "the host's SFTP subsystem ('Subsystem sftp ...' in its sshd_config), "
            "which it does not seem to offer; enable it, or run the job on a "
            "host that shares the workdir"
        )
    return str(exc)


def _heartbeats(jobs: Sequence[Job]) -> dict[int, int]:
    """The mtime of each job's job.pid (shared workdir): the heartbeat its
    wrapper touches.

    Blocking but cheap (a stat per job of a host that stopped answering,
    once per recheck)."""
    out: dict[int, int] = {}
    for job in jobs:
        try:
            out[job.index] = os.stat(str(job.metadir.path / "job.pid")).st_mtime_ns
        except (OSError, TypeError):
            continue
    return out


def _write_outputs(job: Job, stdout: bytes, stderr: bytes) -> None:
    fileio.write_bytes_sync(job.stdout_file, stdout)
    fileio.write_bytes_sync(job.stderr_file, stderr)


def _write_end(job: Job, rc: str) -> bool:
    """Write job.rc and the final status locally (rc first, as the wrapper)."""
    try:
        code = int(rc)
    except ValueError:
        return False
    fileio.write_text_sync(job.rc_file, f"{code}\n")
    status = JobStatus.FINISHED if code == 0 else JobStatus.FAILED
    fileio.write_text_sync(job.status_file, f"{int(status)}\n")
    return True


def _write_script_and_jid(job: Job, script: SpecPath, text: str, host: str) -> None:
    """One worker-thread hop for the two writes before a launch."""
    fileio.write_text_sync(script, text, mode=0o700)
    fileio.write_text_sync(job.jid_file, f"{host}:\n")
    job._jid = f"{host}:"
