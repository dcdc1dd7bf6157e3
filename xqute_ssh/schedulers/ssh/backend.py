"""The SSH backend: every remote operation on a job, for any scheduler.

Three schedulers drive jobs on SSH hosts: ours (:class:`SshScheduler`),
pipen's (xqute's Scheduler with pipen's Job, see ``xqute_ssh.pipen``) and,
later, others.  They share this one implementation.  It never sees a Job
class: it works on :class:`~xqute_ssh.schedulers.jobref.JobRef` (shared
with the Slurm backend), the few things it needs from a job (index, workdir
and metadir, how to render the wrapper for a host, staged files), and
keeps what it learns about a job (the host it runs on, hosts it failed on)
itself, keyed by job index, since a scheduler's Job may have
``__slots__``.

* Placement: the host with the most free slots (``forks`` per server),
  among the hosts known to answer (:mod:`~xqute_ssh.ssh.health`): a host
  that fails to connect is out of placement at once and probed in the
  background with backoff until it answers again.
* Launch: one round trip over the host's control session starts the wrapper
  detached and returns its pid and start time; the job id is
  ``<server>:<pid>:<starttime>``, so a reused pid never makes an ended job
  look alive.
* Liveness: all active jobs of a host in one round trip.
* Kill: TERM to the job's process group, KILL after ``kill_grace`` (the
  escalation runs on the host, so it happens even if we die).
* Hosts without the workdir: jobs run in a remote job directory; statuses
  are read and ended jobs' files fetched back in one round trip per host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shlex
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import asyncssh

from ... import fileio, staging
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
from ...path import SpecPath
from ...ssh import CommandResult
from ...ssh.health import (
    HOST_COOLDOWN,
    PROBE_BACKOFF,
    PROBE_MAX_INTERVAL,
    HostHealth,
)
from ...status import JobStatus
from ..jobref import JobRef, log_fetch_failure, write_end, write_outputs
from . import remote, unshared
from .fencing import Fence, Verdict
from .host import SshHost
from .options import ServerSpec
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
    parts = str(jid).strip().rsplit(":", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


@dataclass(frozen=True)
class Lost:
    """Why an active job is taken as ended without a final status."""

    reason: str
    #: Set when its attempt may still run on an unreachable host: it must
    #: not be started elsewhere (see fencing.py).
    fenced: str | None = None


@dataclass
class JobState:
    """What the backend knows about a job's current attempt."""

    host: str | None = None
    failed_hosts: set[str] = field(default_factory=set)
    #: A launch cut short by a stop still learnt the job's id: kill it.
    started_jid: str | None = None
    stage_out_errors: list[str] = field(default_factory=list)
    fetch_after_kill: bool = False
    #: The last fetch failure reported (each poll retries; one warning each).
    fetch_error: str | None = None
    #: When the fetches of its ended attempt began to fail (monotonic), if they do.
    fetch_failing_since: float | None = None


