"""SlurmScheduler: jobs go to a Slurm cluster through its login node, over SSH.

* Transport: one :class:`~xqute_ssh.ssh.HostPool` to the login node; every
  Slurm command runs over its control session (~1 ms a round trip once
  connected), never a new ``ssh`` per command.
* Submit: the wrapper travels inside the request and ``sbatch --parsable``
  runs on the login node, many jobs per round trip (see submitter.py); the
  Slurm job id is the jid.  The id is also written next to the job on the
  cluster, so a controller that dies before recording it finds it again.
* Poll: one round trip per cycle: one ``squeue`` for all active jobs, then
  each job's status file.  A job Slurm ended (time limit, node failure,
  cancelled) without the wrapper recording an end is FAILED, and Slurm's
  state and reason go into job.stderr.
* Kill: ``scancel`` TERM to the batch shell (the wrapper stops the command
  and records the end), a hard ``scancel`` after ``kill_grace``.
* Files: on the cluster under ``remote_workdir`` (outputs and rc fetched
  back when the job ends), or in the controller's workdir when the cluster
  mounts it (``mounted_workdir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import secrets
import shlex
import time
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from ... import fileio
from ...errors import ConfigError, SshError
from ...job import Job
from ...scheduler import DEFAULT_SHEBANG, Scheduler
from ...ssh import CommandResult, HostPool
from ...ssh.config import DEFAULT_KNOWN_HOSTS
from ...status import JobStatus
from ...wrapper import render
from ..ssh import unshared
from ..ssh.options import CONNECTION_KEYS, parse_servers
from . import commands, options
from .submitter import Submitter

logger = logging.getLogger("xqute_ssh")

#: The base Scheduler's own keyword arguments (everything else unknown is an
#: sbatch option, as with xqute's SlurmScheduler).
_BASE_KEYS = frozenset(inspect.signature(Scheduler.__init__).parameters) - {
    "self", "args", "kwargs",
}
_OWN_KEYS = frozenset(
    {"login", "sbatch", "squeue", "scancel", "sbatch_extra", "remote_workdir",
     "keep_remote", "submit_retry_time", "submit_batch_size"}
)
#: How the controller writes "submission under way" into job.jid:
#: ``slurm:<job name>:``.  The trailing ":" is the base Scheduler's sign of a
#: launch that may be in flight (not an attempt that started).
_PLACEHOLDER = "slurm:"

_PROBE = (
    "echo home=$HOME; for c in \"$@\"; do "
    'if command -v "$c" >/dev/null 2>&1; then echo "has=$c"; fi; done'
)


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
        if not login or not isinstance(login, str):
            raise ConfigError(
                "the slurm scheduler reaches the cluster over SSH: give its login "
                "node, e.g. scheduler_opts={'login': 'alice@cluster.example.org'}"
            )
        for what, cmd in (("sbatch", sbatch), ("squeue", squeue), ("scancel", scancel)):
            if not isinstance(cmd, str) or not cmd.strip():
                raise ConfigError(f"{what} must name the {what} command, got {cmd!r}")
        if submit_batch_size < 1:
            raise ConfigError(f"submit_batch_size must be >= 1, got {submit_batch_size!r}")
        if self.workdir.is_cloud:
            raise ConfigError("the slurm scheduler needs a local (or mounted) workdir")
        conn.setdefault("known_hosts", DEFAULT_KNOWN_HOSTS)
        job_opts: dict[str, Any] = {"keep_remote": keep_remote}
        if remote_workdir is not None:
            job_opts["remote_workdir"] = remote_workdir
        (spec,) = parse_servers({"login": {"host": login, **conn, **job_opts}}, {})
        self.spec = spec
        self.login = login
        self.sbatch_options = options.normalize(sbatch_opts, "slurm scheduler options")
        self.sbatch_extra = options.extra_lines(sbatch_extra, "sbatch_extra")
        self.commands = {"sbatch": sbatch, "squeue": squeue, "scancel": scancel}
        self.pool = HostPool(spec.config)
        self.label = spec.config.label
        #: The cluster sees the controller's workdir at ``mounted_workdir``
        #: (which may be the same path).
        self.shared = mounted is not None
        self.remote_root: PurePosixPath | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._pending_rm: list[str] = []
        self._sha = hashlib.sha256(str(self.workdir.path).encode()).hexdigest()[:8]
        self.submitter = Submitter(
            self._run_for_submitter,
            self.label,
            sbatch=sbatch,
            squeue=squeue,
            batch_size=submit_batch_size,
            retry_time=submit_retry_time,
            stopping=lambda: self.stopping,
        )

    def __repr__(self) -> str:
        return (
            f"<SlurmScheduler login={self.label} workdir={str(self.workdir)!r} "
            f"forks={self.forks}>"
        )

    async def _run_for_submitter(self, snippet: str, timeout: float) -> CommandResult:
        return await self.pool.run(snippet, timeout=timeout)

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.submitter.close()
        if self._pending_rm:
            remove, self._pending_rm = self._pending_rm, []
            with contextlib.suppress(SshError):
                await self.pool.run(unshared.read_statuses([], remove))
        await self.pool.close()

    # ----------------------------------------------------------- set-up
    async def ensure_ready(self) -> None:
        """Once: the Slurm commands exist on the login node; where jobs go."""
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            cmds = list(self.commands.values())
            reply = await self.pool.run(
                f"set -- {' '.join(shlex.quote(c) for c in cmds)}; {_PROBE}"
            )
            found = {
                line[4:] for line in reply.stdout.splitlines() if line.startswith("has=")
            }
            home = next(
                (ln[5:] for ln in reply.stdout.splitlines() if ln.startswith("home=")),
                "",
            )
            missing = [c for c in cmds if c not in found]
            if missing:
                raise SshError(
                    self.label,
                    f"{', '.join(missing)} not found on the login node; is Slurm's "
                    "client installed there (or loaded by ~/.bashrc / a module)? "
                    "Or name the commands: scheduler_opts={'sbatch': '/path/to/sbatch', ...}",
                )
            if not self.shared:
                root = self.spec.remote_workdir
                if root and root.startswith("~/"):
                    root = str(PurePosixPath(home) / root[2:])
                self.remote_root = (
                    PurePosixPath(root)
                    if root
                    else unshared.default_remote_workdir(home, str(self.workdir.path))
                )
            self._ready = True
            logger.info(
                "%s: Slurm login node ready; job directories in %s",
                self.label,
                self.workdir.mounted if self.shared else self.remote_root,
            )

    def job_dir(self, job: Job) -> str:
        """The job's directory as the cluster sees it."""
        if self.shared:
            return str(job.metadir.mounted)
        assert self.remote_root is not None
        return str(self.remote_root / str(job.index))

    # ----------------------------------------------------------- wrapper
    def sbatch_directives(self, job: Job) -> list[str]:
        """``#SBATCH`` lines for a job: the run's options, then the job's own."""
        merged = dict(self.sbatch_options)
        merged.update(options.normalize(job.extra.get("sbatch"), f"job {job.index} sbatch"))
        return options.directives(merged, self.sbatch_extra)

    def jobcmd_shebang(self, job: Job) -> str:
        return "\n".join([DEFAULT_SHEBANG, *self.sbatch_directives(job)])

    def _render(self, job: Job) -> str:
        spec = self.wrapper_spec(job)
        old = spec.job_metadir
        spec.job_metadir = self.job_dir(job)
        spec.metadir = str(PurePosixPath(spec.job_metadir).parent)
        if spec.cwd == old:
            spec.cwd = spec.job_metadir
        return render(spec)

    # ------------------------------------------------------------ submit
    async def _ready_or_wait(self) -> None:
        """ensure_ready, waiting out a login node that is briefly unreachable
        (up to ``submit_retry_time``) instead of failing every job at once."""
        deadline = time.monotonic() + self.submitter.retry_time
        delay = 1.0
        while True:
            try:
                await self.ensure_ready()
                return
            except SshError as exc:
                if (
                    not exc.retryable
                    or self.stopping
                    or time.monotonic() + delay > deadline
                ):
                    raise
                logger.warning("%s; retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay)  # back-off before reconnecting
            delay = min(delay * 2, 30.0)

    async def submit_job(self, job: Job) -> str:
        await self._ready_or_wait()
        if job.stage_in or job.stage_out:
            raise ConfigError(
                f"job {job.index}: stage_in/stage_out are not supported by the "
                "slurm scheduler yet; put inputs on the cluster's filesystem"
            )
        text = self._render(job)
        name = f"{self.jobname_prefix}-{self._sha}-{job.index}-{secrets.token_hex(3)}"
        # Local copy for reading; "slurm:<name>:" in job.jid says a submission
        # is under way, so a restarted controller looks before submitting.
        await fileio.to_thread(_write_script_and_placeholder, job, self.name, text, name)
        return await self.submitter.submit(
            commands.Submission(job.index, self.job_dir(job), text, name)
        )

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        """A submission cut short: its id file on the cluster, or a Slurm
        job with its unique name."""
        if jid and jid.startswith(_PLACEHOLDER) and jid.endswith(":"):
            name = jid[len(_PLACEHOLDER):-1]
            await self.ensure_ready()
            id_file = shlex.quote(f"{self.job_dir(job)}/{commands.ID_FILE}")
            reply = await self.pool.run(
                f"i=; read -r i < {id_file} 2>/dev/null; [ -n \"$i\" ] && echo \"$i\" || "
                f"{shlex.quote(self.commands['squeue'])} -h -t all "
                f"-n {shlex.quote(name)} -o %i"
            )
            words = reply.stdout.split()
            jid = words[0] if words and words[0].isdigit() else None
            if jid:
                logger.info("job %s: found Slurm job %s from an earlier run", job.index, jid)
        return await super().recover_jid(job, jid)

    # -------------------------------------------------------------- poll
    async def _states(self, ids: Sequence[str]) -> dict[str, commands.SlurmState] | None:
        reply = await self.pool.run(commands.squeue(ids, self.commands["squeue"]))
        states, _ = commands.parse_squeue(reply.stdout)
        return states

    async def job_is_running(self, job: Job) -> bool:
        """Pending or running in Slurm (squeue failing raises: the caller
        then re-attaches rather than risk a second copy)."""
        jid = await job.get_jid()
        if not jid or not jid.isdigit():
            return False
        await self.ensure_ready()
        states = await self._states([jid])
        if states is None:
            raise SshError(self.label, "squeue failed (is slurmctld up?)")
        state = states.get(jid)
        return state is not None and not state.ended

    async def ended_unobserved(self, job: Job) -> JobStatus | None:
        if self.shared:
            return await super().ended_unobserved(job)
        d = self.job_dir(job)
        reply = await self.pool.run(
            f"[ -e {shlex.quote(d + '/job.pid')} ] && "
            f"cat -- {shlex.quote(d + '/job.status')} 2>/dev/null"
        )
        status = JobStatus.parse(reply.stdout)
        if status is None or not status.is_terminal:
            return None
        return status if await self._fetch(job) else None

    async def jobs_fail_before_running(self, jobs: Sequence[Job]) -> list[bool]:
        # Every poll already compares Slurm's view with the job's files.
        return [False] * len(jobs)

    async def refresh_job_statuses(self, jobs: Sequence[Job]) -> list[JobStatus | None]:
        """One round trip: squeue for every job, then each status file."""
        result: list[JobStatus | None] = [None] * len(jobs)
        tracked = [(i, j) for i, j in enumerate(jobs) if j.jid and j.jid.isdigit()]
        if not tracked:
            return result
        try:
            await self.ensure_ready()
        except SshError as exc:
            logger.debug("%s: cannot poll: %s", self.label, exc)
            return result
        remove, self._pending_rm = self._pending_rm, []
        snippet = (
            commands.squeue([j.jid for _, j in tracked if j.jid], self.commands["squeue"])
            + "; "
            + unshared.read_statuses([(j.index, self.job_dir(j)) for _, j in tracked], remove)
        )
        try:
            reply = await self.pool.run(snippet)
        except SshError as exc:
            self._pending_rm[:0] = remove
            logger.debug("%s: cannot poll: %s", self.label, exc)
            return result
        states, rest = commands.parse_squeue(reply.stdout)
        if states is None:
            logger.debug("%s: squeue failed; statuses from files only", self.label)
        files = unshared.parse_statuses(rest)

        async def one(i: int, job: Job) -> None:
            status = JobStatus.parse(files.get(job.index, ""))
            state = states.get(job.jid or "") if states is not None else None
            if status is not None and status.is_terminal:
                if state is not None and not state.ended:
                    # The wrapper is done but Slurm has not closed the job:
                    # wait for its verdict (a time limit or a cancel TERMs
                    # the wrapper, which records an end before Slurm says why).
                    return
                if not await self._finish(job, state):
                    return
                result[i] = status
            elif states is not None and (state is None or state.ended):
                # Slurm says the job is over, but the wrapper never wrote an
                # end (killed hard, node lost, never started): a failure.
                if await self._finish(job, state, lost=True):
                    result[i] = JobStatus.FAILED
            elif status == JobStatus.RUNNING or (state and state.state == "RUNNING"):
                if job.status == JobStatus.SUBMITTED and not self.shared:
                    await fileio.write_text(job.status_file, f"{int(JobStatus.RUNNING)}\n")
                result[i] = JobStatus.RUNNING

        await asyncio.gather(*(one(i, j) for i, j in tracked))
        return result

    async def _finish(
        self, job: Job, state: commands.SlurmState | None, *, lost: bool = False
    ) -> bool:
        """Bring an ended job's files home and add Slurm's word on it."""
        if not self.shared and not await self._fetch(job, lost=lost):
            return False
        note = None
        if state is not None and (state.slurm_failed or lost):
            note = (
                f"slurm: job {job.jid} ended {state.state}"
                + (f" (reason: {state.reason})" if state.reason not in ("", "None") else "")
            )
        elif lost:
            note = f"slurm: job {job.jid} is gone from Slurm's queue without a result"
        if note:
            try:
                await fileio.append_text(job.stderr_file, note + "\n")
                if lost:
                    await fileio.to_thread(_write_end, job, "-1")
            except OSError as exc:
                logger.error("job %s: cannot record its end: %s", job.index, exc)
        return True

    async def _fetch(self, job: Job, *, lost: bool = False) -> bool:
        """rc, stdout and stderr from the cluster into the local metadir."""
        d = self.job_dir(job)
        snippet, mark = unshared.fetch_small(d)
        try:
            reply = await self.pool.run(snippet)
            fetched = unshared.parse_fetch(reply.stdout, mark)
            if fetched is None:
                return lost  # a lost job may have no files at all
            if fetched.stdout is None or fetched.stderr is None:
                await self._stream_outputs(job, d)
            else:
                await fileio.to_thread(_write_outputs, job, fetched.stdout, fetched.stderr)
        except (SshError, OSError) as exc:
            logger.warning("job %s: cannot fetch its files from %s: %s", job.index, self.label, exc)
            return False
        if not lost and not await fileio.to_thread(_write_end, job, fetched.rc):
            return False
        self._pending_rm.append(d + "/job.pid" if self.spec.keep_remote else d)
        return True

    async def _stream_outputs(self, job: Job, d: str) -> None:
        async with self.pool.connection() as conn, conn.start_sftp_client() as sftp:
            for name, dest in (("job.stdout", job.stdout_file), ("job.stderr", job.stderr_file)):
                if await sftp.exists(f"{d}/{name}"):
                    await sftp.get(f"{d}/{name}", str(dest))

    # -------------------------------------------------------------- kill
    async def kill_job(self, job: Job) -> None:
        """scancel TERM (the wrapper records the end), hard cancel after the
        grace period; returns once Slurm calls the job ended."""
        jid = job.jid or await job.get_jid()
        if not jid or not jid.isdigit():
            return
        scancel = self.commands["scancel"]
        start = time.monotonic()
        hard_sent = False
        deadline = start + self.kill_grace + 60
        while time.monotonic() < deadline:
            if not hard_sent and time.monotonic() - start >= self.kill_grace:
                await self.pool.run(commands.scancel_hard(jid, scancel))
                hard_sent = True
            elif not hard_sent:
                # Repeated: a job that was pending a moment ago may run now.
                await self.pool.run(commands.scancel(jid, scancel))
            states = await self._states([jid])
            if states is not None:
                state = states.get(jid)
                if state is None or state.ended:
                    break
            await asyncio.sleep(0.2)  # polling a remote state; nothing to wait on
        else:
            logger.warning("job %s: Slurm job %s outlived the kill", job.index, jid)
        if not self.shared:
            await self._fetch(job)


def _write_script_and_placeholder(job: Job, scheduler: str, text: str, name: str) -> None:
    fileio.write_text_sync(job.wrapped_script_file(scheduler), text, mode=0o700)
    fileio.write_text_sync(job.jid_file, f"{_PLACEHOLDER}{name}:\n")
    job._jid = f"{_PLACEHOLDER}{name}:"


def _write_outputs(job: Job, stdout: bytes, stderr: bytes) -> None:
    fileio.write_bytes_sync(job.stdout_file, stdout)
    fileio.write_bytes_sync(job.stderr_file, stderr)


def _write_end(job: Job, rc: str) -> bool:
    """job.rc, then the final status (the wrapper's order), locally."""
    try:
        code = int(rc)
    except ValueError:
        return False
    fileio.write_text_sync(job.rc_file, f"{code}\n")
    status = JobStatus.FINISHED if code == 0 else JobStatus.FAILED
    fileio.write_text_sync(job.status_file, f"{int(status)}\n")
    return True
