"""Print the jobs' own output as GNU parallel does, and write its --joblog.

By default each job's stdout and stderr are printed whole once it ends
(grouped: the lines of two jobs never mix), in the order the jobs end.
``-k/--keep-order`` prints them in input order instead, holding back the
output of jobs that end early; ``-u/--ungroup`` prints output as it appears
(read from the job files while the job runs), lines of several jobs mixed;
``--tag`` puts the job's input values and a tab before every line.

The output is read from the job's ``job.stdout``/``job.stderr`` in the
workdir (bytes, unchanged) and written to our stdout/stderr through a
:class:`Sink`, so the live display is not torn on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from .. import fileio

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..job import Job

#: How often running jobs' files are read with --ungroup.
UNGROUP_POLL = 0.1


class Sink(Protocol):
    """Where job output goes: ``out`` for the job's stdout, ``err`` for stderr."""

    def write(self, data: bytes, err: bool) -> None: ...


class StdSink:
    """Our own stdout/stderr, as bytes (a job's output may be any bytes)."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self._out = out
        self._err = err
        self._gone: set[bool] = set()  # streams whose reader went away

    def write(self, data: bytes, err: bool) -> None:
        if err in self._gone:
            return
        stream = (self._err or sys.stderr) if err else (self._out or sys.stdout)
        try:
            stream.flush()
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:  # a text-only stream
                stream.write(data.decode("utf-8", "surrogateescape"))
                stream.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): the jobs go on, their output
            # stays in the workdir; stop writing there (and let the final
            # flush at exit find /dev/null instead of the closed pipe).
            self._gone.add(err)
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


class ConsoleSink:
    """A rich console with a live display: output is printed above it."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def write(self, data: bytes, err: bool) -> None:
        text = data.decode("utf-8", "replace")
        self._console.out(text, end="", highlight=False)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return b""


def _read_all_sync(job: Job) -> tuple[bytes, bytes]:
    out: list[bytes] = []
    for spec in (job.stdout_file, job.stderr_file):
        if fileio.is_local(spec):
            out.append(_read_from(Path(str(spec.path)), 0))
        else:
            text = fileio.read_text_sync(spec) or ""
            out.append(text.encode("utf-8", "surrogateescape"))
    return out[0], out[1]


#: Lines the engine and the wrapper add to a job's stderr ("xqute: failed to
#: submit the job: ...").  They are our report, not the job's output: the log
#: and the summary say them once, the job's file keeps them.
ENGINE_PREFIX = b"xqute: "


def without_engine_lines(data: bytes) -> bytes:
    if ENGINE_PREFIX not in data:
        return data
    lines = data.splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(ENGINE_PREFIX))


def tagged(data: bytes, tag: bytes | None) -> bytes:
    """Each line of ``data`` (the last even without a newline) after ``tag``."""
    if not tag or not data:
        return data
    lines = data.splitlines(keepends=True)
    return b"".join(tag + line for line in lines)


