"""pipen schedulers backed by xqute_ssh: ``xqute_ssh``, ``xqute_ssh_local``
and ``xqute_ssh_slurm``.

pipen accepts only subclasses of ``xqute.Scheduler`` and drives them with
xqute's own orchestrator, pipen's Job (an ``xqute.Job`` with ``__slots__``)
and plugins on ``Simplug("xqute")``.  So these classes are xqute Schedulers
(with pipen's ``SchedulerPostInit``, as pipen's own schedulers) whose
``submit_job`` / ``kill_job`` / ``job_is_running`` go through xqute_ssh's one
implementation: :class:`~xqute_ssh.schedulers.ssh.backend.SshBackend` for
SSH hosts, :class:`~xqute_ssh.schedulers.slurm.backend.SlurmBackend` for
Slurm behind a login node, and the local scheduler's process helpers for
this machine.

What differs from xqute's own wrapper (and why), all through public methods:

* Jobs run our wrapper (``wrapper.sh``: values quoted once, no sleeps), with
  pipen plugins' ``on_jobcmd_*`` code in it (``$cmd`` and ``$rc`` as in xqute).
* job.status says SUBMITTED before the job starts; xqute's SUBMITTED
  transition does not write it again (a fast job may already have written
  RUNNING or its end: xqute would overwrite that, and poll forever).
* After a failure under ``error_strategy="halt"`` no further job is started.
* SSH connections are closed when the process's jobs are all done, or after
  they were killed: xqute's orchestrator never calls a shutdown.
* Slurm: one ``squeue`` per poll cycle for all active jobs, before xqute
  reads their status files (xqute would ask about each job on its own).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from pipen.scheduler import SchedulerPostInit
    from xqute import Scheduler as XquteScheduler
    from xqute.defaults import JobErrorStrategy
    from xqute.defaults import JobStatus as XqStatus
    from xqute.plugin import plugin as xqute_plugin
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "xqute_ssh.pipen needs pipen (and xqute): pip install 'xqute-ssh[pipen]'"
    ) from exc

from .. import fileio
from ..errors import ConfigError, unknown_names
from ..path import SpecPath
from ..scheduler import DEFAULT_SHEBANG
from ..scheduler import Scheduler as OurScheduler
from ..schedulers.jobref import JobRef
from ..schedulers.local import kill_wrapper, start_wrapper, wrapper_runs
from ..schedulers.slurm.backend import SlurmBackend
from ..schedulers.ssh.backend import SshBackend
from ..schedulers.ssh.options import CONNECTION_KEYS, parse_servers, pop_server_defaults
from ..ssh.health import HOST_COOLDOWN, PROBE_BACKOFF, PROBE_MAX_INTERVAL
from ..status import JobStatus
from ..wrapper import WrapperSpec, render
from .render import job_envs, join_code, prep_code

logger = logging.getLogger("xqute_ssh")

#: Options xqute's Scheduler takes (pipen passes them from its config).
XQUTE_OPTIONS = frozenset(
    name
    for name in inspect.signature(XquteScheduler.__init__).parameters
    if name not in ("self", "kwargs")
) | {"mounted_workdir"}


def _ours(path: Any) -> SpecPath:
    """An xqute SpecPath (local path + the path jobs see) as ours."""
    local, mounted = str(path), str(getattr(path, "mounted", path))
    return SpecPath(local, mounted if mounted != local else None)


def _check_options(name: str, kwargs: Mapping[str, Any], own: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - XQUTE_OPTIONS)
    if unknown:
        known = set(own) | XQUTE_OPTIONS
        raise ConfigError(
            f"unknown scheduler_opts for the {name} scheduler: "
            f"{unknown_names(unknown, known)}; known: {', '.join(sorted(known))}"
        )


#: Our Scheduler's options that pipen's xqute orchestrator has no use for.
_OURS_ONLY = (
    frozenset(inspect.signature(OurScheduler.__init__).parameters)
    - {"self", "args", "kwargs", "kill_grace"}
    - XQUTE_OPTIONS
)
#: Options of Xqute("slurm") that mean job files live apart from the workdir.
_UNSHARED_ONLY = frozenset({"remote_workdir", "keep_remote"})


def _prepare_attempt(metadir: Path) -> None:
    """Before a launch: no stale job.pid (it would be adopted), SUBMITTED."""
    fileio.unlink_sync(metadir / "job.pid")
    fileio.write_text_sync(metadir / "job.status", f"{int(JobStatus.SUBMITTED)}\n")


class _PipenScheduler(SchedulerPostInit, XquteScheduler):  # type: ignore[misc]
    """What both pipen schedulers share: our wrapper, the SUBMITTED rule,
    halt, and the end-of-run clean-up."""

    name = "xqute_ssh_base"

    def __init__(self, *args: Any, kill_grace: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kill_grace <= 0:
            raise ConfigError(f"kill_grace must be > 0 seconds, got {kill_grace!r}")
        self.kill_grace = float(kill_grace)
        #: Set once a job failed under error_strategy="halt": start no more.
        self.halted = False

    # ------------------------------------------------------------- wrapper
    def local_workdir(self) -> SpecPath:
        """The current workdir (pipen appends the process name after
        ``post_init``: always read it at use, never keep it)."""
        workdir = _ours(self.workdir)
        if workdir.is_cloud:
            raise ConfigError(
                f"the {self.name} scheduler needs a local workdir, not {workdir}"
            )
        return workdir

    def render_wrapper(
        self, job: Any, workdir: str, job_dir: str, heartbeat: float = 0
    ) -> str:
        """The wrapper for ``job`` on a host that sees the workdir and the
        job's directory at these paths (touching job.pid every ``heartbeat``
        seconds, 0: never)."""
        cmd = [str(c) for c in job.cmd]
        spec = WrapperSpec(
            cmd=cmd,
            shebang=self.wrapper_shebang(job),
            job_index=int(job.index),
            metadir=workdir,
            job_metadir=job_dir,
            envs=job_envs(job.envs),
            hook_init=join_code(_codes(xqute_plugin.hooks.on_jobcmd_init(self, job))),
            hook_prep=prep_code(
                cmd,
                self.prescript,
                join_code(_codes(xqute_plugin.hooks.on_jobcmd_prep(self, job))),
            ),
            hook_end=join_code(
                [*_codes(xqute_plugin.hooks.on_jobcmd_end(self, job)), self.postscript]
            ),
            timeout=float(self.timeout or 0),
            kill_grace=self.kill_grace,
            cwd=self.cwd,
            heartbeat=heartbeat,
        )
        return render(spec)

    def wrapper_shebang(self, job: Any) -> str:
        """The wrapper's first lines (a backend may add directives)."""
        return DEFAULT_SHEBANG

    def script_name(self) -> str:
        return f"job.wrapped.{self.name}"

    def job_ref(self, job: Any) -> JobRef:
        """What a backend needs from a pipen job."""
        return JobRef(
            index=int(job.index),
            workdir=self.local_workdir(),
            metadir=_ours(job.metadir),
            render=lambda workdir, job_dir, beat: self.render_wrapper(
                job, workdir, job_dir, beat
            ),
            script_name=self.script_name(),
        )

    async def wrapped_job_script(self, job: Any) -> Any:
        """The wrapper's path.  Written at submission; never rewritten here
        (xqute calls this for a log line while the job may be running it)."""
        path = job.metadir / self.script_name()
        if not await fileio.exists(Path(str(path))):
            workdir = self.local_workdir()
            text = self.render_wrapper(
                job, str(workdir.mounted), str(_ours(job.metadir).mounted)
            )
            await fileio.write_text(Path(str(path)), text, mode=0o700)
        return path

    # --------------------------------------------------------- transitions
    async def transition_job_status(
        self,
        job: Any,
        new_status: int,
        old_status: int | None = None,
        flush: bool = True,
        rc: str | None = None,
        error_msg: str | None = None,
        is_killed: bool = False,
    ) -> None:
        if new_status == XqStatus.SUBMITTED:
            flush = False  # written before the launch; the job writes next
        if new_status == XqStatus.FAILED and self.error_strategy == JobErrorStrategy.HALT:
            self.halted = True
        await super().transition_job_status(
            job, new_status, old_status, flush, rc, error_msg, is_killed
        )
        if new_status in (XqStatus.FINISHED, XqStatus.FAILED):
            self.job_ended(job, ok=new_status == XqStatus.FINISHED and not is_killed)

    def job_ended(self, job: Any, ok: bool) -> None:
        """A job reached a final status (backends free its slot)."""

    async def submit_job_and_update_status(self, job: Any) -> None:
        if self.halted:
            logger.info("job %s not started: the run halts after a failure", job.index)
            return
        await super().submit_job_and_update_status(job)

    async def prepare_attempt(self, job: Any) -> None:
        await fileio.to_thread(_prepare_attempt, Path(str(job.metadir)))

    # ------------------------------------------------------------- the end
    async def check_all_done(self, jobs: list[Any], polling_counter: int) -> bool:
        done = await super().check_all_done(jobs, polling_counter)
        if done:
            await self.close()
        return done

    async def kill_running_jobs(self, jobs: list[Any]) -> None:
        try:
            await super().kill_running_jobs(jobs)
        finally:
            await self.close()

    async def close(self) -> None:
        """Release what the scheduler holds once its jobs are done or killed."""


