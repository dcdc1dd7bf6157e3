"""``python -m benchmarks.bench_pipen [--reps N] [--jobs 4,20]``

Wall time of a real pipen pipeline (tests/pipen/pipeline.py, scenario "ok":
three processes, N + N + 1 jobs each writing a small file) on pipen's own
``local`` scheduler, on ``xqute_ssh_local`` and on ``xqute_ssh`` over two
loopback sshd hosts from the test harness.  Each run is a fresh process with
fresh directories; the time is ``Pipen.run()`` as measured inside it.
Needs pipen (``pip install -e '.[pipen]'``) and sshd.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from xqute_ssh.testing.harness import SshCluster

from .common import REPO_ROOT

PIPELINE = REPO_ROOT / "tests" / "pipen" / "pipeline.py"


def run_once(scheduler: str, jobs: int, opts: dict[str, Any], root: Path) -> float:
    root.mkdir(parents=True)
    (root / "marks").mkdir()
    cfg = {
        "scenario": "ok",
        "scheduler": scheduler,
        "scheduler_opts": opts,
        "jobs": jobs,
        "forks": 4,
        "outdir": str(root / "out"),
        "workdir": str(root / "work"),
        "marks": str(root / "marks"),
        "result": str(root / "result.json"),
    }
    (root / "config.json").write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, str(PIPELINE), str(root / "config.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    record = json.loads((root / "result.json").read_text())
    if not record.get("succeeded"):
        raise RuntimeError(f"{scheduler}: the pipeline failed\n{done.stdout[-3000:]}")
    return float(record["seconds"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", default="4,20", help="jobs in the first process")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.jobs.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-pipen-") as tmp:
        base = Path(tmp)
        cluster = SshCluster(base / "sshd", 2)
        cluster.start()
        try:
            servers = {f"h{i}": h.server_spec() for i, h in enumerate(cluster.hosts)}
            subjects = [
                ("pipen local", "local", {}),
                ("xqute_ssh_local", "xqute_ssh_local", {}),
                ("xqute_ssh (2 hosts)", "xqute_ssh", {"servers": servers}),
            ]
            print("| scheduler | jobs (P1+P2+P3) | median s | runs s |")
            print("| --- | --- | --- | --- |")
            n = 0
            for jobs in sizes:
                for label, scheduler, opts in subjects:
                    times = []
                    for _ in range(args.reps):
                        n += 1
                        times.append(run_once(scheduler, jobs, opts, base / f"r{n}"))
                    runs = ", ".join(f"{t:.1f}" for t in times)
                    print(
                        f"| {label} | {jobs}+{jobs}+1 | {statistics.median(times):.1f} "
                        f"| {runs} |",
                        flush=True,
                    )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