class SshBackend:
    """Hosts, placement and per-job state; all SSH I/O on jobs goes here.

    Args:
        servers: the parsed servers.
        forks: slots per server when a server does not say.
        host_cooldown: seconds from a host's failure to its first background
            probe (it takes no jobs meanwhile).
        probe_backoff: each failed probe multiplies the wait before the next.
        probe_max_interval: the longest wait between two probes.
        lost_after: seconds a host may stay unreachable before the jobs that
            were running there are reported lost; also how long an outage of
            every host is waited out before the jobs not started fail.
        kill_grace: seconds between TERM and KILL.
        require_shared: refuse hosts that do not see the workdir (pipen's
            jobs read and write the controller's paths directly).
        stopping: tells whether the run stops (start no new job).
        on_end: told the index of a job whose wrapper says it ended (a hint
            to read its files now; see events.py).  None: no end events.
    """

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        forks: int,
        *,
        host_cooldown: float = HOST_COOLDOWN,
        probe_backoff: float = PROBE_BACKOFF,
        probe_max_interval: float = PROBE_MAX_INTERVAL,
        lost_after: float = 30.0,
        kill_grace: float = 5.0,
        require_shared: bool = False,
        stopping: Callable[[], bool] = lambda: False,
        on_end: Callable[[int], None] | None = None,
    ) -> None:
        for name, value in (
            ("host_cooldown", host_cooldown),
            ("probe_max_interval", probe_max_interval),
        ):
            if not float(value) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
        if not float(probe_backoff) >= 1:
            raise ConfigError(f"probe_backoff must be >= 1, got {probe_backoff!r}")
        self.hosts: dict[str, SshHost] = {
            s.name: SshHost(s, functools.partial(self._connected, s.name), on_end)
            for s in servers
        }
        self.placement = Placement(HostSlots(s.name, s.forks or forks) for s in servers)
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
        #: Made at the first job: it keeps its host file in the workdir,
        #: which pipen only sets after the scheduler was made.
        self.watch: HostWatch | None = None
        self.workdir: SpecPath | None = None
        self.lost_after = lost_after
        self.kill_grace = kill_grace
        self.require_shared = require_shared
        self.stopping = stopping
        self.jobs: dict[int, JobState] = {}
        self._slot_freed = asyncio.Event()
        self._hopeless_said = False
        self._unreachable_since: dict[str, float] = {}
        self._reported_alive: set[str] = set()
        self.fence = Fence(lost_after)

    def __repr__(self) -> str:
        return f"<SshBackend [{', '.join(self.hosts)}] {self.placement!r}>"

    @property
    def capacity(self) -> int:
        return self.placement.capacity

    def state(self, index: int) -> JobState:
        found = self.jobs.get(index)
        if found is None:
            found = self.jobs[index] = JobState()
        return found

    def host_of(self, index: int) -> str | None:
        found = self.jobs.get(index)
        return found.host if found else None

    def open_connections(self) -> int:
        """SSH connections open or being opened, over all hosts."""
        return sum(h.open_connections() for h in self.hosts.values())

    async def close(self) -> None:
        """Stop probing; close every host's connections (they reopen if used
        again).  A host that is down is not waited for."""
        if self.watch is not None:
            await self.watch.close()
            self.watch = None
        await asyncio.gather(
            *(h.close(flush=self.health.usable(h.name)) for h in self.hosts.values()),
            return_exceptions=True,
        )

    # --------------------------------------------------------------- health
    def _connected(self, name: str, exc: BaseException | None) -> None:
        if self.watch is not None:
            self.watch.connected(name, exc)

    def _use_workdir(self, workdir: SpecPath) -> HostWatch:
        """Remember the workdir jobs now use; start the host watch."""
        self.workdir = workdir
        if self.watch is None:
            self.watch = HostWatch(
                self.health, self._probe_host, workdir, self._slot_freed.set
            )
        self.watch.start()
        return self.watch

    async def _probe_host(self, name: str) -> None:
        """One probe (for the HostWatch): readiness once, then a round trip."""
        host = self.hosts[name]
        if host.probe is None:
            assert self.workdir is not None
            await host.ensure_ready(self.workdir)
            if self.require_shared and not host.shared:
                raise ConfigError(self._unshared_reason(host, self.workdir))
        else:
            # A fresh login, not a round trip over a connection that outlived
            # the listener (that would call the host back while connects fail).
            await host.pool.try_connect()

    def _unshared_reason(self, host: SshHost, workdir: SpecPath) -> str:
        return (
            f"{host.label} does not see the workdir {workdir}; these jobs read "
            "and write its files directly, so use hosts that mount it "
            "(mounted_workdir if at another path)"
        )

    def _raise_if_cut_off(self, host: SshHost, more: str = "") -> None:
        """A host that is down with no connection open: say so at once
        rather than wait for a connect (a stop or a poll cycle must not)."""
        rec = self.health.health_of(host.name)
        if rec.is_down and host.pool.stats().connections == 0:
            raise SshConnectError(host.label, f"the host is down ({rec.reason}){more}")

    # ------------------------------------------------------------ placement
    async def _reserve(self, index: int, avoid: set[str]) -> SshHost:
        """A host that answers, with a free slot; waits while there is none.

        Raises CancelledError once the run stops, JobSubmissionError when
        every host is down for good (the message names each host and why).
        """
        while True:
            if self.stopping():
                raise asyncio.CancelledError
            slots = self.placement.pick(
                index, avoid=avoid, among=self.health.usable_names()
            )
            if slots is not None:
                return self.hosts[slots.name]
            reason = self.health.hopeless(self.lost_after)
            if reason is not None:
                if not self._hopeless_said:
                    self._hopeless_said = True
                    logger.error("%s; the jobs not started yet fail", reason)
                err = JobSubmissionError(f"no host could start the job: {reason}")
                err.reported = True
                raise err
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._slot_freed.wait()

    def release(self, index: int, ok: bool | None = None) -> None:
        """The job ended (or will not start): free its slot."""
        self.placement.release(self.host_of(index), index, ok)
        self._slot_freed.set()

    def note_retry(self, index: int) -> None:
        """The job is retried: prefer hosts it has not failed on."""
        state = self.state(index)
        if state.host:
            state.failed_hosts.add(state.host)

    def note_running(self, jid: str | None, index: int) -> None:
        """A job found running (re-attached) holds its host's slot."""
        parsed = parse_jid(jid)
        if parsed is not None:
            self.state(index).host = parsed[0]
            self.placement.hold(parsed[0], index)

    def unshared_host(self, index: int) -> SshHost | None:
        host = self.hosts.get(self.host_of(index) or "")
        return host if host is not None and host.shared is False else None

    # --------------------------------------------------------------- submit
    async def submit(self, ref: JobRef) -> str:
        """Start the job on a host; its job id once it runs.

        The job's status file says SUBMITTED already (the caller wrote it).
        """
        state = self.state(ref.index)
        state.started_jid = None
        avoid = set(state.failed_hosts)
        lost_once: set[str] = set()
        watch = self._use_workdir(ref.workdir)
        while True:
            host = await self._reserve(ref.index, avoid)
            state.host = host.name
            try:
                await host.ensure_ready(ref.workdir)
                if self.require_shared and not host.shared:
                    # Unusable for these jobs: out of placement for the run.
                    self.placement.release(host.name, ref.index)
                    watch.failed(host.name, ConfigError(self._unshared_reason(host, ref.workdir)))
                    continue
                await self._stage_in(ref, host)
                text = self._render_for(ref, host)
                # On a host without the workdir this local copy is for reading
                # only; the script travels inside the launch request.  The
                # job id "<server>:" says where the job goes before it exists:
                # if we die before its pid is recorded, a restart finds it.
                await fileio.small(
                    fileio.is_local(ref.metadir), _write_script_and_jid, ref, text, host.name
                )
                if self.stopping():
                    raise asyncio.CancelledError
                reply = await self._launch(ref, host, self._launch_request(ref, host, text))
            except SshPoolClosed:
                self.placement.release(host.name, ref.index)
                raise  # shutting down: no other host will do either
            except SshError as exc:
                self.placement.release(host.name, ref.index)
                adopted = await self._adopt_after_lost_launch(ref, host, exc)
                if adopted is not None:
                    return adopted
                if isinstance(exc, SshConnectionLost) and host.name not in lost_once:
                    # The connection dropped under us (sshd restarted, say):
                    # the pool reconnects; try this host once more first.
                    lost_once.add(host.name)
                    logger.info("job %s: %s; trying %s again", ref.index, exc, host.name)
                    continue
                # Unreachable or unusable: the host is out of placement (one
                # warning, from the health) and the job goes elsewhere.
                logger.debug("job %s: %s; trying another host", ref.index, exc)
                watch.failed(host.name, exc)
                continue
            except BaseException:
                self.placement.release(host.name, ref.index)
                raise
            launched = remote.parse_launch(reply.stdout)
            if isinstance(launched, str):
                self.placement.release(host.name, ref.index)
                if launched == "noscript":
                    raise JobSubmissionError(
                        f"{host.label}: the job script "
                        f"{host.mounted(ref.workdir, ref.script_file)} is not "
                        "visible on this host; the workdir must be on a "
                        "filesystem the host shares (set mounted_workdir if it "
                        "is mounted elsewhere)"
                    )
                raise JobSubmissionError(
                    f"{host.label}: could not start the job: {launched} "
                    f"{reply.stderr.strip()}".strip()
                )
            return f"{host.name}:{launched.pid}:{launched.starttime}"

    async def _launch(self, ref: JobRef, host: SshHost, request: str) -> CommandResult:
        """Send the launch request; if the run stops meanwhile, still learn
        the job's id (it may have started) so that the stop can kill it."""
        if host.shared:
            # Batched with the other launches to this host (launcher.py).
            part = host.launches.submit(request)
            task: asyncio.Future[CommandResult] = part.future
        else:  # the request carries the script: sent on its own
            part = None
            task = asyncio.ensure_future(host.run_launch(request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if part is not None and host.launches.withdraw(part):
                raise  # never sent: nothing started
            reply: CommandResult | None = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LAUNCH_STOP_WAIT):
                    reply = await asyncio.shield(task)
            if not task.done():
                task.cancel()
            launched = remote.parse_launch(reply.stdout) if reply is not None else None
            if launched is not None and not isinstance(launched, str):
                jid = f"{host.name}:{launched.pid}:{launched.starttime}"
                self.state(ref.index).started_jid = jid
                with contextlib.suppress(OSError):
                    await fileio.write_text(ref.jid_file, f"{jid}\n")
            raise

    def _render_for(self, ref: JobRef, host: SshHost) -> str:
        if host.shared:
            return ref.render(
                str(host.host_workdir(ref.workdir)),
                host.mounted(ref.workdir, ref.metadir),
                self.fence.heartbeat_interval,
            )
        return ref.render(str(host.remote_root), host.job_dir(ref.index), 0)

    def _launch_request(self, ref: JobRef, host: SshHost, text: str) -> str:
        if host.shared:
            return remote.launch(
                host.mounted(ref.workdir, ref.script_file),
                host.mounted(ref.workdir, ref.stdout_file),
                host.mounted(ref.workdir, ref.stderr_file),
                host.events_fifo(),
            )
        return unshared.launch(host.job_dir(ref.index), text, host.events_fifo())

    async def _stage_in(self, ref: JobRef, host: SshHost) -> None:
        """Shared host: copy locally.  Otherwise: SFTP into the job dir."""
        if not ref.stage_in:
            return
        if host.shared:
            await fileio.to_thread(staging.copy_in_local, ref.stage_in, _local(ref))
            return
        job_dir = host.job_dir(ref.index)
        await host.pool.run_checked(f"umask 077; mkdir -p -- {shlex.quote(job_dir)}")
        try:
            async with host.pool.connection() as conn, _sftp(conn, host.label) as sftp:
                for item in ref.stage_in:
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

    async def _stage_out_remote(self, ref: JobRef, host: SshHost, job_dir: str) -> list[str]:
        errors = []
        try:
            async with host.pool.connection() as conn, _sftp(conn, host.label) as sftp:
                for item in ref.stage_out:
                    src = staging.remote_path(job_dir, item.source)
                    dst = staging.local_target(item, Path(str(ref.metadir.path)))
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

    def take_stage_out_errors(self, index: int) -> list[str]:
        state = self.state(index)
        errors, state.stage_out_errors = state.stage_out_errors, []
        return errors

    async def _adopt_after_lost_launch(
        self, ref: JobRef, host: SshHost, exc: SshError
    ) -> str | None:
        """The connection dropped while starting the job: did it start?

        The wrapper writes job.pid ("pid starttime") first thing; if it
        appears, the job runs and is adopted instead of being started twice.
        """
        if not exc.retryable or isinstance(exc, SshConnectError) or host.probe is None:
            # Not connected, or probe not done: the launch was never sent.
            # (Waiting here would also report a stale failure afterwards and
            # take a host that came back in the meantime out again.)
            return None
        remote_pid = "" if host.shared else shlex.quote(host.job_dir(ref.index) + "/job.pid")
        deadline = time.monotonic() + LAUNCH_ADOPT_WAIT
        while time.monotonic() < deadline:
            text: str | None
            if host.shared:
                text = await fileio.read_text(ref.pid_file)
            else:  # a host without the workdir: ask it (the pool reconnects)
                try:
                    text = (await host.run(f"cat -- {remote_pid} 2>/dev/null")).stdout
                except SshError:
                    text = None
            if text and len(text.split()) == 2:
                pid, start = text.split()
                self.placement.hold(host.name, ref.index)
                logger.warning(
                    "job %s: connection lost while starting it, but it started "
                    "(pid %s on %s): adopted",
                    ref.index,
                    pid,
                    host.name,
                )
                return f"{host.name}:{pid}:{start}"
            await asyncio.sleep(0.1)
        return None

    # ------------------------------------------------------------- restart
    async def recover_jid(self, ref: JobRef, jid: str | None) -> str | None:
        """A job id "<server>:" (we died mid-launch): the pid, if it started."""
        if jid and jid.endswith(":") and jid[:-1] in self.hosts:
            host = self.hosts[jid[:-1]]
            text: str | None
            try:
                await host.ensure_ready(ref.workdir)
                if host.shared:
                    text = await fileio.read_text(ref.pid_file)
                else:
                    reply = await host.run(
                        f"cat -- {shlex.quote(host.job_dir(ref.index) + '/job.pid')}"
                        " 2>/dev/null"
                    )
                    text = reply.stdout
            except SshError:
                text = None
            parts = (text or "").split()
            return f"{host.name}:{parts[0]}:{parts[1]}" if len(parts) >= 2 else None
        return jid

    async def ended_unobserved(self, ref: JobRef, jid: str | None) -> JobStatus | None:
        """On a host without the workdir: the final status of a job that
        ended while nobody watched (its files fetched), else None."""
        parsed = parse_jid(jid)
        host = self.hosts.get(parsed[0]) if parsed else None
        if host is None or host.shared is not False:
            return None
        job_dir = host.job_dir(ref.index)
        reply = await host.run(
            f"[ -e {shlex.quote(job_dir + '/job.pid')} ] && "
            f"cat -- {shlex.quote(job_dir + '/job.status')} 2>/dev/null"
        )
        status = JobStatus.parse(reply.stdout)
        if status is None or not status.is_terminal:
            return None
        self.state(ref.index).host = host.name
        return status if await self._fetch(ref, host) else None

    # ------------------------------------------------------------ liveness
    async def is_running(self, ref: JobRef, jid: str | None) -> bool:
        """Whether the process of job id ``jid`` still runs on its host."""
        parsed = parse_jid(jid)
        if parsed is None or parsed[0] not in self.hosts:
            return False
        name, pid, start = parsed
        host = self.hosts[name]
        await host.ensure_ready(ref.workdir)  # re-attach needs its paths
        reply = await host.run(remote.dead_among([(pid, start)]))
        return pid not in remote.parse_pids(reply.stdout)

    async def lost_reasons(
        self, jobs: Sequence[tuple[JobRef, str | None]]
    ) -> list[Lost | None]:
        """For each (job, job id): why its process is gone without a final
        status, or None while it runs (or may still run: a job on a host that
        stopped answering is given up only as fencing.py allows).  One round
        trip per host."""
        by_host: dict[str, list[tuple[int, JobRef, int, int]]] = defaultdict(list)
        result: list[Lost | None] = [None] * len(jobs)
        for i, (ref, jid) in enumerate(jobs):
            parsed = parse_jid(jid)
            if parsed is None or parsed[0] not in self.hosts:
                result[i] = Lost(f"its job id {jid!r} names no known host")
                continue
            by_host[parsed[0]].append((i, ref, parsed[1], parsed[2]))

        async def check(name: str, items: list[tuple[int, JobRef, int, int]]) -> None:
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
            for _, ref, _, _ in items:
                self.fence.forget(ref.index)
            dead = remote.parse_pids(reply.stdout)
            ended = await self._ended_on_host(
                host, [ref for _, ref, pid, _ in items if pid in dead]
            )
            for i, ref, pid, _ in items:
                if pid in dead and ref.index in ended:
                    result[i] = ended[ref.index]
                elif pid in dead:
                    result[i] = Lost(
                        f"the job's process (pid {pid}) on {host.label} is gone "
                        "but it never wrote a final status (killed from outside, "
                        "out of memory, or the host rebooted)"
                    )

        async with asyncio.TaskGroup() as tg:
            for name, items in by_host.items():
                tg.create_task(check(name, items))
        return result

    async def _ended_on_host(
        self, host: SshHost, refs: list[JobRef]
    ) -> dict[int, Lost | None]:
        """Of these jobs, whose processes are gone, the ones that wrote their
        end on a host without the workdir (or that cannot be asked now):
        None while their end may still come home, else why it will not.

        Such an end may not be home yet: its fetch failed (the connection
        dropped mid-fetch, as when sshd restarts; a local write failed).
        Calling the job lost would throw away an end it did write; the poll
        fetches it once it can.  Fetches failing for ``lost_after`` seconds
        end the wait (a full disk here would otherwise keep the run going
        for ever): the job fails with that reason, its files left on the host.
        """
        if not refs or host.shared is not False:
            return {}
        try:
            reply = await host.run(
                unshared.read_statuses([(r.index, host.job_dir(r.index)) for r in refs])
            )
        except SshError as exc:
            logger.debug("%s: cannot read statuses: %s", host.label, exc)
            return dict.fromkeys((r.index for r in refs), None)  # ask again next check
        parsed = unshared.parse_statuses(reply.stdout)
        now = time.monotonic()
        ended: dict[int, Lost | None] = {}
        for ref in refs:
            status = JobStatus.parse(parsed.get(ref.index, ""))
            if status is None or not status.is_terminal:
                continue
            state = self.state(ref.index)
            since = state.fetch_failing_since
            if since is None or now - since < self.lost_after:
                ended[ref.index] = None
                continue
            ended[ref.index] = Lost(
                f"it ended {status.name} on {host.label}, but its files could not "
                f"be brought home for {now - since:.0f}s ({state.fetch_error}); "
                f"they are left there in {host.job_dir(ref.index)}",
                # It ran: never again elsewhere.  Its files stay as they are
                # and a later run on this workdir fetches its end.
                fenced=f"it ended on {host.label}; a later run on this workdir "
                "brings its files home",
            )
        return ended

    async def _fence_unreachable(
        self,
        host: SshHost,
        items: list[tuple[int, JobRef, int, int]],
        result: list[Lost | None],
        exc: SshError,
    ) -> None:
        """Jobs of a host that did not answer: which may be given up now
        (fencing.py says why a job is never started elsewhere while its
        attempt may be alive)."""
        now = time.monotonic()
        since = self._unreachable_since.setdefault(host.name, now)
        away = now - since
        beats = (
            await fileio.to_thread(_heartbeats, [r for _, r, _, _ in items])
            if host.shared
            else {}
        )
        waiting_alive = 0
        for i, ref, _, _ in items:
            verdict = self.fence.verdict(ref.index, beats.get(ref.index), away, now)
            if verdict == Verdict.WAIT:
                if away >= self.lost_after:
                    waiting_alive += 1
                continue
            self.fence.forget(ref.index)
            if verdict == Verdict.DEAD:
                result[i] = Lost(
                    f"host {host.label} has been unreachable for {away:.0f}s "
                    f"({exc}) and the job's heartbeat has not changed for "
                    f"{self.fence.lease:.0f}s: taken as dead"
                )
            else:
                result[i] = Lost(
                    f"host {host.label} has been unreachable for {away:.0f}s "
                    f"({exc}); the job is given up, but its attempt may still run "
                    "there, so it is not started elsewhere and its files are left "
                    "for a later run on this workdir to settle",
                    fenced=(
                        f"its attempt may still run on {host.label}, unreachable for "
                        f"{away:.0f}s"
                    ),
                )
        if waiting_alive and host.name not in self._reported_alive:
            self._reported_alive.add(host.name)
            logger.warning(
                "%s has been unreachable for %.0fs, but the heartbeats of %d of its "
                "jobs go on: waiting for them", host.label, away, waiting_alive,
            )

    # --------------------------------------------- hosts without the workdir
    async def refresh_unshared(
        self, jobs: Sequence[tuple[JobRef, bool]]
    ) -> list[JobStatus | None]:
        """Statuses of jobs on hosts without the workdir (None for the rest,
        and for those with no news).  ``jobs`` holds (job, still SUBMITTED):
        a job seen RUNNING then gets RUNNING in its local status file.  A job
        that ended has its files fetched before it is reported."""
        result: list[JobStatus | None] = [None] * len(jobs)
        by_host: dict[str, list[int]] = defaultdict(list)
        for i, (ref, _) in enumerate(jobs):
            host = self.unshared_host(ref.index)
            if host is not None:
                by_host[host.name].append(i)

        async def poll(host: SshHost, idxs: list[int]) -> None:
            remove, host.pending_rm = host.pending_rm, []
            try:
                reply = await host.run(
                    unshared.read_statuses(
                        [(jobs[i][0].index, host.job_dir(jobs[i][0].index)) for i in idxs],
                        remove,
                    )
                )
            except SshError as exc:
                host.pending_rm[:0] = remove
                logger.debug("%s: cannot read statuses: %s", host.label, exc)
                return
            parsed = unshared.parse_statuses(reply.stdout)

            async def one(i: int) -> None:
                ref, submitted = jobs[i]
                status = JobStatus.parse(parsed.get(ref.index, ""))
                if status is None:
                    return
                if status.is_terminal:
                    if not await self._fetch(ref, host):
                        return  # try again next cycle
                elif status == JobStatus.RUNNING and submitted:
                    await fileio.write_text(ref.status_file, f"{int(status)}\n")
                result[i] = status

            await asyncio.gather(*(one(i) for i in idxs))

        if by_host:
            async with asyncio.TaskGroup() as tg:
                for name, idxs in by_host.items():
                    tg.create_task(poll(self.hosts[name], idxs))
        return result

    async def _fetch(self, ref: JobRef, host: SshHost) -> bool:
        """Bring rc, stdout, stderr and the status home; False if not possible."""
        job_dir = host.job_dir(ref.index)
        snippet, mark = unshared.fetch_small(job_dir)
        fetched: unshared.Fetched | None = None
        try:
            reply = await host.run(snippet)
            fetched = unshared.parse_fetch(reply.stdout, mark)
            if fetched is None:
                return False
            if fetched.stdout is None or fetched.stderr is None:
                await self._stream_outputs(ref, host, job_dir)
            else:
                await fileio.to_thread(
                    write_outputs, ref, fetched.stdout, fetched.stderr
                )
        except (SshError, OSError, asyncssh.Error) as exc:
            state = self.state(ref.index)
            if state.fetch_failing_since is None:
                state.fetch_failing_since = time.monotonic()
            state.fetch_error = log_fetch_failure(ref.index, host.label, exc, state.fetch_error)
            return False
        state = self.state(ref.index)
        state.fetch_error = state.fetch_failing_since = None
        if fetched.rc.strip() == "0" and ref.stage_out:
            # Before the remote directory is scheduled for removal.
            state.stage_out_errors = await self._stage_out_remote(
                ref, host, job_dir
            )
        status = await fileio.to_thread(write_end, ref, fetched.rc)
        # Fetched: remove the directory (or at least job.pid, which would
        # otherwise say "ended with nobody watching" to a later controller).
        host.pending_rm.append(job_dir + "/job.pid" if host.spec.keep_remote else job_dir)
        return status

    async def _stream_outputs(self, ref: JobRef, host: SshHost, job_dir: str) -> None:
        """Large outputs: copied in chunks straight into the local files,
        never whole in memory (a cloud workdir: into a temporary file first,
        then uploaded).  No SFTP, so hosts without an SFTP subsystem work
        too."""
        for name, dest in (
            ("job.stdout", ref.stdout_file),
            ("job.stderr", ref.stderr_file),
        ):
            src = f"{job_dir}/{name}"
            if not dest.is_cloud:
                await self._cat_into(host, src, Path(str(dest.path)))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / name
                await self._cat_into(host, src, local)
                await fileio.to_thread(fileio.upload_sync, local, dest)

    async def _cat_into(self, host: SshHost, src: str, dest: Path) -> None:
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

    # ----------------------------------------------------------------- kill
    def fetch_after_kill(self, index: int) -> None:
        """Bring a killed job's files home once it is gone (unshared hosts)."""
        if self.unshared_host(index) is not None:
            self.state(index).fetch_after_kill = True

    async def kill(self, ref: JobRef, jid: str | None) -> None:
        """TERM the job's process group, KILL after the grace period; return
        once the group is gone."""
        parsed = parse_jid(jid)
        if parsed is None or parsed[0] not in self.hosts:
            return
        name, pid, start = parsed
        host = self.hosts[name]
        self._raise_if_cut_off(host, f"; job {ref.index} (pid {pid}) may still run there")
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
        state = self.state(ref.index)
        while time.monotonic() < deadline:
            check = await host.run(remote.group_alive(pid), timeout=KILL_ROUND_TRIP)
            if "gone" in check.stdout:
                if state.fetch_after_kill and host.shared is False:
                    state.fetch_after_kill = False
                    await self._fetch(ref, host)  # what it wrote before dying
                return
            await asyncio.sleep(0.1)
        logger.warning("job %s: its processes on %s outlived the kill", ref.index, name)


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


def _heartbeats(refs: Sequence[JobRef]) -> dict[int, int]:
    """The mtime of each job's job.pid (shared workdir): the heartbeat its
    wrapper touches.

    Blocking but cheap (a stat per job of a host that stopped answering,
    once per recheck)."""
    out: dict[int, int] = {}
    for ref in refs:
        try:
            out[ref.index] = os.stat(str(ref.pid_file.path)).st_mtime_ns
        except (OSError, TypeError):
            continue
    return out


def _local(ref: JobRef) -> Path:
    path = ref.metadir.path
    if not isinstance(path, Path):
        raise JobSubmissionError(f"staging files needs a local workdir, not {path}")
    return path


def _write_script_and_jid(ref: JobRef, text: str, host: str) -> None:
    """One worker-thread hop for the writes before a launch, in the order a
    restart relies on: job.cmd and SUBMITTED (the job's deferred
    preparation), the script, then the job id so far."""
    if ref.prepare is not None:
        ref.prepare()
    fileio.write_text_sync(ref.script_file, text, mode=0o700)
    fileio.write_text_sync(ref.jid_file, f"{host}:\n")
