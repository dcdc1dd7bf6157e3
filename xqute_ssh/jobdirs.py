"""Job directories made in the background, many per worker-thread trip.

``Xqute.feed`` used to make each job's directory before returning: one trip
to a worker thread per job, ~0.2 ms of CPU each (waking the thread and
handing the GIL back and forth cost far more than the ``mkdir``).  When no
plugin looks at a job before its submission, feed hands the directory to
the scheduler's :class:`DirBatcher` instead: the jobs fed before the event
loop next turns share one trip, and each job's submission waits for its
own directory (``Scheduler._job_dir_made``).

A queued job holds only a reference to its batch's future until the trip
is back, then nothing: a future and a callback of its own per job cost
0.5 KiB more per queued job (measured with 100,000 queued).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import fileio
from .path import SpecPath

if TYPE_CHECKING:
    from .job import Job


class DirBatcher:
    """Collects the jobs whose directories are to be made, one batch per
    loop iteration."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._future: asyncio.Future[None] | None = None

    def add(self, job: Job) -> None:
        """Make ``job.metadir`` soon; ``job._dir_pending`` says how it went:
        a future while in flight, None once made, the OSError if not."""
        if self._future is None:
            loop = asyncio.get_running_loop()
            self._future = loop.create_future()
            loop.call_soon(self._send)
        self._jobs.append(job)
        job._dir_pending = self._future

    def _send(self) -> None:
        jobs, future = self._jobs, self._future
        self._jobs, self._future = [], None
        if future is None or not jobs:
            return
        dirs = [job.metadir for job in jobs]
        # one scheduler, one workdir: the first says where they all are
        done = fileio.small_soon(fileio.is_local(dirs[0]), _make_all, dirs)
        done.add_done_callback(lambda d: _settle(jobs, future, d))


def _make_all(dirs: list[SpecPath]) -> list[bool | OSError]:
    """In the worker thread: each directory, its own outcome."""
    out: list[bool | OSError] = []
    for path in dirs:
        try:
            out.append(fileio.make_dir_sync(path))
        except OSError as exc:
            out.append(exc)
    return out


def _settle(
    jobs: list[Job], future: asyncio.Future[None], done: asyncio.Future[list[bool | OSError]]
) -> None:
    if done.cancelled() or done.exception() is not None:
        exc = done.exception() if not done.cancelled() else None
        failure = exc if isinstance(exc, OSError) else OSError(f"not made: {exc!r}")
        results: list[bool | OSError] = [failure] * len(jobs)
    else:
        results = done.result()
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, OSError):
            job._dir_pending = result
        else:
            job._fresh = result
            job._dir_pending = None
    if not future.done():
        future.set_result(None)
