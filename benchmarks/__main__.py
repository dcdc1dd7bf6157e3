"""``python -m benchmarks [--quick] [--only W1,W5] [--reps N] [--output PATH]``

``--only W7`` runs just the bad-hosts case (healthy hosts with and without a
refused and a silent host, as a ratio).

Runs the workloads, prints one markdown table (medians, per-run values and
ratios ours/this taken pair by pair in the same repetition) with the machine's
facts, and writes docs/benchmarks.md on a full run.  The whole run keeps to a
budget (10 minutes by default).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    REPO_ROOT,
    Deadline,
    Row,
    dict_table,
    log,
    machine_info,
    machine_table,
    markdown_table,
)

SSH_WORKLOADS = ("W1", "W2", "W3", "W4", "W6", "W7")
ALL_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "T")
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"

DESCRIPTIONS = {
    "W1": "throughput: 1,000 `true` jobs over 2 loopback sshd hosts, forks 64, "
    "against GNU parallel (32 slots per host), plain asyncssh (a fresh exec "
    "channel per job) and the floor (`/bin/true` down an open shell)",
    "W2": "overhead: 64 `sleep 1` jobs, forks 64: wall time minus 1 s, against GNU parallel",
    "W3": "scale: 10,000 jobs fed over 2 hosts (`sleep 600`: 64 run, the rest "
    "wait): controller peak RSS and CPU per poll cycle; then stopped by SIGINT",
    "W4": "latency: a job's exit (its rc file's mtime) to FINISHED seen by the "
    "controller (on_job_succeeded)",
    "W5": "local: 500 `true` jobs, forks 16, against xqute 2.2.1's local scheduler "
    "(in its own virtualenv)",
    "W6": "W1's workload on hosts that cannot see the workdir (each has its own "
    "empty tmpfs over it): the scheduler moves the job files itself",
    "W7": "bad hosts: 300 `true` jobs, forks 32, over the 2 hosts alone and "
    "with one refused port and one silent host (TCP accepted, no SSH banner) "
    "added, back to back: the second run's speed as a fraction of the first's",
    "W8": "throughput toward the floor (issue 17): 1,000 `true` jobs, forks 64, "
    "over 2 hosts (tmpfs and the default temp dir) and 16 hosts; controller CPU "
    "per job; exit→FINISHED; processes per job on the hosts; 100,000 queued "
    "jobs; a profile of the controller (each run in its own process; "
    "`--baseline PATH` runs another checkout side by side)",
    "T": "transport: one control round trip vs a fresh exec channel vs "
    "ControlMaster (benchmarks/bench_transport.py)",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller workloads, 2 runs")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated workloads to run (W1..W7, T for transport)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="W8 only: a checkout whose xqute_ssh runs side by side with this one",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the report (default {DEFAULT_OUTPUT.relative_to(REPO_ROOT)}"
        " on a full run; partial runs only print unless this is given)",
    )
    return p.parse_args(argv)


def _selected(only: str) -> list[str]:
    if not only.strip():
        return list(ALL_WORKLOADS)
    names = [n.strip().upper() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_WORKLOADS]
    if unknown:
        raise SystemExit(
            f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(ALL_WORKLOADS)}"
        )
    return names


def _transport_section() -> str | None:
    """Run benchmarks/bench_transport.py's run_benchmark() if it exists."""
    if importlib.util.find_spec("benchmarks.bench_transport") is None:
        return None
    try:
        module = importlib.import_module("benchmarks.bench_transport")
        result: Any = module.run_benchmark()
    except Exception as exc:
        traceback.print_exc()
        return f"Transport benchmark failed: {exc}\n"
    formatter = getattr(module, "format_table", None)
    if callable(formatter):
        return f"{formatter(result)}\n"
    if isinstance(result, dict):
        for key in ("markdown", "table"):
            if isinstance(result.get(key), str):
                return str(result[key])
        return dict_table(result)
    return f"{result}\n"


def render_report(
    rows: Sequence[Row],
    info: dict[str, str],
    selected: Sequence[str],
    transport: str | None,
    argv: Sequence[str],
    elapsed: float,
) -> str:
    command = " ".join(["python -m benchmarks", *argv])
    parts = [
        "# Benchmarks\n",
        f"Generated by `{command}` in {elapsed:.0f} s. Every number below comes "
        "from that command; run it again to check them on your machine.\n",
        "Each workload runs several times; **Median** is the median of the "
        "runs; **Ours / this** is the median of the ratios ours/this taken "
        "repetition by repetition (both ran back to back under the same load), "
        "so below 1 means we take less.\n",
        "## Workloads\n",
        "\n".join(f"- **{w}** {DESCRIPTIONS[w]}" for w in ALL_WORKLOADS if w in selected) + "\n",
        "## Results\n",
        markdown_table(rows),
    ]
    if transport is not None:
        parts += ["## Transport\n", transport]
    parts += ["## Machine\n", machine_table(info)]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    selected = _selected(args.only)
    reps = args.reps or (2 if args.quick else 3)
    deadline = Deadline(args.budget)
    started = time.monotonic()
    rows: list[Row] = []

    if "W5" in selected:
        log("== W5 local throughput")
        from .bench_local import run_w5

        rows += run_w5(reps, args.quick, deadline)

    ssh_selected = [w for w in SSH_WORKLOADS if w in selected]
    if ssh_selected:
        from .bench_ssh import run_ssh_workloads

        rows += run_ssh_workloads(ssh_selected, reps, args.quick, deadline)

    profile = None
    if "W8" in selected:
        log("== W8 throughput toward the floor")
        from .bench_throughput import run_w8

        w8_rows, profile = run_w8(reps, args.quick, deadline, args.baseline)
        rows += w8_rows

    transport = None
    if "T" in selected:
        log("== transport")
        transport = _transport_section()

    order = {w: i for i, w in enumerate(ALL_WORKLOADS)}
    rows.sort(key=lambda r: order.get(r.workload, 99))
    info = machine_info()
    report = render_report(rows, info, selected, transport, argv, time.monotonic() - started)
    if profile:
        report += "\n## Controller profile (W8, 1,000 `true` jobs, 2 hosts)\n\n" + profile
    print(report)
    full = not args.only and not args.quick
    output = args.output or (DEFAULT_OUTPUT if full else None)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report)
        log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
