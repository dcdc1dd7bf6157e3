"""LocalScheduler: jobs on this machine.

The wrapper runs detached (its own session and process group, stdin from
/dev/null, output to the job's files), so it survives the controller.  The job
id is the wrapper's pid.  A watcher per job notices its exit at once and wakes
the poller, so a job's end is seen within milliseconds, not at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from .. import fileio
from ..errors import ConfigError, JobSubmissionError
from ..job import Job
from ..scheduler import Scheduler, logger


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


class LocalScheduler(Scheduler):
    """Run jobs as detached process groups on this machine."""

    name = "local"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.workdir.is_cloud:
            raise ConfigError(
                f"the local scheduler needs a local workdir, not {str(self.workdir)!r}"
            )
        self._watchers: set[asyncio.Task[None]] = set()
        self._exit_codes: dict[int, int] = {}

    async def submit_job(self, job: Job) -> str:
        job.extra.pop("wrapper_exited", None)
        await self.stage_job_in(job)
        script = await self.wrapped_job_script(job)
        out, err = await asyncio.to_thread(
            _open_outputs, str(job.stdout_file), str(job.stderr_file)
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                str(script),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise JobSubmissionError(f"cannot start bash: {exc}") from exc
        finally:
            os.close(out)
            os.close(err)
        task = asyncio.create_task(self._watch(job, proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return str(proc.pid)

    async def _watch(self, job: Job, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._exit_codes[proc.pid] = code
        if job.jid == str(proc.pid) and job.status.is_active:
            # Look now for lost jobs too: the wrapper is gone.
            job.extra["wrapper_exited"] = code
        self.wakeup.set()

    async def recover_jid(self, job: Job, jid: str | None) -> str | None:
        if not jid:
            text = await fileio.read_text(job.metadir / "job.pid")
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
        proc = await asyncio.to_thread(_process, pid)
        if proc is None or proc[0] in ("Z", "X"):
            return False
        # A reused pid runs something else: it must be this job's wrapper.
        # An empty cmdline is a process still inside execve (just started).
        script = os.fsencode(str(job.wrapped_script_file(self.name)))
        return proc[1] == b"" or script in proc[1]

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

    async def kill_job(self, job: Job) -> None:
        pid = self._pid(job)
        if pid is None or not await self.job_is_running(job):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        if not await wait_pid_gone(pid, self.kill_grace):
            logger.warning(
                "job %s still running %.0fs after TERM: sending KILL",
                job.index,
                self.kill_grace,
            )
        # Whatever of the group is left (children that ignored TERM) dies now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        await wait_pid_gone(pid, 5)

    async def shutdown(self) -> None:
        await super().shutdown()
        for task in list(self._watchers):
            task.cancel()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
