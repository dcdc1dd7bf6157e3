"""Control round trips through HostPool vs. fresh exec channels vs. ControlMaster.

Run:  python benchmarks/bench_transport.py   (as root, with openssh-server)

Starts 2 loopback sshd hosts with the test harness and runs ``true``:

* pool        -- ``HostPool.run`` (one round trip over the persistent control
                 sh), N_POOL operations with POOL_IN_FLIGHT in flight;
* fresh exec  -- a new asyncssh exec channel per operation over one open
                 connection per host (what most asyncssh code does);
* ControlMaster -- ``ssh -S <socket> host true`` through an OpenSSH master
                 connection per host (what the OpenSSH CLI offers).

The slow methods run fewer operations (their rate is what matters).  Every
connection is opened before its clock starts, so the numbers are per-operation
costs, not connection set-up.  Host keys are checked in every method.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xqute_ssh.ssh import HostConfig, HostPool
from xqute_ssh.testing import SshCluster

N_POOL = 2000
POOL_IN_FLIGHT = 64
N_SLOW = 200
SLOW_BUDGET = 15.0  # seconds per slow method at most
SLOW_PER_HOST = 4  # well below MaxSessions 10: sshd frees closed sessions late


async def _timed(
    n: int, limit: int, op: Callable[[int], Awaitable[None]], budget: float | None = None
) -> tuple[int, float]:
    """Run ``op(0..n-1)`` with at most ``limit`` in flight.

    With ``budget`` (seconds), no new operation starts once it is spent, so a
    slow method on a busy machine cannot stretch the run.  Returns (operations
    done, seconds taken).
    """
    sem = asyncio.Semaphore(limit)
    start = time.perf_counter()
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with sem:
            if budget is not None and time.perf_counter() - start > budget:
                return
            await op(i)
            done += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return done, time.perf_counter() - start


async def bench_pool(hosts: list[Any], n: int) -> tuple[int, float]:
    pools = [HostPool(HostConfig(**h.server_spec())) for h in hosts]
    try:
        await asyncio.gather(*(p.run("true") for p in pools))  # connect + warm up

        async def op(i: int) -> None:
            r = await pools[i % len(pools)].run("true")
            assert r.returncode == 0, r

        return await _timed(n, POOL_IN_FLIGHT, op)
    finally:
        await asyncio.gather(*(p.close() for p in pools))


async def bench_fresh_exec(hosts: list[Any], n: int) -> tuple[int, float]:
    conns = []
    for h in hosts:
        spec = h.server_spec()
        conns.append(
            await asyncssh.connect(
                spec["host"],
                spec["port"],
                username=spec["user"],
                client_keys=[spec["keyfile"]],
                known_hosts=spec["known_hosts"],
            )
        )
    try:

        async def op(i: int) -> None:
            r = await conns[i % len(conns)].run("true", check=True)
            assert r.exit_status == 0

        return await _timed(n, SLOW_PER_HOST * len(hosts), op, SLOW_BUDGET)
    finally:
        for c in conns:
            c.close()
        await asyncio.gather(*(c.wait_closed() for c in conns))


def _ssh_args(spec: dict[str, Any], sock: str) -> list[str]:
    return [
        "ssh", "-S", sock, "-p", str(spec["port"]), "-i", str(spec["keyfile"]),
        "-o", f"UserKnownHostsFile={spec['known_hosts']}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-o", "GlobalKnownHostsFile=/dev/null", "-F", "/dev/null",
        f"{spec['user']}@{spec['host']}",
    ]  # fmt: skip


async def _ssh(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {err.decode(errors='replace')}")
    return proc.returncode


async def bench_controlmaster(hosts: list[Any], n: int) -> tuple[int, float]:
    tmp = tempfile.mkdtemp(prefix="xq-cm-")  # short: unix socket paths are limited
    masters = []
    for k, h in enumerate(hosts):
        spec = h.server_spec()
        args = _ssh_args(spec, os.path.join(tmp, f"m{k}"))
        # the master: ControlMaster=yes, backgrounded once authenticated
        await _ssh(*args[:1], "-M", "-f", "-N", "-o", "ControlPersist=120", *args[1:])
        masters.append(args)
    try:

        async def op(i: int) -> None:
            await _ssh(*masters[i % len(masters)], "true")

        return await _timed(n, SLOW_PER_HOST * len(hosts), op, SLOW_BUDGET)
    finally:
        for args in masters:
            with contextlib.suppress(Exception):
                await _ssh(*args[:1], "-O", "exit", *args[1:])
        shutil.rmtree(tmp, ignore_errors=True)


async def _run(n_pool: int, n_slow: int) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="xq-bench-")
    try:
        async with SshCluster(base, n=2) as cluster:
            hosts = list(cluster.hosts)
            rows = {
                "pool": await bench_pool(hosts, n_pool),
                "fresh_exec": await bench_fresh_exec(hosts, n_slow),
                "controlmaster": await bench_controlmaster(hosts, n_slow),
            }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rates = {k: n / s for k, (n, s) in rows.items()}
    return {
        "hosts": 2,
        "ops": {k: n for k, (n, _) in rows.items()},
        "seconds": {k: s for k, (_, s) in rows.items()},
        "ops_per_s": rates,
        "pool_vs": {k: rates["pool"] / r for k, r in rates.items()},
    }


def run_benchmark(n_pool: int = N_POOL, n_slow: int = N_SLOW) -> dict[str, Any]:
    """Run the three methods side by side; return ops, seconds, rates and ratios."""
    return asyncio.run(_run(n_pool, n_slow))


def format_table(result: dict[str, Any]) -> str:
    names = {
        "pool": "HostPool.run (control session)",
        "fresh_exec": "asyncssh fresh exec channel",
        "controlmaster": "OpenSSH ControlMaster (ssh -S)",
    }
    lines = [
        f"{result['hosts']} loopback hosts, `true` per operation",
        "",
        "| method | ops | seconds | ops/s | pool is x faster |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name in names.items():
        lines.append(
            f"| {name} | {result['ops'][key]} | {result['seconds'][key]:.2f} | "
            f"{result['ops_per_s'][key]:.0f} | {result['pool_vs'][key]:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    res = run_benchmark()
    print(format_table(res))
    ok = res["pool_vs"]["fresh_exec"] >= 50
    print(f"\ngoal pool >= 50x fresh exec: {'met' if ok else 'NOT met'}")
