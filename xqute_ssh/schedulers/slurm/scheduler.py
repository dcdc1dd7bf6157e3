"""SlurmScheduler: our Scheduler on a Slurm cluster reached over SSH.

Everything that touches the login node (submission in batches, one squeue
per poll, fetching files back, scancel) is in :mod:`.backend`, shared with
pipen's ``xqute_ssh_slurm``; this class maps our Job onto a
:class:`~xqute_ssh.schedulers.jobref.JobRef` and our Scheduler's steps onto
the backend's calls.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

from ...job import Job
from ...scheduler import DEFAULT_SHEBANG, Scheduler
from ...status import JobStatus
from ..jobref import JobRef, ref_of
from ..ssh.options import CONNECTION_KEYS
from .backend import SlurmBackend, placeholder, workdir_key
from .submitter import Submitter

logger = logging.getLogger("xqute_ssh")

#: The base Scheduler's own keyword arguments (everything else unknown is an
#: sbatch option, as with xqute's SlurmScheduler).
_BASE_KEYS = frozenset(inspect.signature(Scheduler.__init__).parameters) - {
    "self", "args", "kwargs",
}


class SlurmScheduler(Scheduler):
    """Submit jobs to Slurm on a cluster reached over SSH.

    Args (besides the base Scheduler's):
        login: the login node, ``"[user@]host[:port]"``; connection options
            (``keyfile``, ``known_hosts``, ``config``, ``proxy_jump``,
            ``port``, ``user`` ...) as for the ssh scheduler.
        sbatch, squeue, scancel: the commands on the login node.
        sbatch_extra: extra ``#SBATCH`` lines, e.g. ``["--constraint=avx2"]``.
        remote_workdir: where job directories go on the cluster (default
            ``~/.cache/xqute-ssh/<key>``); must be visible to compute nodes.
        keep_remote: keep the cluster-side job directories after fetching.
        mounted_workdir: the controller's workdir as the cluster sees it;
            then jobs use it directly and nothing is fetched.
        submit_retry_time: seconds Slurm may keep refusing a submission
            (transient errors) before the job fails.
        submit_batch_size: at most this many jobs per sbatch round trip.
        Any other option is an sbatch option (``partition``, ``time``,
        ``mem``, ``cpus_per_task``, ``gres``, ``account``, ``qos``, ``c``
        ...), as in xqute's SlurmScheduler; per job, ``job.extra["sbatch"]``.
    """

    name = "slurm"

    def __init__(
        self,
        *args: Any,
        login: str | None = None,
        sbatch: str = "sbatch",
        squeue: str = "squeue",
        scancel: str = "scancel",
        sbatch_extra: Sequence[str] | str | None = None,
        remote_workdir: str | None = None,
        keep_remote: bool = False,
        submit_retry_time: float = 600.0,
        submit_batch_size: int = 100,
        **kwargs: Any,
    ) -> None:
        conn = {k: kwargs.pop(k) for k in list(kwargs) if k in CONNECTION_KEYS - {"host"}}
        sbatch_opts = {
            k: kwargs.pop(k) for k in list(kwargs) if k not in _BASE_KEYS
        }
        # squeue every 0.1 s would annoy any cluster's admin.
        kwargs.setdefault("poll_interval", 1.0)
        mounted = kwargs.get("mounted_workdir")
        super().__init__(*args, **kwargs)
        self.backend = SlurmBackend(
            self.workdir,
            login=login,
            conn=conn,
            # The cluster sees the controller's workdir at ``mounted_workdir``
            # (which may be the same path).
            shared=mounted is not None,
            sbatch_options=sbatch_opts,
            sbatch_extra=sbatch_extra,
            commands={"sbatch": sbatch, "squeue": squeue, "scancel": scancel},
            remote_workdir=remote_workdir,
            keep_remote=keep_remote,
            submit_retry_time=submit_retry_time,
            submit_batch_size=submit_batch_size,
            kill_grace=self.kill_grace,
            jobname_prefix=self.jobname_prefix,
            stopping=lambda: self.stopping,
            shared_hint=(
                "give mounted_workdir as the workdir's path on the cluster, or "
                "leave it out to have the jobs' files copied back"
            ),
        )
        self._sha = workdir_key(self.workdir)

    def __repr__(self) -> str:
        return (
            f"<SlurmScheduler login={self.backend.label} workdir={str(self.workdir)!r} "
            f"forks={self.forks}>"
        )

    @property
    def submitter(self) -> Submitter:
        """The backend's batching submitter (round trips, retries)."""
        return self.backend.submitter

    @property
    def sbatch_options(self) -> dict[str, Any]:
        """The run's sbatch options, checked, in sbatch's spelling."""
        return self.backend.sbatch_options

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.backend.close()

    # ----------------------------------------------------------- wrapper
    def jobcmd_shebang(self, job: Job) -> str:
        directives = self.backend.directives(job.extra.get("sbatch"), f"job {job.index} sbatch")
        return "\n".join([DEFAULT_SHEBANG, *directives])

    def job_ref(self, job: Job) -> JobRef:
        """What the backend needs from one of our jobs."""
        return ref_of(self, job)

    # ------------------------------------------------------------ submit
    async def submit_job(self, job: Job) -> str:
        sub = await self.backend.prepare(self.job_ref(job))
        job._jid = placeholder(sub)
        return await self.backend.submit(sub)

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        jid = await self.backend.recover_jid(self.job_ref(job), jid)
        return await super().recover_jid(job, jid)

    # -------------------------------------------------------------- poll
    async def job_is_running(self, job: Job) -> bool:
        return await self.backend.is_running(await job.get_jid())

    async def ended_unobserved(self, job: Job) -> JobStatus | None:
        if self.backend.shared:
            return await super().ended_unobserved(job)
        return await self.backend.ended_unobserved(self.job_ref(job))

    async def jobs_fail_before_running(self, jobs: Sequence[Job]) -> list[bool]:
        # Every poll already compares Slurm's view with the job's files.
        return [False] * len(jobs)

    async def refresh_job_statuses(self, jobs: Sequence[Job]) -> list[JobStatus | None]:
        """One round trip: squeue for every job, then each status file."""
        return await self.backend.refresh(
            [(self.job_ref(j), j.jid, j.status == JobStatus.SUBMITTED) for j in jobs]
        )

    # -------------------------------------------------------------- kill
    async def kill_job(self, job: Job) -> None:
        await self.backend.kill(self.job_ref(job), job.jid or await job.get_jid())
