"""LocalScheduler: jobs on this machine.

The wrapper runs detached (its own session and process group, stdin from
/dev/null, output to the job's files), so it survives the controller.  The job
id is the wrapper's pid.  A watcher per job notices its exit at once and wakes
the poller, so a job's end is seen within milliseconds, not at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from .. import fileio
from ..errors import JobSubmissionError
from ..job import Job
from ..path import SpecPath
from ..scheduler import Scheduler, logger
from ..status import JobStatus
from ..wrapper import WrapperSpec


def _open_outputs(stdout: str, stderr: str) -> tuple[int, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(stdout, flags, 0o644)
    try:
        err = os.open(stderr, flags, 0o644)
    except BaseException:
        os.close(out)
        raise
    return out, err


def _process(pid: int) -> tuple[str, bytes] | None:
    """(state, cmdline) of a process, None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state, cmdline


async def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait (without polling) until process ``pid`` exits; False on timeout.

    Uses a pidfd, which works for processes that are not our children too
    (a job re-attached after a restart).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        async with asyncio.timeout(timeout):
            await gone.wait()
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def start_wrapper(script: Path, run_dir: Path) -> asyncio.subprocess.Process:
    """Start ``bash script`` detached: its own session and process group,
    stdin /dev/null, output in ``run_dir``'s job.stdout / job.stderr."""
    out, err = await asyncio.to_thread(
        _open_outputs, str(run_dir / "job.stdout"), str(run_dir / "job.stderr")
    )
    try:
        return await asyncio.create_subprocess_exec(
            "bash",
            str(script),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
            env=_wrapper_env(),
        )
    except OSError as exc:
        raise JobSubmissionError(f"cannot start bash: {exc}") from exc
    finally:
        os.close(out)
        os.close(err)


def wrapper_runs(pid: int, script: Path) -> bool:
    """Whether process ``pid`` is alive and is the wrapper ``script`` (a
    reused pid runs something else).  Blocking: call it in a thread."""
    proc = _process(pid)
    if proc is None or proc[0] in ("Z", "X"):
        return False
    # An empty cmdline is a process still inside execve (just started).
    return proc[1] == b"" or os.fsencode(str(script)) in proc[1]


