"""What the user sees while a batch runs.

:class:`RunMonitor` is a simplug plugin object, passed to
``Xqute(plugins=[monitor])`` for this run only.  Its hooks update a
:class:`~.tally.Tally` and tell a view about each job's end:

* :class:`LiveView` (stdout is a terminal): a rich live display with an
  overall bar (done, failed, running, ETA) and a per-host table;
* :class:`PlainView` (not a terminal): one line per job end, no ANSI codes;
* :class:`QuietView` (``--quiet``): nothing.

The monitor also implements ``--resume`` (``on_job_submitting`` returning
False for a job already finished) and notices a signal (``on_shutdown``) so
the CLI can exit 130 after Ctrl-C.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Protocol

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..plugin import plugin
from ..status import JobStatus
from . import gnu
from .joboutput import JobLog, JobOutput
from .tally import Ending, Outcome, Tally
from .workdir import host_from_jid

if TYPE_CHECKING:  # pragma: no cover
    from ..job import Job
    from ..scheduler import Scheduler
    from ..ssh.health import HostHealth
    from ..xqute import Xqute


def host_of(job: Job, default: str) -> str:
    """The host of the job's current attempt: what the scheduler recorded in
    ``job.extra["host"]``, else what its job id says, else ``default``."""
    host = job.extra.get("host")
    if host:
        return str(host)
    return host_from_jid(job.jid) or default


def printable(text: str) -> str:
    """``text`` safe to print: undecodable bytes (surrogate escapes) become �."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class View(Protocol):
    """Where job ends are shown; started and stopped around the run."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def job_ended(self, ending: Ending) -> None: ...


class QuietView:
    """``--quiet``: show nothing while the batch runs."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def job_ended(self, ending: Ending) -> None:
        pass


class PlainView:
    """One line per job end, for logs and pipes: ``job 3 FINISHED rc=0 host=h``."""

    def __init__(self, file: IO[str] | None = None) -> None:
        self._file = file

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def job_ended(self, ending: Ending) -> None:
        file = self._file or sys.stdout
        rc = "-" if ending.rc is None else ending.rc
        file.write(f"job {ending.index} {ending.outcome} rc={rc} host={printable(ending.host)}\n")
        file.flush()