class PipenSshScheduler(_PipenScheduler):
    """pipen's ``scheduler="xqute_ssh"``: jobs on SSH hosts.

    ``scheduler_opts`` are the options of ``Xqute("ssh")``: ``servers``
    (required), ``host_cooldown``, ``probe_backoff``, ``probe_max_interval``,
    ``lost_after``, ``kill_grace``,
    ``forks_per_server`` and any server option as a default for every server.
    Hosts must see the workdir (directly or through ``mounted_workdir``):
    pipen's jobs read their inputs and write their outputs at its paths.
    """

    name = "xqute_ssh"

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
        _check_options(
            self.name,
            {k: v for k, v in kwargs.items() if k != "kill_grace"},
            ["servers", "host_cooldown", "probe_backoff", "probe_max_interval",
             "lost_after", "kill_grace", "forks_per_server",
             *sorted(CONNECTION_KEYS), "shared_fs"],
        )
        super().__init__(*args, **kwargs)
        if not servers:
            raise ConfigError(
                "the xqute_ssh scheduler needs servers: scheduler_opts="
                '{"servers": {"name": {"host": ..., "user": ...}}} or ["user@host"]'
            )
        self.servers = parse_servers(servers, server_defaults)
        self.backend = SshBackend(
            self.servers,
            self.forks,
            host_cooldown=host_cooldown,
            probe_backoff=probe_backoff,
            probe_max_interval=probe_max_interval,
            lost_after=lost_after,
            kill_grace=self.kill_grace,
            require_shared=True,
            stopping=lambda: self.halted,
        )
        if self.forks > self.backend.capacity:
            logger.warning(
                "forks=%d is more than the servers' slots together (%d): "
                "at most %d jobs will run at once",
                self.forks, self.backend.capacity, self.backend.capacity,
            )
            self.forks = self.backend.capacity

    def __repr__(self) -> str:
        return f"<PipenSshScheduler [{', '.join(self.backend.hosts)}] forks={self.forks}>"

    def host_of(self, job: Any) -> str | None:
        """The server the job's current (or last) attempt ran on."""
        return self.backend.host_of(int(job.index))

    async def submit_job(self, job: Any) -> str:
        await self.prepare_attempt(job)
        return await self.backend.submit(self.job_ref(job))

    async def kill_job(self, job: Any) -> None:
        await self.backend.kill(self.job_ref(job), _jid(await job.get_jid()))

    async def job_is_running(self, job: Any) -> bool:
        jid = _jid(await job.get_jid())
        running = await self.backend.is_running(self.job_ref(job), jid)
        if running:
            self.backend.note_running(jid, int(job.index))
        return running

    async def job_fails_before_running(self, job: Any) -> bool:
        ref = self.job_ref(job)
        (reason,) = await self.backend.lost_reasons([(ref, _jid(await job.get_jid()))])
        if reason is None:
            return False
        # It may have ended between xqute's read and ours.
        status = JobStatus.parse(await fileio.read_text(ref.status_file) or "")
        if status is not None and status.is_terminal:
            return False
        logger.warning("job %s: %s", job.index, reason)
        return True

    async def retry_job(self, job: Any) -> None:
        self.backend.note_retry(int(job.index))
        await super().retry_job(job)

    def job_ended(self, job: Any, ok: bool) -> None:
        self.backend.release(int(job.index), ok=ok)

    def open_connections(self) -> int:
        """SSH connections this scheduler holds open now."""
        return self.backend.open_connections()

    async def close(self) -> None:
        await self.backend.close()