async def kill_wrapper(pid: int, grace: float, index: int) -> None:
    """TERM the wrapper's process group, KILL what is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    if not await wait_pid_gone(pid, grace):
        logger.warning(
            "job %s still running %.0fs after TERM: sending KILL", index, grace
        )
    # Whatever of the group is left (children that ignored TERM) dies now.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    await wait_pid_gone(pid, 5)


class LocalScheduler(Scheduler):
    """Run jobs as detached process groups on this machine."""

    name = "local"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._watchers: set[asyncio.Task[None]] = set()
        #: With a cloud workdir, jobs run in a local mirror directory and
        #: their files are copied to the workdir as they change.
        self.mirror: Path | None = None
        if self.workdir.is_cloud:
            self.mirror = mirror_dir(str(self.workdir.path))

    # --------------------------------------------------------- run directory
    def run_dir(self, job: Job) -> Path:
        """Where the job's wrapper writes its files on this machine."""
        if self.mirror is not None:
            return self.mirror / str(job.index)
        return Path(str(job.metadir.path))

    def wrapper_spec(self, job: Job) -> WrapperSpec:
        spec = super().wrapper_spec(job)
        if self.mirror is not None:
            spec.metadir = str(self.mirror)
            spec.job_metadir = str(self.run_dir(job))
        return spec

    async def submit_job(self, job: Job) -> int:
        job.extra.pop("wrapper_exited", None)
        await self.stage_job_in(job)
        if self.mirror is None:
            script = Path(str(await self.wrapped_job_script(job)))
        else:
            # The script and the job's files live in the mirror; the workdir
            # gets a copy of the script for the record.
            script = self.run_dir(job) / job.wrapped_script_file(self.name).name
            text = self.wrap_job_script(job)
            await asyncio.to_thread(_prepare_mirror, self.run_dir(job), script, text)
            await fileio.write_text(job.wrapped_script_file(self.name), text)
        proc = await start_wrapper(script, self.run_dir(job))
        task = asyncio.create_task(self._watch(job, proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return proc.pid

    async def _watch(self, job: Job, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if job.jid == str(proc.pid) and job.status.is_active:
            # Look now for lost jobs too: the wrapper is gone.
            job.extra["wrapper_exited"] = code
        self.wakeup.set()

    def pid_file(self, job: Job) -> SpecPath:
        return SpecPath(self.run_dir(job) / "job.pid")

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        if not jid:
            text = await fileio.read_text(self.run_dir(job) / "job.pid")
            jid = text.split()[0] if text and text.split() else None
        return await super().recover_jid(job, jid)

    def _pid(self, job: Job) -> int | None:
        try:
            return int(job.jid or "")
        except ValueError:
            return None

    async def job_is_running(self, job: Job) -> bool:
        jid = await job.get_jid()
        try:
            pid = int(jid or "")
        except ValueError:
            return False
        script = self.run_dir(job) / job.wrapped_script_file(self.name).name
        return await asyncio.to_thread(wrapper_runs, pid, script)

    async def job_fails_before_running(self, job: Job) -> bool:
        # A job id that is no pid is not ours to judge.
        try:
            int(await job.get_jid() or "")
        except ValueError:
            return False
        return await super().job_fails_before_running(job)

    async def jobs_fail_before_running(self, jobs: list[Job]) -> list[bool]:  # type: ignore[override]
        out = []
        for job in jobs:
            code = job.extra.pop("wrapper_exited", None)
            if code is not None:
                job.extra["lost_reason"] = (
                    f"the job's wrapper exited with code {code} without writing a "
                    "final status (see job.stderr)"
                )
                out.append(True)
            else:
                out.append(not await self.job_is_running(job))
        return out

    async def check_all_done(self, jobs: list[Job], polling_counter: int) -> bool:  # type: ignore[override]
        done = await super().check_all_done(jobs, polling_counter)
        # A wrapper that exited is checked at once, not every recheck_interval.
        exited = [j for j in jobs if j.status.is_active and "wrapper_exited" in j.extra]
        if exited:
            await self._check_lost(exited)
        return done

    # ------------------------------------------------- cloud workdir mirror
    async def refresh_job_statuses(self, jobs: Sequence[Job]) -> list[JobStatus | None]:
        """With a cloud workdir: read the mirror, and copy a job's files to
        the workdir when its status changes (all of them once it ended)."""
        if self.mirror is None:
            return await super().refresh_job_statuses(jobs)
        texts = await fileio.read_many([self.run_dir(j) / "job.status" for j in jobs])
        statuses = [JobStatus.parse(t) if t is not None else None for t in texts]
        for job, status in zip(jobs, statuses, strict=True):
            if status is None or status == job.status:
                continue
            if status.is_terminal:
                await asyncio.to_thread(_sync_end, self.run_dir(job), job)
            elif status == JobStatus.RUNNING:
                await fileio.write_text(job.status_file, f"{int(status)}\n")
        return statuses

    async def ended_unobserved(self, job: Job) -> JobStatus | None:
        if self.mirror is None:
            return await super().ended_unobserved(job)
        run_dir = self.run_dir(job)
        status = JobStatus.parse(await fileio.read_text(run_dir / "job.status") or "")
        if status is not None and status.is_terminal:
            await asyncio.to_thread(_sync_end, run_dir, job)
            return status
        return None

    async def kill_job(self, job: Job) -> None:
        await self._kill(job)
        if self.mirror is not None:
            # What the job wrote before it died goes to the workdir too.
            await asyncio.to_thread(_sync_end, self.run_dir(job), job)

    async def _kill(self, job: Job) -> None:
        pid = self._pid(job)
        if pid is None or not await self.job_is_running(job):
            return
        await kill_wrapper(pid, self.kill_grace, job.index)

    async def shutdown(self) -> None:
        await super().shutdown()
        for task in list(self._watchers):
            task.cancel()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)


def _wrapper_env() -> dict[str, str]:
    """Our environment, with BASH_ENV moved aside for the job (wrapper.sh)."""
    env = dict(os.environ)
    if "BASH_ENV" in env:
        env["XQ_BASH_ENV"] = env.pop("BASH_ENV")
    return env


def mirror_dir(workdir: str) -> Path:
    """``~/.cache/xqute-ssh/local/<key>``: one mirror per cloud workdir."""
    key = hashlib.sha256(workdir.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "xqute-ssh" / "local" / key


def _prepare_mirror(run_dir: Path, script: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("job.pid", "job.status", "job.rc", "job.stdout", "job.stderr"):
        fileio.unlink_sync(run_dir / name)
    fileio.write_text_sync(script, text, mode=0o700)


def _sync_end(run_dir: Path, job: Job) -> None:
    """Copy an ended (or killed) job's files to the workdir, streamed; the
    status goes last, so a reader never sees an end without its rc and
    output.  The mirror directory goes once all is copied."""
    if not run_dir.exists():
        return
    for name, dest in (
        ("job.stdout", job.stdout_file),
        ("job.stderr", job.stderr_file),
        ("job.rc", job.rc_file),
        ("job.status", job.status_file),
    ):
        if (run_dir / name).exists():
            fileio.upload_sync(run_dir / name, dest)
    shutil.rmtree(run_dir, ignore_errors=True)