class _CountsColumn(ProgressColumn):
    """``12 done  1 failed  4 running  5 skipped``, read from the tally."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self._tally = tally

    def render(self, task: Task) -> Text:
        t = self._tally
        text = Text.assemble(
            (f"{t.finished} done", "green"),
            "  ",
            (f"{t.failed} failed", "red" if t.failed else "dim"),
            "  ",
            (f"{t.running} running", "cyan"),
        )
        if t.skipped:
            text.append(f"  {t.skipped} skipped", "dim")
        return text


class LiveView:
    """A rich live display: the overall bar and a per-host table.

    The bar counts the jobs that really run (skipped ones are left out), so
    the ETA is not fooled by a burst of instant skips.  Rendering happens in
    rich's refresh thread and only reads the tally.
    """

    def __init__(self, console: Console, tally: Tally, n_skip: int = 0) -> None:
        self._tally = tally
        self.progress = Progress(
            TextColumn("[bold]jobs"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            _CountsColumn(tally),
            TimeElapsedColumn(),
            TextColumn("eta", style="dim"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self.progress.add_task("jobs", total=max(0, tally.total - n_skip))
        #: Lines naming the hosts that are down (set once the run starts).
        self.hosts_down: Callable[[], list[str]] | None = None
        self._live = Live(
            console=console,
            get_renderable=self.render,
            refresh_per_second=8,
            transient=True,  # the summary table takes its place
        )

    def render(self) -> RenderableType:
        table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
        table.add_column("host")
        table.add_column("running", justify="right", style="cyan")
        table.add_column("finished", justify="right", style="green")
        table.add_column("failed", justify="right", style="red")
        for host, counts in sorted(dict(self._tally.hosts).items()):
            table.add_row(
                printable(host),
                str(counts.running),
                str(counts.finished),
                str(counts.failed),
            )
        down = [Text(line, style="yellow") for line in (self.hosts_down or list)()]
        return Group(self.progress, table, *down)

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def job_ended(self, ending: Ending) -> None:
        t = self._tally
        self.progress.update(self._task, completed=t.finished + t.failed)


class RunMonitor:
    """The CLI's plugin: counts jobs, shows their ends, skips resumed ones.

    Args:
        tally: where the counts go.
        view: where job ends are shown.
        skip: indexes of jobs already finished (``--resume``).
        default_host: the host name for jobs whose scheduler names none.
    """

    name = "xqute-ssh-cli"

    def __init__(
        self,
        tally: Tally,
        view: View,
        skip: set[int],
        default_host: str,
        printer: JobOutput | None = None,
        joblog: JobLog | None = None,
    ) -> None:
        self.tally = tally
        self.view = view
        self._skip = set(skip)
        self._default_host = default_host
        self._printer = printer
        self._joblog = joblog
        #: {%}: the slot each running job holds, and the commands with the token
        self._slots: dict[int, int] = {}
        self._templates: dict[int, str | list[str]] = {}
        #: the signal that stopped the run (SIGINT: exit 130), if any
        self.signal: signal.Signals | None = None
        #: set once the run has ended (naturally, halted or by a signal)
        self.shut_down = False

    def _host(self, job: Job) -> str:
        return host_of(job, self._default_host)

    async def _end(self, job: Job, outcome: Outcome, rc: int | None = None) -> None:
        if rc is None:
            rc = await job.read_rc()
        self._slots.pop(job.index, None)
        host = self.tally.host_of_running(job.index) or self._host(job)
        ending = self.tally.ended_as(job.index, outcome, rc, host)
        if ending is None:
            return
        if outcome == Outcome.SKIPPED:
            if self._printer is not None:
                self._printer.skipped(job.index)
        else:
            received = await self._printer.ended(job) if self._printer is not None else 0
            if self._joblog is not None:
                await self._joblog.ended(job, host, rc, received)
        self.view.job_ended(ending)

    def _take_slot(self, job: Job) -> None:
        """``{%}``: the lowest free slot number, put into the job's command."""
        template = self._templates.setdefault(job.index, job.cmd)
        if not gnu.uses_slot(template):
            return
        used = set(self._slots.values())
        slot = next(n for n in range(1, len(used) + 2) if n not in used)
        self._slots[job.index] = slot
        job.cmd = gnu.fill_slot(template, slot)

    def _attempt_started(self, job: Job) -> None:
        self.tally.started(job.index, self._host(job))
        if self._printer is not None:
            self._printer.started(job)
        if self._joblog is not None:
            self._joblog.started(job.index)

    @plugin.impl
    async def on_job_submitting(self, scheduler: Scheduler, job: Job) -> bool | None:
        if job.index not in self._skip:
            self._take_slot(job)
            return None
        self._skip.discard(job.index)
        # The engine keeps a status a plugin set before cancelling (plugin.py).
        await job.set_status(JobStatus.FINISHED)
        await self._end(job, Outcome.SKIPPED, 0)
        return False

    @plugin.impl
    async def on_job_submitted(self, scheduler: Scheduler, job: Job) -> None:
        self._attempt_started(job)

    @plugin.impl
    async def on_job_started(self, scheduler: Scheduler, job: Job) -> None:
        self._attempt_started(job)

    @plugin.impl
    async def on_job_queued(self, scheduler: Scheduler, job: Job) -> None:
        self.tally.requeued(job.index)
        self._slots.pop(job.index, None)
        if self._printer is not None:
            self._printer.requeued(job.index)

    @plugin.impl
    async def on_job_succeeded(self, scheduler: Scheduler, job: Job) -> None:
        if job.index in self._skip:  # the engine found it done (--resume)
            self._skip.discard(job.index)
            await self._end(job, Outcome.SKIPPED)
            return
        await self._end(job, Outcome.FINISHED)

    @plugin.impl
    async def on_job_failed(self, scheduler: Scheduler, job: Job) -> None:
        await self._end(job, Outcome.FAILED)

    @plugin.impl
    async def on_job_killed(self, scheduler: Scheduler, job: Job) -> None:
        # A job that ended by itself while being killed keeps its real end.
        finished = job.status == JobStatus.FINISHED
        await self._end(job, Outcome.FINISHED if finished else Outcome.KILLED)

    @plugin.impl
    async def on_init(self, xqute: Xqute) -> None:
        health = getattr(xqute.scheduler, "health", None)
        if isinstance(self.view, LiveView) and health is not None:
            self.view.hosts_down = functools.partial(_hosts_down, health)

    @plugin.impl
    async def on_shutdown(self, xqute: Xqute, sig: signal.Signals | None) -> None:
        self.shut_down = True
        if sig is not None:
            self.signal = sig


def _hosts_down(health: HostHealth) -> list[str]:
    """For the live view: one line per host that is down, and why."""
    return [
        f"host {health.labels.get(r.name, r.name)} is down: {r.reason}"
        for r in health.down()
    ]
