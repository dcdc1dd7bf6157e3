"""HostPool against real sshd: limits, reconnects, accounting, idle close."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable

import asyncssh
import pytest

from xqute_ssh.errors import SshConnectionLost, SshPoolClosed, SshTimeoutError
from xqute_ssh.ssh import HostConfig, HostPool

LOW_LIMITS = ("MaxSessions 2", "MaxStartups 2:30:10")


def host_config(host, **overrides) -> HostConfig:
    """A HostConfig for a harness host (its key and known_hosts: checking stays on)."""
    return HostConfig(**{**host.server_spec(), **overrides})


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition with a bound (for state that changes in the background)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def low_limit_host(sshd_cluster_factory):
    return sshd_cluster_factory(n=1, sshd_config=LOW_LIMITS).hosts[0]


# ====================================================================== basics
async def test_lazy_open_repr_and_close(sshd_host) -> None:
    pool = HostPool(host_config(sshd_host))
    async with pool:
        label = f"{sshd_host.user}@{sshd_host.address}:{sshd_host.port}"
        assert repr(pool) == f"<HostPool {label} conns=0 sessions=0/0 queued=0>"
        await pool.run("true")
        assert repr(pool) == f"<HostPool {label} conns=1 sessions=1/8 queued=0>"
        async with pool.connection() as conn:
            assert isinstance(conn, asyncssh.SSHClientConnection)
            assert repr(pool) == f"<HostPool {label} conns=1 sessions=2/8 queued=0>"
            assert (await conn.run("echo raw", check=True)).stdout == "raw\n"
            async with conn.start_sftp_client() as sftp:
                assert await sftp.exists("/")
        assert pool.stats().leases == 0
    assert pool.closed and repr(pool).endswith("closed>")
    await pool.close()  # idempotent
    for call in (lambda: pool.run("true"), lambda: pool.exec("true")):
        with pytest.raises(SshPoolClosed):
            await call()
    with pytest.raises(SshPoolClosed):
        async with pool.connection():
            pass


async def test_exec_slow_path(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        r = await pool.exec("printf 'a\\377'; echo e >&2; exit 5")
        # an exec channel also carries whatever the remote rc files print
        assert r.returncode == 5 and r.stderr.endswith("e\n")
        assert r.stdout.encode("utf-8", "surrogateescape") == b"a\xff"
        assert (await pool.exec("cat; echo eof")).stdout == "eof\n"  # stdin /dev/null
        with pytest.raises(SshTimeoutError, match=r"within 0\.2s"):
            await pool.exec("sleep 1", timeout=0.2)
        s = pool.stats()
        assert (s.leases, s.sessions, s.queued) == (0, 0, 0)
        assert (await pool.exec("echo fine")).stdout == "fine\n"


# ====================================================================== limits
async def test_low_server_limits_serve_50_concurrent_runs(sshd_cluster_factory) -> None:
    host = low_limit_host(sshd_cluster_factory)
    cfg = host_config(host, max_sessions=2, max_connections=4)
    async with HostPool(cfg, pipeline_threshold=4) as pool:
        results = await asyncio.gather(*(pool.run(f"echo {i}") for i in range(50)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(50)]
        s = pool.stats()
        assert 1 <= s.connections <= 4 and s.sessions <= 2 * s.connections


async def test_low_server_limits_serve_50_concurrent_connections(
    sshd_cluster_factory,
) -> None:
    """connection() hands out raw channels we cannot retry: stay below MaxSessions.

    sshd frees a session slot a moment after the channel closes, so reusing a
    slot at once with max_sessions == MaxSessions can be refused; one below
    it never is (the documented setting).
    """
    host = low_limit_host(sshd_cluster_factory)
    cfg = host_config(host, max_sessions=1, max_connections=4)
    peak = 0

    async def one(i: int) -> str:
        nonlocal peak
        async with pool.connection() as conn:
            peak = max(peak, pool.stats().leases)
            return (await conn.run(f"echo {i}", check=True)).stdout

    async with HostPool(cfg) as pool:
        outs = await asyncio.gather(*(one(i) for i in range(50)))
        assert outs == [f"{i}\n" for i in range(50)]
        assert peak == 4  # 4 connections x 1 session, never more
        s = pool.stats()
        assert (s.connections, s.leases, s.queued) == (4, 0, 0)


async def test_mixed_load_with_default_max_sessions_learns_server_limit(
    sshd_cluster_factory,
) -> None:
    """max_sessions=8 against MaxSessions 2: refused channels lower our limit."""
    host = low_limit_host(sshd_cluster_factory)
    async with HostPool(host_config(host, max_connections=4)) as pool:
        runs = [pool.run(f"echo r{i}") for i in range(50)]
        execs = [pool.exec(f"echo x{i}") for i in range(20)]
        results = await asyncio.gather(*runs, *execs)
        assert [r.stdout for r in results] == [f"r{i}\n" for i in range(50)] + [
            f"x{i}\n" for i in range(20)
        ]
        s = pool.stats()
        assert s.capacity <= 2 * s.connections  # learned from the refusals


async def test_acquire_timeout_names_host(sshd_host) -> None:
    cfg = host_config(sshd_host, max_sessions=1, max_connections=1, acquire_timeout=0.2)
    async with HostPool(cfg) as pool:
        async with pool.connection():
            with pytest.raises(SshTimeoutError, match="no free SSH session") as e:
                async with pool.connection():
                    pass
            assert e.value.host == pool.label
            assert pool.stats().queued == 0
        async with pool.connection():  # the slot came back
            pass
        assert (pool.stats().leases, pool.stats().queued) == (0, 0)


# ====================================================================== accounting
async def test_accounting_exact_under_concurrency_and_cancellation(sshd_host) -> None:
    cfg = host_config(sshd_host, max_sessions=2, max_connections=2)
    rng = random.Random(7)
    async with HostPool(cfg) as pool:
        label = pool.label
        release = asyncio.Event()

        async def hold() -> None:
            async with pool.connection():
                await release.wait()

        holders = [asyncio.ensure_future(hold()) for _ in range(10)]
        await wait_for(lambda: pool.stats().leases == 4)
        assert repr(pool) == f"<HostPool {label} conns=2 sessions=4/4 queued=6>"
        # cancel some holders and some waiters
        for t in rng.sample(holders, 5):
            t.cancel()
        await asyncio.sleep(0)
        await wait_for(lambda: sum(not t.done() for t in holders) == 5)
        await wait_for(lambda: pool.stats().leases == 4)
        assert pool.stats().queued == 1
        release.set()
        await asyncio.gather(*holders, return_exceptions=True)
        assert repr(pool) == f"<HostPool {label} conns=2 sessions=0/4 queued=0>"

        # run() tasks cancelled at random moments: the books still balance
        tasks = [asyncio.ensure_future(pool.run(f"sleep 0.0{i % 5}; echo {i}")) for i in range(60)]
        for t in rng.sample(tasks, 30):
            await asyncio.sleep(rng.random() * 0.01)
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        ok = [r for r in done if not isinstance(r, BaseException)]
        assert all(isinstance(r, asyncio.CancelledError) for r in done if r not in ok)
        assert len(ok) >= 30
        s = pool.stats()
        assert (s.leases, s.control_load, s.queued) == (0, 0, 0)
        assert (await pool.run("echo still")).stdout == "still\n"
        assert re.fullmatch(
            rf"<HostPool {re.escape(label)} conns=2 sessions=[12]/4 queued=0>",
            repr(pool),
        )


async def test_idle_connections_closed(sshd_host) -> None:
    async with HostPool(host_config(sshd_host, idle_timeout=0.3)) as pool:
        await pool.run("true")
        async with pool.connection():
            await asyncio.sleep(0.5)  # in use: not idle
            assert pool.stats().connections == 1
        await wait_for(lambda: pool.stats().connections == 0, timeout=10)
        assert (await pool.run("echo reopened")).stdout == "reopened\n"


# ====================================================================== failures
@pytest.mark.parametrize("kill_sessions", [False, True])
async def test_restart_then_next_run_reconnects(sshd_host, kill_sessions: bool) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        assert (await pool.run("echo before")).stdout == "before\n"
        await sshd_host.arestart(kill_sessions=kill_sessions)  # the loop runs meanwhile
        assert (await pool.run("echo after")).stdout == "after\n"
        assert (await pool.exec("echo exec")).stdout == "exec\n"
        assert pool.stats().connections == 1


async def test_in_flight_request_fails_when_server_stops(sshd_host) -> None:
    async with HostPool(host_config(sshd_host, connect_retries=0)) as pool:
        await pool.run("true")
        task = asyncio.ensure_future(pool.run("sleep 30", timeout=60))
        await wait_for(lambda: pool.stats().control_load == 1)
        await asyncio.sleep(0.1)
        await sshd_host.astop()
        async with asyncio.timeout(10):
            with pytest.raises(SshConnectionLost) as e:
                await task
        assert e.value.retryable and e.value.host == pool.label
        await sshd_host.astart()
        assert (await pool.run("echo back")).stdout == "back\n"


async def test_cut_network_noticed_by_keepalive(sshd_cluster_factory) -> None:
    """A silent network cut: keepalive fails the request instead of hanging."""
    host = sshd_cluster_factory(n=1, netns=True).hosts[0]
    cfg = host_config(host, keepalive_interval=0.3, keepalive_count_max=2, connect_retries=0)
    async with HostPool(cfg) as pool:
        await pool.run("true")
        task = asyncio.ensure_future(pool.run("sleep 30", timeout=60))
        await wait_for(lambda: pool.stats().control_load == 1)
        await asyncio.to_thread(host.cut_network)
        try:
            async with asyncio.timeout(10):
                with pytest.raises(SshConnectionLost):
                    await task
            assert pool.stats().connections == 0
        finally:
            await asyncio.to_thread(host.restore_network)
        assert (await pool.run("echo back")).stdout == "back\n"