class PipenSlurmScheduler(_PipenScheduler):
    """pipen's ``scheduler="xqute_ssh_slurm"``: each job a Slurm job,
    submitted on the cluster's login node over SSH.

    ``scheduler_opts`` are the options of ``Xqute("slurm")``: ``login``
    (required), connection options (``keyfile``, ``known_hosts``, ``user``,
    ``port``, ``proxy_jump`` ...), ``sbatch`` / ``squeue`` / ``scancel``,
    ``sbatch_extra``, ``submit_retry_time``, ``submit_batch_size``,
    ``kill_grace``; any other name is an sbatch option (``partition``,
    ``time``, ``mem``, ``cpus_per_task`` ...).  The cluster must see the
    workdir (at the same path, or at ``mounted_workdir``) and the pipeline's
    other paths: pipen's jobs read and write them directly.
    """

    name = "xqute_ssh_slurm"

    def __init__(
        self,
        *args: Any,
        login: str | None = None,
        sbatch: str = "sbatch",
        squeue: str = "squeue",
        scancel: str = "scancel",
        sbatch_extra: Sequence[str] | str | None = None,
        submit_retry_time: float = 600.0,
        submit_batch_size: int = 100,
        **kwargs: Any,
    ) -> None:
        unsupported = sorted(set(kwargs) & (_OURS_ONLY | _UNSHARED_ONLY))
        if unsupported:
            raise ConfigError(
                f"{', '.join(unsupported)}: not an option of the {self.name} scheduler "
                "(pipen's jobs read and write the pipeline's own paths, so the cluster "
                "must see the workdir, at mounted_workdir if elsewhere; xqute polls "
                "at its own pace); remove it from scheduler_opts"
            )
        conn = {k: kwargs.pop(k) for k in list(kwargs) if k in CONNECTION_KEYS - {"host"}}
        sbatch_opts = {
            k: kwargs.pop(k) for k in list(kwargs) if k not in XQUTE_OPTIONS | {"kill_grace"}
        }
        super().__init__(*args, **kwargs)
        self.backend = SlurmBackend(
            _ours(self.workdir),
            login=login,
            conn=conn,
            shared=True,
            sbatch_options=sbatch_opts,
            sbatch_extra=sbatch_extra,
            commands={"sbatch": sbatch, "squeue": squeue, "scancel": scancel},
            submit_retry_time=submit_retry_time,
            submit_batch_size=submit_batch_size,
            kill_grace=self.kill_grace,
            jobname_prefix=self.jobname_prefix,
            stopping=lambda: self.halted,
            shared_hint=(
                "pipen's jobs read and write the pipeline's paths, so run it on a "
                "machine that shares the cluster's filesystem, and give "
                "mounted_workdir if the cluster sees the workdir at another path"
            ),
        )
        #: Slurm ids whose end the backend already reported (noted once).
        self._ended: set[str] = set()

    def __repr__(self) -> str:
        return f"<PipenSlurmScheduler login={self.backend.label} forks={self.forks}>"

    def wrapper_shebang(self, job: Any) -> str:
        """The shebang and the run's ``#SBATCH`` lines (per process: pipen
        merges a Proc's own ``scheduler_opts`` over the pipeline's)."""
        directives = self.backend.directives(None, f"job {job.index}")
        return "\n".join([DEFAULT_SHEBANG, *directives])

    async def submit_job(self, job: Any) -> str:
        await self.prepare_attempt(job)
        sub = await self.backend.prepare(self.job_ref(job))
        return await self.backend.submit(sub)

    async def job_is_running(self, job: Any) -> bool:
        return await self.backend.is_running(_jid(await job.get_jid()))

    async def job_fails_before_running(self, job: Any) -> bool:
        # check_all_done asked Slurm about every active job already; a job
        # Slurm ended without a result has FAILED in its status file.
        return False

    async def check_all_done(self, jobs: list[Any], polling_counter: int) -> bool:
        """One squeue for every active job, then xqute reads the files.

        A job Slurm ended (time limit, node failure, cancelled) without the
        wrapper writing its end gets FAILED, rc -1 and Slurm's state and
        reason in job.stderr here, before xqute reads its status."""
        active = [j for j in jobs if j._status in (XqStatus.SUBMITTED, XqStatus.RUNNING)]
        items = []
        for job in active:
            jid = _jid(await job.get_jid())
            if jid is not None and jid not in self._ended:
                items.append((self.job_ref(job), jid, False))
        if items:
            for (_, jid, _), status in zip(items, await self.backend.refresh(items), strict=True):
                if status is not None and status.is_terminal:
                    self._ended.add(jid)
        return await super().check_all_done(jobs, polling_counter)

    async def kill_job(self, job: Any) -> None:
        await self.backend.kill(self.job_ref(job), _jid(await job.get_jid()))

    def open_connections(self) -> int:
        """SSH connections to the login node open now."""
        return self.backend.open_connections()

    async def close(self) -> None:
        await self.backend.close()


