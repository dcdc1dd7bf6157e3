"""Batch ``sbatch`` calls into few round trips; retry Slurm's refusals.

Jobs ask :meth:`Submitter.submit` for a Slurm id.  One flush at a time goes
to the login node, carrying every submission that is waiting (up to
``batch_size``): while a round trip is in flight the next batch fills up,
so batching needs no timer.  A transient refusal (``Socket timed out``,
``Resource temporarily unavailable``, a QOS submit limit, slurmctld away)
puts the job back with exponential back-off until ``retry_time`` has
passed.  A submission whose outcome is unknown (sbatch timed out, the
connection dropped mid-batch) is retried *carefully*: the login node first
looks for the id file or a Slurm job of the same unique name, so a job is
never submitted twice and never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ...errors import JobSubmissionError, SshError, SshPoolClosed
from ...ssh import CommandResult
from . import commands

logger = logging.getLogger("xqute_ssh")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


@dataclasses.dataclass
class _Pending:
    sub: commands.Submission
    future: asyncio.Future[str]
    deadline: float
    last_error: str = ""


class Submitter:
    """Queue of submissions and the one task that flushes it."""

    def __init__(
        self,
        run: Callable[[str, float], Coroutine[Any, Any, CommandResult]],
        label: str,
        *,
        sbatch: str,
        squeue: str,
        batch_size: int = 100,
        retry_time: float = 600.0,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._run = run
        self.label = label
        self.sbatch = sbatch
        self.squeue = squeue
        self.batch_size = batch_size
        self.retry_time = retry_time
        #: True once the run stops: refused submissions are not retried.
        self.stopping = stopping
        self._queue: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.0
        #: Round trips made and jobs they carried (for tests and benchmarks).
        self.round_trips = 0
        self.retries = 0

    def __repr__(self) -> str:
        return (
            f"<Submitter {self.label} queued={len(self._queue)} "
            f"round_trips={self.round_trips} retries={self.retries}>"
        )

    async def submit(self, sub: commands.Submission) -> str:
        """The Slurm id of the submitted job; JobSubmissionError if refused."""
        loop = asyncio.get_running_loop()
        item = _Pending(sub, loop.create_future(), time.monotonic() + self.retry_time)
        self._queue.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flusher())
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The caller gave up, but the submission may already be on its
            # way: let it finish and leave the id in the job's directory.
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(
                    JobSubmissionError(f"{self.label}: the scheduler shut down")
                )
        self._queue.clear()

    async def _flusher(self) -> None:
        while self._queue:
            if self._backoff:
                await asyncio.sleep(self._backoff)  # back-off, not synchronisation
            batch, self._queue = (
                self._queue[: self.batch_size],
                self._queue[self.batch_size :],
            )
            await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        snippet = commands.submit_batch([p.sub for p in batch], self.sbatch, self.squeue)
        # sbatch takes ~10 ms when all is well; give a slow controller room.
        timeout = 60.0 + 0.5 * len(batch)
        self.round_trips += 1
        try:
            reply = await self._run(snippet, timeout)
        except SshPoolClosed as exc:
            for p in batch:
                _fail(p, JobSubmissionError(str(exc)))
            return
        except SshError as exc:
            # Sent, but we do not know how far it got: retry all carefully.
            logger.warning(
                "%s: submitting %d job(s): %s; will check and retry",
                self.label, len(batch), exc,
            )
            self._requeue(batch, str(exc), careful=True)
            self._next_backoff(refused=True)
            return
        replies = commands.parse_submit(reply.stdout)
        again: list[_Pending] = []
        unknown: list[_Pending] = []
        skipped: list[_Pending] = []
        message = ""
        for p in batch:
            r = replies.get(p.sub.index)
            if r is None:
                unknown.append(p)
            elif r.kind == "sub":
                if not p.future.done():
                    p.future.set_result(r.value)
            elif r.kind == "err":
                _fail(p, JobSubmissionError(f"{self.label}: sbatch refused the job: {r.value}"))
            elif r.kind == "again":
                message = r.value
                again.append(p)
            else:
                skipped.append(p)
        if unknown:
            err = (reply.stderr or reply.stdout).strip()[-300:] or "no reply"
            self._requeue(unknown, f"the submission was cut short ({err})", careful=True)
        if again:
            # A refusal such as "Socket timed out" may still have created
            # the job: the retry checks before submitting again.
            self._requeue(again, message, careful=True)
        if skipped:
            self._requeue(skipped, message or "waiting for Slurm", careful=False)
        self._next_backoff(refused=bool(again or unknown))

    def _next_backoff(self, *, refused: bool) -> None:
        """Double the pause after a refused round trip (once per round trip,
        however many jobs it carried); none after one that went through."""
        if refused:
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_START, self._backoff * 2))
        else:
            self._backoff = 0.0

    def _requeue(self, items: list[_Pending], message: str, *, careful: bool) -> None:
        now = time.monotonic()
        keep = []
        for p in items:
            p.last_error = message or p.last_error
            if self.stopping():
                _fail(p, JobSubmissionError(f"{self.label}: the run is stopping ({p.last_error})"))
                continue
            if now >= p.deadline:
                _fail(
                    p,
                    JobSubmissionError(
                        f"{self.label}: Slurm kept refusing the job for "
                        f"{self.retry_time:.0f}s: {p.last_error}"
                    ),
                )
                continue
            if careful and not p.sub.careful:
                p.sub = dataclasses.replace(p.sub, careful=True)
            keep.append(p)
        if keep:
            self.retries += len(keep)
            logger.info(
                "%s: Slurm refused %d submission(s) for now (%s); retrying",
                self.label, len(keep), message,
            )
        # Retried jobs go first: they have waited longest.
        self._queue[:0] = keep


def _fail(p: _Pending, exc: Exception) -> None:
    if not p.future.done():
        p.future.set_exception(exc)