class JobOutput:
    """Prints each job's output at the right time (see module docstring).

    Args:
        sink: where to print.
        total: the number of jobs (indexes 0..total-1), for ``keep_order``.
        tags: each job's input values joined (``--tag``); by index.
    """

    def __init__(
        self,
        sink: Sink,
        total: int,
        tags: Sequence[str] = (),
        tag: bool = False,
        keep_order: bool = False,
        ungroup: bool = False,
    ) -> None:
        self._sink = sink
        self._total = total
        self._tags = list(tags)
        self._tag = tag
        self._keep_order = keep_order
        self._ungroup = ungroup
        self._held: dict[int, tuple[bytes, bytes]] = {}
        self._next = 0  # keep_order: the next index to print
        self._offsets: dict[int, list[int]] = {}  # ungroup: bytes printed so far
        self._jobs: dict[int, Job] = {}
        self._lock = asyncio.Lock()

    def _tag_of(self, index: int) -> bytes | None:
        if not self._tag:
            return None
        text = self._tags[index] if index < len(self._tags) else str(index + 1)
        return text.encode("utf-8", "surrogateescape") + b"\t"

    def _print(self, index: int, out: bytes, err: bytes) -> None:
        tag = self._tag_of(index)
        err = without_engine_lines(err)
        if out:
            self._sink.write(tagged(out, tag), err=False)
        if err:
            self._sink.write(tagged(err, tag), err=True)

    # ------------------------------------------------------------- events
    def started(self, job: Job) -> None:
        """A job's attempt started (``--ungroup`` follows its files from here).

        Said twice per attempt (submitted, then seen running): the second
        call must not rewind what was already printed, or a job that wrote
        in between had that output printed twice.
        """
        if self._ungroup and job.index not in self._jobs:
            self._jobs[job.index] = job
            self._offsets[job.index] = [0, 0]

    def requeued(self, index: int) -> None:
        """The job goes back to the queue for a retry: its next attempt's
        files start empty, so following starts again from their beginning."""
        self._jobs.pop(index, None)
        self._offsets.pop(index, None)

    async def ended(self, job: Job) -> int:
        """The job ended for good: print its output; the bytes of its stdout."""
        async with self._lock:
            if self._ungroup:
                await self._follow(job)
                self._jobs.pop(job.index, None)
                offsets = self._offsets.pop(job.index, [0, 0])
                return offsets[0]
            out, err = await fileio.to_thread(_read_all_sync, job)
            self._done(job.index, out, err)
            return len(out)

    def skipped(self, index: int) -> None:
        """A job that did not run (--resume): nothing to print, order goes on."""
        self._done(index, b"", b"")

    def _done(self, index: int, out: bytes, err: bytes) -> None:
        if not self._keep_order:
            self._print(index, out, err)
            return
        self._held[index] = (out, err)
        while self._next in self._held:
            self._print(self._next, *self._held.pop(self._next))
            self._next += 1

    def flush(self) -> None:
        """The run is over: print what is held (jobs after one that never ran)."""
        for index in sorted(self._held):
            self._print(index, *self._held.pop(index))

    # ------------------------------------------------------------ ungroup
    async def _follow(self, job: Job) -> None:
        offsets = self._offsets.setdefault(job.index, [0, 0])
        for i, spec in enumerate((job.stdout_file, job.stderr_file)):
            if not fileio.is_local(spec):
                continue
            data = await fileio.to_thread(_read_from, Path(str(spec.path)), offsets[i])
            if data:
                offsets[i] += len(data)
                if i:
                    data = without_engine_lines(data)
                self._sink.write(tagged(data, self._tag_of(job.index)), err=bool(i))

    async def follow_running(self) -> None:
        """With ``--ungroup``: print new output of running jobs until cancelled."""
        if not self._ungroup:
            return
        while True:
            await asyncio.sleep(UNGROUP_POLL)
            async with self._lock:
                for job in list(self._jobs.values()):
                    await self._follow(job)


class JobLog:
    """``--joblog FILE``: GNU parallel's tab-separated log, one line per ended job.

    Columns: Seq (job index + 1), Host (``:`` for this machine), Starttime
    (epoch seconds), JobRuntime (seconds), Send (0), Receive (bytes of
    stdout), Exitval, Signal, Command.  A job killed by a signal (negative
    rc) has Exitval -1 and the signal number in Signal.
    """

    HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"

    def __init__(self, path: str) -> None:
        self._path = path
        self._fh: IO[str] | None = None
        self._starts: dict[int, float] = {}

    async def open(self) -> None:
        def _open() -> IO[str]:
            fh = open(self._path, "w", encoding="utf-8", errors="surrogateescape")
            fh.write(self.HEADER)
            fh.flush()
            return fh

        self._fh = await fileio.to_thread(_open)

    def started(self, index: int) -> None:
        self._starts.setdefault(index, time.time())

    @staticmethod
    def line(
        seq: int, host: str, start: float, runtime: float, receive: int, rc: int | None,
        command: str,
    ) -> str:
        exitval, sig = (rc, 0) if rc is not None and rc >= 0 else (-1, -(rc or 0))
        command = command.replace("\n", " ").replace("\t", " ")
        return (
            f"{seq}\t{host}\t{start:.3f}\t{runtime:10.3f}\t0\t{receive}\t"
            f"{exitval}\t{sig}\t{command}\n"
        )

    async def ended(self, job: Job, host: str, rc: int | None, receive: int) -> None:
        if self._fh is None:
            return
        now = time.time()
        start = self._starts.pop(job.index, now)
        text = self.line(
            job.index + 1, ":" if host == "local" else host, start, now - start,
            receive, rc, job.strcmd,
        )
        fh = self._fh

        def _write() -> None:
            fh.write(text)
            fh.flush()

        await fileio.to_thread(_write)

    async def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            await fileio.to_thread(fh.close)
