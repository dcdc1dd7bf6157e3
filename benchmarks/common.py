"""What every benchmark shares: timing, statistics, machine facts, the table.

A workload produces :class:`Row` objects: one measure of one subject (our
engine, xqute 2.2.1, GNU parallel, ...) over several repetitions.  A row that
compares another tool with ours carries the ratio ours/theirs computed per
repetition (the two ran back to back in the same repetition, under the same
machine load) and reports the median of those ratios, not the ratio of the
medians.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ timing
@dataclass
class Span:
    """Wall time and this process's CPU time (all threads) over a block."""

    wall: float = 0.0
    cpu: float = 0.0


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextlib.contextmanager
def measure() -> Iterator[Span]:
    """Time a block: ``with measure() as span: ...`` then ``span.wall``, ``span.cpu``."""
    span = Span()
    t0, c0 = time.perf_counter(), _cpu_self()
    try:
        yield span
    finally:
        span.wall = time.perf_counter() - t0
        span.cpu = _cpu_self() - c0


class Deadline:
    """A budget for the whole run: workloads ask how much is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.left() <= 0


def repetitions(reps: int, deadline: Deadline | None, row: Row) -> Iterator[int]:
    """0..reps-1, stopping early when another repetition would overrun the budget.

    The first always runs; a later one only if the time left exceeds what the
    previous one took.  A cut is noted on ``row``.
    """
    last = 0.0
    for rep in range(reps):
        if rep >= 1 and deadline is not None and deadline.left() < last:
            row.note = f"{row.note} Stopped after {rep} run(s): time budget.".strip()
            return
        t0 = time.monotonic()
        yield rep
        last = time.monotonic() - t0


# -------------------------------------------------------------- statistics
def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[rank - 1]


def pairwise_ratios(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """ours_i / theirs_i for each repetition where both ran."""
    return [o / t for o, t in zip(ours, theirs, strict=False) if t and t > 0]


# --------------------------------------------------------------- the table
@dataclass
class Row:
    """One measure of one subject, over repetitions.

    ``ratios`` are ours/this per repetition for a compared subject (below 1:
    ours takes less); empty for our own rows.  ``lower_is_better`` tells how
    to read the ratio in words.
    """

    workload: str
    subject: str
    measure: str
    unit: str
    runs: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    note: str = ""
    lower_is_better: bool = True

    @property
    def median(self) -> float | None:
        return median(self.runs)

    @property
    def ratio(self) -> float | None:
        return median(self.ratios)


def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    mag = abs(value)
    if mag >= 100:
        text = f"{value:.0f}"
    elif mag >= 10:
        text = f"{value:.1f}"
    elif mag >= 1:
        text = f"{value:.2f}"
    elif mag == 0:
        text = "0"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "—"
    if r <= 0:
        return f"{r:.3g}"
    if "CPU" in row.measure:
        words = f"ours uses {1 / r:.1f}x less" if r < 1 else f"ours uses {r:.1f}x more"
    elif row.lower_is_better:
        words = f"ours {1 / r:.1f}x faster" if r < 1 else f"ours {r:.1f}x slower"
    else:
        words = f"ours {r:.1f}x more" if r >= 1 else f"ours {1 / r:.1f}x less"
    return f"{r:.3g} ({words})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Row]) -> str:
    head = (
        "| Workload | Subject | Measure | Median | Runs | Ours / this "
        "(median of per-run ratios) | Notes |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        runs = ", ".join(fmt_value(v) for v in row.runs) if row.runs else "—"
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    row.workload,
                    row.subject,
                    row.measure,
                    fmt_value(row.median, row.unit),
                    runs,
                    fmt_ratio(row) if row.ratios else "—",
                    row.note,
                )
            )
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def dict_table(data: dict[str, Any]) -> str:
    """A two-column markdown table for results given as a plain mapping."""
    lines = ["| Key | Value |", "|---|---|"]
    for key, value in data.items():
        if isinstance(value, float):
            value = fmt_value(value)
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        lines.append(f"| {_cell(str(key))} | {_cell(str(value))} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------- machine facts
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _run_text(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_revision() -> str:
    rev = _run_text(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return rev + (" (with uncommitted changes)" if dirty else "")


def fs_type(path: str | os.PathLike[str]) -> str:
    """The filesystem type ``path`` lives on (from /proc/mounts), or "unknown"."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
    return kind


def machine_info() -> dict[str, str]:
    """The facts a reader needs to compare these numbers with theirs."""
    # ssh -V prints to stderr
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "openssh": (ssh.stderr or ssh.stdout).strip() or "unavailable",
        "asyncssh": _version("asyncssh"),
        "xqute_ssh": f"{_version('xqute-ssh')} @ {_git_revision()}",
        "gnu parallel": _run_text(["parallel", "--version"]),
        "temp dir (workdirs)": f"{tempfile.gettempdir()} ({fs_type(tempfile.gettempdir())})",
        "load average at the end (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def machine_table(info: dict[str, str]) -> str:
    lines = ["| Machine | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in info.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- subprocess
class WorkerError(RuntimeError):
    """A benchmark subprocess failed or printed no result."""


def run_json(
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run ``argv``; its last stdout line is a JSON object: return it."""
    try:
        out = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkerError(f"timed out after {timeout:.0f}s: {argv[:3]}") from exc
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise WorkerError(f"{argv[:3]} exited {out.returncode}: " + " / ".join(tail))
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise WorkerError(f"no JSON result from {argv[:3]}: {lines[-1]!r}") from exc
    if not isinstance(result, dict):
        raise WorkerError(f"unexpected result from {argv[:3]}: {result!r}")
    return result


def python_module_argv(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter, from the repo root."""
    return [sys.executable, "-m", module, *args]


def log(message: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(message, file=sys.stderr, flush=True)
