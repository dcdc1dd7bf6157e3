"""The end-of-run summary: per-host counts, the failed jobs, one closing line.

A rich Table on a terminal, aligned plain text otherwise; ``--quiet`` prints
only the closing line.  The last line of each failed job's stderr is shown,
because "job 7 failed" alone sends the user digging through the workdir.
Jobs that failed with the same last line (one unreachable host fails them
all alike) are one entry: the cause is said once, the jobs are listed.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.table import Table

from .output import Mode, Output
from .progress import printable
from .tally import Ending, Tally

MAX_FAILURES_SHOWN = 10
#: failed jobs whose stderr is read to group them (the rest: see `status`)
MAX_FAILURES_READ = 1000
_TAIL_BYTES = 4096


def last_line(path: Path) -> str:
    """The last non-empty line of a (possibly large) file, or ""."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {nouns or noun + 's'}"


def summary_line(tally: Tally, elapsed: float, sig: signal.Signals | None) -> str:
    """``24 jobs: 22 finished, 1 failed, 1 skipped, 0 not run (3.2s)``."""
    not_run = tally.waiting + tally.running
    text = (
        f"{plural(tally.total, 'job')}: {tally.finished} finished, "
        f"{tally.failed} failed, {tally.skipped} skipped, {not_run} not run "
        f"({elapsed:.1f}s)"
    )
    if sig is not None:
        text = f"interrupted by {sig.name}; {text}"
    return text


def _failure_text(ending: Ending, workdir: Path) -> tuple[str, str]:
    stderr = workdir / str(ending.index) / "job.stderr"
    return printable(last_line(stderr)), str(stderr)


@dataclass
class FailureGroup:
    """Failed jobs with the same last stderr line: the first, and the others."""

    first: Ending
    tail: str
    path: str
    others: list[Ending] = field(default_factory=list)

    def others_text(self, limit: int = 20) -> str:
        shown = " ".join(str(e.index) for e in self.others[:limit])
        more = len(self.others) - limit
        return shown + (f" ... (+{more})" if more > 0 else "")


def group_failures(failures: list[Ending], workdir: Path) -> list[FailureGroup]:
    """Group failed jobs by their last stderr line; an empty line groups nothing."""
    groups: list[FailureGroup] = []
    by_tail: dict[str, FailureGroup] = {}
    for ending in failures[:MAX_FAILURES_READ]:
        tail, path = _failure_text(ending, workdir)
        group = by_tail.get(tail) if tail else None
        if group is not None:
            group.others.append(ending)
            continue
        group = FailureGroup(ending, tail, path)
        groups.append(group)
        if tail:
            by_tail[tail] = group
    return groups


def print_summary(
    out: Output,
    tally: Tally,
    workdir: Path,
    elapsed: float,
    sig: signal.Signals | None = None,
) -> None:
    """Print the summary for the mode chosen (see module docstring)."""
    line = summary_line(tally, elapsed, sig)
    if out.mode == Mode.QUIET:
        out.report_console.file.write(line + "\n")
        out.report_console.file.flush()
        return
    groups = group_failures(tally.failures, workdir)
    failures = groups[:MAX_FAILURES_SHOWN]
    more = len(tally.failures) - sum(1 + len(g.others) for g in failures)
    if out.mode == Mode.PLAIN:
        _print_plain(out, tally, workdir, failures, more, line)
        return
    hosts = Table(title="summary", box=box.SIMPLE_HEAD, title_justify="left")
    hosts.add_column("host")
    hosts.add_column("finished", justify="right", style="green")
    hosts.add_column("failed", justify="right", style="red")
    for host, counts in sorted(tally.hosts.items()):
        hosts.add_row(printable(host), str(counts.finished), str(counts.failed))
    if tally.hosts:
        out.report_console.print(hosts)
    if failures:
        table = Table(title="failed jobs", box=box.SIMPLE_HEAD, title_justify="left")
        for col in ("job", "outcome", "rc", "host", "last line of stderr"):
            table.add_column(col, overflow="fold")
        for group in failures:
            ending, tail, path = group.first, group.tail, group.path
            also = f" (and {group.others_text()})" if group.others else ""
            table.add_row(
                f"{ending.index}{also}",
                str(ending.outcome),
                "-" if ending.rc is None else str(ending.rc),
                printable(ending.host),
                tail or f"(empty: {path})",
            )
        out.report_console.print(table)
        if more:
            out.report_console.print(f"... and {more} more: xqute-ssh status {workdir}")
    style = "bold red" if tally.failed or sig else "bold green"
    out.report_console.print(line, style=style, markup=False)


def _print_plain(
    out: Output,
    tally: Tally,
    workdir: Path,
    failures: list[FailureGroup],
    more: int,
    line: str,
) -> None:
    file = out.report_console.file
    rows = [("host", "finished", "failed")] + [
        (printable(h), str(c.finished), str(c.failed)) for h, c in sorted(tally.hosts.items())
    ]
    if len(rows) > 1:
        width = max(len(r[0]) for r in rows)
        for host, fin, fail in rows:
            file.write(f"{host:<{width}}  {fin:>8}  {fail:>6}\n")
    for group in failures:
        ending, tail, path = group.first, group.tail, group.path
        rc = "-" if ending.rc is None else ending.rc
        file.write(
            f"failed: job {ending.index} {ending.outcome} rc={rc} "
            f"host={printable(ending.host)} stderr={path}" + (f": {tail}" if tail else "") + "\n"
        )
        if group.others:
            file.write(
                f"failed the same way as job {ending.index}: "
                f"{plural(len(group.others), 'more job')}: {group.others_text()}\n"
            )
    if more:
        file.write(f"... and {more} more: xqute-ssh status {workdir}\n")
    file.write(line + "\n")
    file.flush()
