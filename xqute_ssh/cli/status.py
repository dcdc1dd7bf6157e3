"""``xqute-ssh status WORKDIR``: what the job files of a workdir say.

Works on any workdir, also while its run is going or after the controller
died: only the files are read (see :mod:`.workdir`), in a pool of threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from .args import UsageError
from .output import Mode, Output
from .progress import printable
from .summary import plural
from .workdir import JobRecord, scan_last_run

_STATUS_STYLE = {
    "FINISHED": "green",
    "FAILED": "red",
    "RUNNING": "cyan",
    "SUBMITTED": "cyan",
    "KILLING": "yellow",
    "KILLED": "yellow",
    "NOT_STARTED": "dim",
}
_COLUMNS = ("index", "status", "host", "rc", "duration", "command")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _cells(rec: JobRecord) -> tuple[str, ...]:
    return (
        str(rec.index),
        rec.status,
        printable(rec.host or "-"),
        "-" if rec.rc is None else str(rec.rc),
        _duration(rec.duration),
        printable(rec.command_text),
    )


def _counts_line(records: list[JobRecord]) -> str:
    counts = Counter(r.status for r in records)
    parts = ", ".join(f"{n} {name.lower()}" for name, n in sorted(counts.items()))
    return plural(len(records), "job") + (f": {parts}" if parts else "")


def hosts_down(workdir: Path) -> list[str]:
    """One line per host the SSH scheduler last saw down (its host file)."""
    try:
        hosts = json.loads((workdir / ".xqute-hosts.json").read_text())
    except (OSError, ValueError):
        return []  # no SSH run here, or the file is being rewritten
    lines = []
    for name, h in hosts.items() if isinstance(hosts, dict) else ():
        if not isinstance(h, dict) or h.get("state") not in ("down", "broken", "probing"):
            continue
        if h.get("down_since") is None:
            continue  # a first probe, not an outage
        since = time.strftime("%H:%M:%S", time.localtime(float(h["down_since"])))
        what = "unusable" if h["state"] == "broken" else "down"
        lines.append(f"host {h.get('label', name)}: {what} since {since}: {h.get('reason', '')}")
    return lines


def render(records: list[JobRecord], out: Output, hosts: list[str] | None = None) -> None:
    """A rich table on a terminal, tab-separated plain text otherwise."""
    if out.mode == Mode.LIVE:
        table = Table(box=box.SIMPLE_HEAD)
        for col in _COLUMNS:
            table.add_column(col, justify="right" if col in ("index", "rc") else "left")
        for rec in records:
            cells = [Text(c) for c in _cells(rec)]
            cells[1].stylize(_STATUS_STYLE.get(rec.status, ""))
            table.add_row(*cells)
        out.console.print(table)
        out.console.print(_counts_line(records), markup=False)
        for line in hosts or ():
            out.console.print(line, style="yellow", markup=False)
        return
    file = out.console.file
    file.write("\t".join(_COLUMNS) + "\n")
    for rec in records:
        file.write("\t".join(c.replace("\t", " ").replace("\n", " ") for c in _cells(rec)))
        file.write("\n")
    file.flush()
    # stdout is pure TSV (for cut, awk, a spreadsheet); the counts and the
    # hosts that were down go to stderr
    err = out.err_console.file
    err.write(_counts_line(records) + "\n")
    for line in hosts or ():
        err.write(line + "\n")
    err.flush()


def status_command(ns: argparse.Namespace) -> int:
    """The ``status`` subcommand; exit status 0, or 2 for a bad WORKDIR."""
    workdir = Path(ns.workdir).expanduser()
    if not workdir.is_dir():
        raise UsageError(f"WORKDIR {ns.workdir!r} is not a directory")
    try:
        records, stale = scan_last_run(workdir)
    except OSError as exc:
        raise UsageError(f"WORKDIR {ns.workdir!r}: {exc.strerror or exc}") from None
    if stale:
        shown = " ".join(map(str, stale[:10])) + (" ..." if len(stale) > 10 else "")
        print(
            f"xqute-ssh status: {plural(len(stale), 'job directory', 'job directories')} "
            f"from an earlier, larger run in this workdir not shown ({shown})",
            file=sys.stderr,
        )
    if ns.json:
        # ASCII escapes keep undecodable bytes in file names valid JSON.
        sys.stdout.write(json.dumps([r.as_dict() for r in records], indent=1) + "\n")
        sys.stdout.flush()
        return 0
    render(records, Output.choose(), hosts_down(workdir))
    return 0
