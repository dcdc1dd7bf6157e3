"""The Slurm backend: every login-node operation on a job, for any scheduler.

Two schedulers send jobs to Slurm: ours (:class:`SlurmScheduler`, our Job)
and pipen's (``xqute_ssh_slurm``: xqute's Scheduler with pipen's Job, see
``xqute_ssh.pipen``).  They share this one implementation, which works on
:class:`~xqute_ssh.schedulers.jobref.JobRef` and explicit Slurm ids, never
on a Job class.

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
  mounts it (``shared``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from ... import fileio
from ...errors import ConfigError, SshError
from ...path import SpecPath
from ...ssh import CommandResult, HostPool
from ...ssh.config import DEFAULT_KNOWN_HOSTS
from ...status import JobStatus
from ..jobref import JobRef, log_fetch_failure, write_end, write_outputs
from ..ssh import unshared
from ..ssh.options import parse_servers
from . import commands, options
from .submitter import Submitter

logger = logging.getLogger("xqute_ssh")

#: How the controller writes "submission under way" into job.jid:
#: ``slurm:<job name>:``.  The trailing ":" is the base Scheduler's sign of a
#: launch that may be in flight (not an attempt that started).
PLACEHOLDER = "slurm:"

_PROBE = (
    "echo home=$HOME; for c in \"$@\"; do "
    'if command -v "$c" >/dev/null 2>&1; then echo "has=$c"; fi; done'
)


class SlurmBackend:
    """The login node, Slurm's commands and options; all Slurm I/O goes here.

    Args:
        workdir: the controller's workdir (names the default
            ``remote_workdir``).
        login: the login node, ``"[user@]host[:port]"``.
        conn: connection options for it (``keyfile``, ``known_hosts``, ...).
        shared: the cluster sees each job's metadir at its mounted path, so
            jobs use it in place and nothing is fetched.
        sbatch_options: run-level sbatch options (checked here).
        sbatch_extra: extra ``#SBATCH`` lines.
        commands: ``{"sbatch": ..., "squeue": ..., "scancel": ...}``.
        remote_workdir, keep_remote: where unshared jobs go; keep them there.
        submit_retry_time, submit_batch_size: see :class:`Submitter`.
        kill_grace: seconds between TERM and a hard cancel.
        jobname_prefix: the start of every Slurm job name.
        stopping: tells whether the run stops (refusals are not retried).
        shared_hint: what to do when ``shared`` but the login node does not
            see the workdir (the scheduler knows what its users can change).
    """

    def __init__(
        self,
        workdir: SpecPath,
        *,
        login: str | None,
        conn: Mapping[str, Any],
        shared: bool,
        sbatch_options: Mapping[str, Any],
        sbatch_extra: Sequence[str] | str | None = None,
        commands: Mapping[str, str] | None = None,
        remote_workdir: str | None = None,
        keep_remote: bool = False,
        submit_retry_time: float = 600.0,
        submit_batch_size: int = 100,
        kill_grace: float = 5.0,
        jobname_prefix: str = "slurm",
        stopping: Callable[[], bool] = lambda: False,
        shared_hint: str = "fix mounted_workdir",
    ) -> None:
        if not login or not isinstance(login, str):
            raise ConfigError(
                "the slurm scheduler reaches the cluster over SSH: give its login "
                "node, e.g. scheduler_opts={'login': 'alice@cluster.example.org'}"
            )
        cmds = {"sbatch": "sbatch", "squeue": "squeue", "scancel": "scancel", **(commands or {})}
        for what, cmd in cmds.items():
            if not isinstance(cmd, str) or not cmd.strip():
                raise ConfigError(f"{what} must name the {what} command, got {cmd!r}")
        if submit_batch_size < 1:
            raise ConfigError(f"submit_batch_size must be >= 1, got {submit_batch_size!r}")
        if workdir.is_cloud:
            raise ConfigError("the slurm scheduler needs a local (or mounted) workdir")
        server: dict[str, Any] = {
            "host": login, "known_hosts": DEFAULT_KNOWN_HOSTS, **conn,
            "keep_remote": keep_remote,
        }
        if remote_workdir is not None:
            server["remote_workdir"] = remote_workdir
        (spec,) = parse_servers({"login": server}, {})
        self.spec = spec
        self.login = login
        self.workdir = workdir
        self.shared = shared
        self.sbatch_options = options.normalize(sbatch_options, "slurm scheduler options")
        self.sbatch_extra = options.extra_lines(sbatch_extra, "sbatch_extra")
        self.commands = cmds
        self.kill_grace = kill_grace
        self.jobname_prefix = jobname_prefix
        self.stopping = stopping
        self.shared_hint = shared_hint
        self.pool = HostPool(spec.config)
        self.label = spec.config.label
        self.remote_root: PurePosixPath | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._pending_rm: list[str] = []
        #: job -> the last fetch failure reported (each poll retries; one warning each)
        self._fetch_errors: dict[int, str] = {}
        self.submitter = Submitter(
            self._run_for_submitter,
            self.label,
            sbatch=cmds["sbatch"],
            squeue=cmds["squeue"],
            batch_size=submit_batch_size,
            retry_time=submit_retry_time,
            stopping=stopping,
        )

    def __repr__(self) -> str:
        return f"<SlurmBackend login={self.label} shared={self.shared}>"

    async def _run_for_submitter(self, snippet: str, timeout: float) -> CommandResult:
        return await self.pool.run(snippet, timeout=timeout)

    def open_connections(self) -> int:
        """SSH connections to the login node open now."""
        stats = self.pool.stats()
        return stats.connections + stats.connecting

    async def close(self) -> None:
        """Stop submitting, remove fetched job directories, disconnect."""
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
            if self.shared:
                await self._check_sees_workdir()
            else:
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

    async def _check_sees_workdir(self) -> None:
        """Shared: the login node must see the workdir at its mounted path.

        Jobs write their status there; on a cluster that does not see it
        every job would run and then look lost.  We write a random token
        here and the login node reads it back (compute nodes are assumed
        to mount what the login node mounts, as on virtually every cluster).
        """
        token = secrets.token_hex(16)
        name = f".xqute-fs-check-{token[:12]}"
        local = self.workdir / name
        mounted = PurePosixPath(str(self.workdir.mounted)) / name
        await fileio.mkdir(self.workdir)
        await fileio.write_text(local, token + "\n")
        try:
            reply = await self.pool.run(f"cat -- {shlex.quote(str(mounted))} 2>/dev/null; :")
        finally:
            await fileio.unlink_many([local])
        if reply.stdout.strip() != token:
            raise SshError(
                self.label,
                f"the login node does not see the workdir at {mounted.parent} "
                f"(a file written there here was not found there): {self.shared_hint}",
            )

    async def ready_or_wait(self) -> None:
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
                    or self.stopping()
                    or time.monotonic() + delay > deadline
                ):
                    raise
                logger.warning("%s; retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay)  # back-off before reconnecting
            delay = min(delay * 2, 30.0)

    def job_dir(self, ref: JobRef) -> str:
        """The job's directory as the cluster sees it."""
        if self.shared:
            return str(ref.metadir.mounted)
        assert self.remote_root is not None
        return str(self.remote_root / str(ref.index))

    def directives(self, job_options: Mapping[str, Any] | None, where: str) -> list[str]:
        """``#SBATCH`` lines for a job: the run's options, then the job's own
        (a ``None`` value drops a run-level option)."""
        merged = dict(self.sbatch_options)
        merged.update(options.normalize(job_options, where))
        return options.directives(merged, self.sbatch_extra)

    # ------------------------------------------------------------ submit
    async def prepare(self, ref: JobRef) -> commands.Submission:
        """Render the job for the cluster; keep a local copy of the wrapper
        and write ``slurm:<name>:`` into job.jid (a submission is under way:
        a restarted controller looks before submitting)."""
        await self.ready_or_wait()
        if ref.stage_in or ref.stage_out:
            raise ConfigError(
                f"job {ref.index}: stage_in/stage_out are not supported by the "
                "slurm scheduler yet; put inputs on the cluster's filesystem"
            )
        job_dir = self.job_dir(ref)
        text = ref.render(str(PurePosixPath(job_dir).parent), job_dir, 0)
        name = (
            f"{self.jobname_prefix}-{workdir_key(ref.workdir)}-{ref.index}-"
            f"{secrets.token_hex(3)}"
        )
        await fileio.to_thread(_write_script_and_placeholder, ref, text, name)
        return commands.Submission(
            ref.index, job_dir, text, name, script_name=ref.script_name
        )

    async def submit(self, sub: commands.Submission) -> str:
        """The Slurm id of a prepared job; JobSubmissionError if refused."""
        return await self.submitter.submit(sub)

    async def recover_jid(self, ref: JobRef, jid: str | None) -> str | None:
        """A submission cut short (``jid`` is the placeholder): its id file
        on the cluster, or a Slurm job with its unique name."""
        if jid and jid.startswith(PLACEHOLDER) and jid.endswith(":"):
            name = jid[len(PLACEHOLDER):-1]
            await self.ensure_ready()
            id_file = shlex.quote(f"{self.job_dir(ref)}/{commands.ID_FILE}")
            reply = await self.pool.run(
                f"i=; read -r i < {id_file} 2>/dev/null; [ -n \"$i\" ] && echo \"$i\" || "
                f"{shlex.quote(self.commands['squeue'])} -h -t all "
                f"-n {shlex.quote(name)} -o %i"
            )
            words = reply.stdout.split()
            jid = words[0] if words and words[0].isdigit() else None
            if jid:
                logger.info("job %s: found Slurm job %s from an earlier run", ref.index, jid)
        return jid

    # -------------------------------------------------------------- poll
    async def states(self, ids: Sequence[str]) -> dict[str, commands.SlurmState] | None:
        """Slurm's view of these jobs; None when squeue failed."""
        reply = await self.pool.run(commands.squeue(ids, self.commands["squeue"]))
        states, _ = commands.parse_squeue(reply.stdout)
        return states

    async def is_running(self, jid: str | None) -> bool:
        """Pending or running in Slurm (squeue failing raises: the caller
        then re-attaches rather than risk a second copy)."""
        if not jid or not jid.isdigit():
            return False
        await self.ensure_ready()
        states = await self.states([jid])
        if states is None:
            raise SshError(self.label, "squeue failed (is slurmctld up?)")
        state = states.get(jid)
        return state is not None and not state.ended

    async def ended_unobserved(self, ref: JobRef) -> JobStatus | None:
        """Unshared: the final status an attempt recorded on the cluster
        while nobody watched (its files fetched), else None."""
        d = self.job_dir(ref)
        reply = await self.pool.run(
            f"[ -e {shlex.quote(d + '/job.pid')} ] && "
            f"cat -- {shlex.quote(d + '/job.status')} 2>/dev/null"
        )
        status = JobStatus.parse(reply.stdout)
        if status is None or not status.is_terminal:
            return None
        return status if await self._fetch(ref) else None

    async def refresh(
        self, jobs: Sequence[tuple[JobRef, str | None, bool]]
    ) -> list[JobStatus | None]:
        """One round trip for (job, Slurm id, still SUBMITTED) triples: squeue
        for every job, then each status file.  An ended job has its files
        fetched (unshared) and Slurm's word added before it is reported; a
        job Slurm ended without the wrapper recording an end is FAILED (its
        end is written locally).  None: no news."""
        result: list[JobStatus | None] = [None] * len(jobs)
        tracked = [
            (i, ref, jid, submitted)
            for i, (ref, jid, submitted) in enumerate(jobs)
            if jid and jid.isdigit()
        ]
        if not tracked:
            return result
        try:
            await self.ensure_ready()
        except SshError as exc:
            logger.debug("%s: cannot poll: %s", self.label, exc)
            return result
        remove, self._pending_rm = self._pending_rm, []
        snippet = (
            commands.squeue([jid for _, _, jid, _ in tracked], self.commands["squeue"])
            + "; "
            + unshared.read_statuses(
                [(ref.index, self.job_dir(ref)) for _, ref, _, _ in tracked], remove
            )
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

        async def one(i: int, ref: JobRef, jid: str, submitted: bool) -> None:
            status = JobStatus.parse(files.get(ref.index, ""))
            state = states.get(jid) if states is not None else None
            if status is not None and status.is_terminal:
                if state is not None and not state.ended:
                    # The wrapper is done but Slurm has not closed the job:
                    # wait for its verdict (a time limit or a cancel TERMs
                    # the wrapper, which records an end before Slurm says why).
                    return
                if not await self._finish(ref, jid, state):
                    return
                result[i] = status
            elif states is not None and (state is None or state.ended):
                # Slurm says the job is over, but the wrapper never wrote an
                # end (killed hard, node lost, never started): a failure.
                if await self._finish(ref, jid, state, lost=True):
                    result[i] = JobStatus.FAILED
            elif status == JobStatus.RUNNING or (state and state.state == "RUNNING"):
                if submitted and not self.shared:
                    await fileio.write_text(ref.status_file, f"{int(JobStatus.RUNNING)}\n")
                result[i] = JobStatus.RUNNING

        await asyncio.gather(*(one(*item) for item in tracked))
        return result

    async def _finish(
        self, ref: JobRef, jid: str, state: commands.SlurmState | None, *, lost: bool = False
    ) -> bool:
        """Bring an ended job's files home and add Slurm's word on it."""
        if not self.shared and not await self._fetch(ref, lost=lost):
            return False
        note = None
        if state is not None and (state.slurm_failed or lost):
            note = (
                f"slurm: job {jid} ended {state.state}"
                + (f" (reason: {state.reason})" if state.reason not in ("", "None") else "")
            )
        elif lost:
            note = f"slurm: job {jid} is gone from Slurm's queue without a result"
        if note:
            try:
                await fileio.append_text(ref.stderr_file, note + "\n")
                if lost:
                    await fileio.to_thread(write_end, ref, "-1")
            except OSError as exc:
                logger.error("job %s: cannot record its end: %s", ref.index, exc)
        return True

    async def _fetch(self, ref: JobRef, *, lost: bool = False) -> bool:
        """rc, stdout and stderr from the cluster into the local metadir."""
        d = self.job_dir(ref)
        snippet, mark = unshared.fetch_small(d)
        try:
            reply = await self.pool.run(snippet)
            fetched = unshared.parse_fetch(reply.stdout, mark)
            if fetched is None:
                return lost  # a lost job may have no files at all
            if fetched.stdout is None or fetched.stderr is None:
                await self._stream_outputs(ref, d)
            else:
                await fileio.to_thread(write_outputs, ref, fetched.stdout, fetched.stderr)
        except (SshError, OSError) as exc:
            self._fetch_errors[ref.index] = log_fetch_failure(
                ref.index, self.label, exc, self._fetch_errors.get(ref.index)
            )
            return False
        self._fetch_errors.pop(ref.index, None)
        if not lost and not await fileio.to_thread(write_end, ref, fetched.rc):
            return False
        self._pending_rm.append(d + "/job.pid" if self.spec.keep_remote else d)
        return True

    async def _stream_outputs(self, ref: JobRef, d: str) -> None:
        async with self.pool.connection() as conn, conn.start_sftp_client() as sftp:
            for name, dest in (("job.stdout", ref.stdout_file), ("job.stderr", ref.stderr_file)):
                if await sftp.exists(f"{d}/{name}"):
                    await sftp.get(f"{d}/{name}", str(dest))

    # -------------------------------------------------------------- kill
    async def kill(self, ref: JobRef, jid: str | None) -> None:
        """scancel TERM (the wrapper records the end), hard cancel after the
        grace period; returns once Slurm calls the job ended."""
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
            states = await self.states([jid])
            if states is not None:
                state = states.get(jid)
                if state is None or state.ended:
                    break
            await asyncio.sleep(0.2)  # polling a remote state; nothing to wait on
        else:
            logger.warning("job %s: Slurm job %s outlived the kill", ref.index, jid)
        if not self.shared:
            await self._fetch(ref)


def workdir_key(workdir: SpecPath) -> str:
    """A short hash of the workdir, in every Slurm job name: tells one
    controller workdir's jobs from another's in ``squeue``."""
    return hashlib.sha256(str(workdir.path).encode()).hexdigest()[:8]


def placeholder(sub: commands.Submission) -> str:
    """What job.jid holds while ``sub`` is being submitted."""
    return f"{PLACEHOLDER}{sub.name}:"


def _write_script_and_placeholder(ref: JobRef, text: str, name: str) -> None:
    fileio.write_text_sync(ref.script_file, text, mode=0o700)
    fileio.write_text_sync(ref.jid_file, f"{PLACEHOLDER}{name}:\n")
