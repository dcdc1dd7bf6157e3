"""SshScheduler: our Scheduler on SSH hosts, a thin layer over SshBackend.

Everything that touches a host (placement, launch, liveness, kill, files
fetched back from hosts without the workdir) is in :mod:`.backend`, shared
with the pipen scheduler; this class maps our Job onto a :class:`JobRef` and
our Scheduler's steps onto the backend's calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ...attempt import AttemptRecord
from ...errors import ConfigError
from ...job import Job
from ...scheduler import Scheduler
from ...ssh.health import HOST_COOLDOWN, PROBE_BACKOFF, PROBE_MAX_INTERVAL, HostHealth
from ...status import JobStatus
from ..jobref import JobRef, ref_of
from .backend import SshBackend, parse_jid
from .fencing import Fence
from .host import SshHost
from .options import SERVER_DEFAULT_OPTIONS, parse_servers, pop_server_defaults
from .placement import Placement

logger = logging.getLogger("xqute_ssh")

__all__ = ["SshScheduler", "parse_jid"]


class SshScheduler(Scheduler):
    """Run jobs on SSH hosts (with or without the workdir's filesystem).

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
    # backend.submit writes job.cmd and SUBMITTED with the script (jobref.py)
    defer_prepare = True
    # defaults for every server (pop_server_defaults)
    extra_options = SERVER_DEFAULT_OPTIONS

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
        server_defaults = pop_server_defaults(kwargs)
        super().__init__(*args, **kwargs)
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
        self.backend = SshBackend(
            self.servers,
            self.forks,
            host_cooldown=host_cooldown,
            probe_backoff=probe_backoff,
            probe_max_interval=probe_max_interval,
            lost_after=lost_after,
            kill_grace=self.kill_grace,
            stopping=lambda: self.stopping,
            # End events (events.py): the poller reads a job as it ends.
            on_end=self.wakeup.hint,
        )
        # A job can only run where a slot is; never admit more than all hosts hold.
        if self.forks > self.backend.capacity:
            logger.warning(
                "forks=%d is more than the servers' slots together (%d): "
                "at most %d jobs will run at once",
                self.forks, self.backend.capacity, self.backend.capacity,
            )
            self.forks = self.backend.capacity

    def __repr__(self) -> str:
        hosts = ", ".join(self.hosts)
        return (
            f"<SshScheduler [{hosts}] workdir={str(self.workdir)!r} forks={self.forks}>"
        )

    @property
    def hosts(self) -> dict[str, SshHost]:
        return self.backend.hosts

    @property
    def placement(self) -> Placement:
        return self.backend.placement

    @property
    def fence(self) -> Fence:
        return self.backend.fence

    @property
    def health(self) -> HostHealth:
        """Which hosts answer (the live view and ``status`` show it)."""
        return self.backend.health

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.backend.close()

    def job_ref(self, job: Job) -> JobRef:
        """What the backend needs from one of our jobs."""
        return ref_of(self, job)

    def _sync_host(self, job: Job) -> None:
        host = self.backend.host_of(job.index)
        if host is not None:
            job.extra["host"] = host

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
            self.backend.release(job.index, ok=JobStatus(new_status) == JobStatus.FINISHED)

    # --------------------------------------------------------------- submit
    async def submit_job(self, job: Job) -> str:
        try:
            return await self.backend.submit(self.job_ref(job))
        except asyncio.CancelledError:
            # Stopped mid-launch: if the job started, the stop must kill it.
            jid = self.backend.state(job.index).started_jid
            if jid is not None:
                with contextlib.suppress(OSError):
                    await job.set_jid(jid)
            raise
        finally:
            self._sync_host(job)

    async def stage_job_out(self, job: Job) -> list[str]:
        if self.backend.unshared_host(job.index) is None:
            return await super().stage_job_out(job)
        return self.backend.take_stage_out_errors(job.index)

    def launch_may_be_in_flight(self, job: Job, record: AttemptRecord) -> bool:
        # "<server>:" is written just before the launch request goes out.
        return bool(record.jid and record.jid.endswith(":") and not record.started)

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        jid = await self.backend.recover_jid(self.job_ref(job), jid)
        return await super().recover_jid(job, jid)

    async def ended_unobserved(self, job: Job) -> JobStatus | None:
        parsed = parse_jid(job.jid)
        host = self.hosts.get(parsed[0]) if parsed else None
        if host is None or host.shared is not False:
            return await super().ended_unobserved(job)
        status = await self.backend.ended_unobserved(self.job_ref(job), job.jid)
        self._sync_host(job)
        return status

    async def job_is_submitted_or_running(self, job: Job) -> bool:
        running = await super().job_is_submitted_or_running(job)
        if running and not job.status.is_terminal:
            # Only an attempt that still runs holds a slot: one found ended
            # was released already, and holding it now would leak the slot
            # (enough of them and a restarted run waits for ever).
            self.backend.note_running(job.jid, job.index)
            self._sync_host(job)
        return running

    async def retry_job(self, job: Job) -> None:
        self.backend.note_retry(job.index)
        await super().retry_job(job)

    # ------------------------------------------------------------ liveness
    async def job_is_running(self, job: Job) -> bool:
        return await self.backend.is_running(self.job_ref(job), await job.get_jid())

    async def refresh_job_statuses(self, jobs: Sequence[Job]) -> list[JobStatus | None]:
        """Shared hosts: the local files.  Others: one round trip per host,
        and a job that ended has its files fetched before it is reported."""
        local = [i for i, j in enumerate(jobs) if self.backend.unshared_host(j.index) is None]
        result: list[JobStatus | None] = [None] * len(jobs)
        if local:
            read = await super().refresh_job_statuses([jobs[i] for i in local])
            for i, status in zip(local, read, strict=True):
                result[i] = status
        if len(local) < len(jobs):
            remote = await self.backend.refresh_unshared(
                [(self.job_ref(j), j.status == JobStatus.SUBMITTED) for j in jobs]
            )
            local_set = set(local)
            for i, status in enumerate(remote):
                if i not in local_set:
                    result[i] = status
        return result

    async def jobs_fail_before_running(self, jobs: Sequence[Job]) -> list[bool]:
        """One round trip per host for all of its active jobs."""
        lost = await self.backend.lost_reasons(
            [(self.job_ref(j), j.jid) for j in jobs]
        )
        for job, why in zip(jobs, lost, strict=True):
            if why is not None:
                job.extra["lost_reason"] = why.reason
                if why.fenced is not None:
                    job.extra["fenced"] = why.fenced
        return [why is not None for why in lost]

    # ----------------------------------------------------------------- kill
    async def kill_job_and_update_status(self, job: Job) -> None:
        self.backend.fetch_after_kill(job.index)
        await super().kill_job_and_update_status(job)

    async def kill_job(self, job: Job) -> None:
        await self.backend.kill(self.job_ref(job), job.jid or await job.get_jid())