class PipenLocalScheduler(_PipenScheduler):
    """pipen's ``scheduler="xqute_ssh_local"``: jobs on this machine, run
    like xqute_ssh's local scheduler runs them (detached process groups, our
    wrapper, no sleeps)."""

    name = "xqute_ssh_local"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _check_options(
            self.name, {k: v for k, v in kwargs.items() if k != "kill_grace"}, ["kill_grace"]
        )
        super().__init__(*args, **kwargs)
        self._watchers: set[asyncio.Task[int]] = set()

    def _script(self, job: Any) -> Path:
        return Path(str(job.metadir)) / self.script_name()

    async def submit_job(self, job: Any) -> str:
        await self.prepare_attempt(job)
        metadir = _ours(job.metadir)
        workdir = self.local_workdir()
        text = self.render_wrapper(job, str(workdir.mounted), str(metadir.mounted))
        script = self._script(job)
        await fileio.write_text(script, text, mode=0o700)
        proc = await start_wrapper(script, Path(str(metadir.path)))
        # Reap it when it exits (it is our child).
        task = asyncio.create_task(proc.wait())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return str(proc.pid)

    async def _pid(self, job: Any) -> int | None:
        try:
            return int(str(await job.get_jid()).strip())
        except ValueError:
            return None

    async def job_is_running(self, job: Any) -> bool:
        pid = await self._pid(job)
        if pid is None or pid <= 0:
            return False
        return await asyncio.to_thread(wrapper_runs, pid, self._script(job))

    async def job_fails_before_running(self, job: Any) -> bool:
        if await self.job_is_running(job):
            return False
        status = JobStatus.parse(
            await fileio.read_text(Path(str(job.metadir)) / "job.status") or ""
        )
        return status is None or not status.is_terminal

    async def kill_job(self, job: Any) -> None:
        pid = await self._pid(job)
        if pid is not None and await self.job_is_running(job):
            await kill_wrapper(pid, self.kill_grace, int(job.index))

    async def close(self) -> None:
        if self._watchers:
            await asyncio.gather(*list(self._watchers), return_exceptions=True)


def _codes(result: Any) -> list[str]:
    """The bash snippets plugins returned (xqute: a list, None for none)."""
    if result is None:
        return []
    if isinstance(result, str):
        return [result]
    return [str(code) for code in result if code]


def _jid(value: Any) -> str | None:
    """xqute reads job.jid without stripping it."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


__all__ = ["PipenLocalScheduler", "PipenSlurmScheduler", "PipenSshScheduler"]
