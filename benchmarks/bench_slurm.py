"""S1: short jobs through Slurm over SSH, ours against ``sbatch`` in an ssh loop.

``python -m benchmarks.bench_slurm [--jobs 1000] [--reps 1] [--cpus 8]``

Both subjects use the same one-node Slurm cluster (``xqute_ssh.testing.slurm``)
behind the same loopback sshd login host, one after the other in each
repetition:

* ours: ``Xqute("slurm", forks=F)``: sbatch batched over one control
  session, one squeue per poll cycle, outputs fetched back;
* what a user scripts today: ``for i in ...; do ssh login sbatch ...; done``
  (OpenSSH, one login per job), then ``ssh login squeue`` once a second
  until none of the jobs is left.

Both are timed from the first submission to the moment every job is known to
have ended.  The row's ratio is ours/theirs per repetition (below 1: ours is
faster).  Needs root, slurm-wlm, munge and sshd (as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xqute_ssh import Xqute
from xqute_ssh.status import JobStatus
from xqute_ssh.testing import SshCluster, SshdHost
from xqute_ssh.testing.slurm import SlurmCluster

from .common import Row, log, markdown_table


async def ours(host: SshdHost, wd: Path, n: int, forks: int) -> float:
    xq = Xqute(
        "slurm",
        workdir=wd,
        forks=forks,
        scheduler_opts={
            "login": host.spec_string,
            "keyfile": str(host.client_key),
            "known_hosts": str(host.known_hosts),
            "poll_interval": 0.5,
        },
    )
    for i in range(n):
        await xq.feed(["echo", str(i)])
    t0 = time.monotonic()
    await xq.run_until_complete()
    took = time.monotonic() - t0
    bad = [j.index for j in xq.jobs if j.status != JobStatus.FINISHED]
    if bad:
        raise RuntimeError(f"ours: {len(bad)} job(s) did not finish: {bad[:5]}")
    return took


def ssh_argv(host: SshdHost) -> list[str]:
    return [
        "ssh", "-p", str(host.port), "-i", str(host.client_key),
        "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", f"{host.user}@{host.address}",
    ]


def loop(host: SshdHost, outdir: Path, n: int, total: int) -> float:
    """sbatch per job over a fresh ssh, then squeue over ssh every second.

    Runs ``n`` jobs; for ``total`` > ``n`` the submission loop's time is
    scaled by ``total / n`` (each iteration is one login and one sbatch: it
    grows linearly) and the drain after the last submission is added as
    measured (it does not shrink with more jobs).
    """
    ssh = ssh_argv(host)
    name = f"loop-{time.time_ns()}"
    t0 = time.monotonic()
    for i in range(n):
        remote = (
            f"sbatch --parsable -J {name} -o {shlex.quote(str(outdir))}/{i}.out "
            f"--wrap {shlex.quote(f'echo {i}')}"
        )
        subprocess.run([*ssh, remote], check=True, capture_output=True)
    submitted = time.monotonic() - t0
    t1 = time.monotonic()
    while True:
        out = subprocess.run(
            [*ssh, f"squeue -h -n {name} -o %i"], check=True, capture_output=True, text=True
        ).stdout
        if not out.strip():
            break
        time.sleep(1)
    drain = time.monotonic() - t1
    return submitted * total / n + drain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_slurm")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--cpus", type=int, default=8, help="CPUs the Slurm node offers")
    p.add_argument("--forks", type=int, default=200)
    p.add_argument(
        "--loop-jobs", type=int, default=100,
        help="jobs the ssh loop really runs (its time is extrapolated to --jobs)",
    )
    p.add_argument("--skip-loop", action="store_true", help="only ours")
    args = p.parse_args(argv)
    loop_n = min(args.loop_jobs, args.jobs)
    row_ours = Row("S1", "xqute_ssh slurm", f"{args.jobs} `echo` jobs, wall time", "s")
    row_loop = Row(
        "S1", "sbatch in an ssh loop", f"{args.jobs} `echo` jobs, wall time", "s",
        note="one OpenSSH login per sbatch; squeue over ssh every 1 s until done"
        + (
            f"; ran {loop_n} jobs: submission time scaled x{args.jobs / loop_n:g}, drain as measured"
            if loop_n < args.jobs
            else ""
        ),
    )
    with tempfile.TemporaryDirectory(prefix="xqute-bench-slurm-") as tmp:
        base = Path(tmp)
        slurm = SlurmCluster(base / "slurm", cpus=args.cpus)
        slurm.start()
        login = SshCluster(base / "login", 1, sshd_config=slurm.sshd_lines())
        try:
            login.start()
            host = login.hosts[0]
            for rep in range(args.reps):
                log(f"S1 rep {rep + 1}: ours")
                t_ours = asyncio.run(ours(host, base / f"wd{rep}", args.jobs, args.forks))
                row_ours.runs.append(t_ours)
                if args.skip_loop:
                    continue
                log(f"S1 rep {rep + 1}: ours {t_ours:.1f}s; now the ssh loop")
                outdir = base / f"loop{rep}"
                outdir.mkdir()
                t_loop = loop(host, outdir, loop_n, args.jobs)
                log(f"S1 rep {rep + 1}: loop {t_loop:.1f}s")
                row_loop.runs.append(t_loop)
                row_loop.ratios.append(t_ours / t_loop)
        finally:
            login.stop()
            slurm.stop()
    print(markdown_table([row_ours] if args.skip_loop else [row_ours, row_loop]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
