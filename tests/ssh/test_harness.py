"""The real-sshd test harness itself (xqute_ssh.testing).

Real OpenSSH servers, asyncssh as the client, host keys always checked
against the harness's known_hosts file.  ``asyncio.timeout`` is only a hang
guard: every test takes well under a second or two.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from xqute_ssh.testing import HarnessError, SshCluster, SshdHost, SshdStartError, _util
from xqute_ssh.testing._reaper import read_proc
from xqute_ssh.testing.pytest_plugin import require_sshd, skip_or_fail

GUARD = 10.0
Factory = Callable[..., SshCluster]


def alive(pid: int) -> bool:
    p = read_proc(pid)
    return p is not None and p.alive


def netns_exists(netns: str, veth: str) -> bool:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return netns in listing.split() or os.path.exists(f"/sys/class/net/{veth}")


async def run(host: SshdHost, command: str, **options: Any) -> str:
    """Run ``command`` over a fresh, host-key-checked connection; its stdout."""
    async with asyncio.timeout(GUARD):
        async with asyncssh.connect(**{**host.connect_options(), **options}) as conn:
            return str((await conn.run(command, check=True)).stdout)


async def start_detached(host: SshdHost) -> int:
    """Start ``setsid sleep 60`` on the host, detached; its pid."""
    # `&` in sh leaves the child outside the group lead, so setsid execs in place: $! is sleep
    out = await run(host, "setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $!")
    return int(out)


# ====================================================================== basics
async def test_two_hosts_each_on_its_own_address(sshd_cluster: SshCluster) -> None:
    a, b = sshd_cluster.hosts
    assert (a.name, a.address, b.name, b.address) == ("host1", "127.0.0.2", "host2", "127.0.0.3")
    for h in (a, b):
        _, _, server_ip, server_port, user = (
            await run(h, "echo $SSH_CONNECTION $(id -un)")
        ).split()
        assert (server_ip, int(server_port), user) == (h.address, h.port, h.user)
        assert h.spec_string == f"{h.user}@{h.address}:{h.port}"
        assert h.connect_options()["known_hosts"] == str(h.known_hosts)
        assert h.server_spec() == {
            "host": h.address,
            "port": h.port,
            "user": h.user,
            "keyfile": str(h.client_key),
            "known_hosts": str(h.known_hosts),
        }
        assert "Accepted publickey for" in h.log_text()
    lines = a.known_hosts.read_text().splitlines()
    assert lines == [
        f"[{h.address}]:{h.port} {' '.join(h.host_key_pub.split()[:2])}" for h in (a, b)
    ]
    assert a.host_key_pub != b.host_key_pub
    assert repr(a) == f"<SshdHost host1 {a.spec_string} running>"


async def test_unknown_client_key_and_unknown_host_key_are_refused(
    sshd_host: SshdHost, tmp_path: Path
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await run(sshd_host, "true", client_keys=[stranger])
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await run(sshd_host, "true", known_hosts=str(empty))


async def test_user_config_lines_replace_defaults(sshd_cluster_factory: Factory) -> None:
    host = sshd_cluster_factory(n=1, sshd_config=("MaxSessions 2", "LogLevel DEBUG")).hosts[0]
    config = host.config_file.read_text()
    assert "LogLevel DEBUG" in config and "LogLevel VERBOSE" not in config
    async with asyncio.timeout(GUARD), asyncssh.connect(**host.connect_options()) as conn:
        first = await conn.create_process("sleep 10")
        second = await conn.create_process("sleep 10")
        with pytest.raises(asyncssh.ChannelOpenError):  # the third session of MaxSessions 2
            await conn.create_process("true")
        first.close()
        second.close()
    assert "debug1:" in host.log_text()


def test_config_uses_keywords_every_openssh_knows(sshd_cluster_factory: Factory) -> None:
    # OpenSSH < 8.7 (Debian bullseye) exits on "KbdInteractiveAuthentication";
    # every version takes the old name for the same option.
    config = sshd_cluster_factory(n=1).hosts[0].config_file.read_text()
    assert "ChallengeResponseAuthentication no" in config
    assert "KbdInteractive" not in config
    mine = ("KbdInteractiveAuthentication no",)  # a user's line replaces ours, either name
    config = sshd_cluster_factory(n=1, sshd_config=mine).hosts[0].config_file.read_text()
    assert "ChallengeResponse" not in config


def test_misuse_is_reported(sshd_host: SshdHost, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="ListenAddress"):
        SshCluster(tmp_path, 1, sshd_config=("ListenAddress 0.0.0.0",))
    with pytest.raises(HarnessError, match="netns=True"):
        sshd_host.cut_network()
    with pytest.raises(HarnessError, match="would hide"):
        SshCluster(tmp_path / "base", 1, private_dirs=(tmp_path,))


# ====================================================================== lifecycle
async def test_restart_keeps_port_and_host_key_and_drops_connections(sshd_host: SshdHost) -> None:
    port, key = sshd_host.port, sshd_host.host_key_pub
    async with asyncio.timeout(GUARD), asyncssh.connect(**sshd_host.connect_options()) as conn:
        await conn.run("true", check=True)
        await sshd_host.arestart(keep_connections=True)  # like `systemctl restart ssh`
        await conn.run("true", check=True)
        await sshd_host.arestart()  # like a crash: connections drop
        with pytest.raises((asyncssh.Error, OSError)):
            await conn.run("true", check=True)
    assert (sshd_host.port, sshd_host.host_key_pub) == (port, key)
    assert sshd_host.is_running()
    assert await run(sshd_host, "echo again") == "again\n"  # same known_hosts still valid
    assert sshd_host.log_text().count("Server listening on") == 3


async def test_detached_job_survives_restart_but_not_stop(sshd_host: SshdHost) -> None:
    job = await start_detached(sshd_host)
    assert job in sshd_host.job_pids()
    await sshd_host.arestart()
    assert alive(job) and job in sshd_host.pids()

    await sshd_host.arestart(kill_sessions=True)
    assert not alive(job)

    job = await start_detached(sshd_host)
    await sshd_host.astop()
    assert not alive(job)
    assert not sshd_host.is_running() and sshd_host.pids() == []
    await sshd_host.astart()
    assert sshd_host.is_running()


async def test_stop_kills_live_sessions_and_their_children(sshd_host: SshdHost) -> None:
    async with asyncio.timeout(GUARD), asyncssh.connect(**sshd_host.connect_options()) as conn:
        proc = await conn.create_process("sleep 60 & echo $$ $!; wait")
        shell, child = map(int, (await proc.stdout.readline()).split())
        assert {shell, child} <= set(sshd_host.job_pids())
        await sshd_host.astop()
        assert not alive(shell) and not alive(child)
        assert sshd_host.pids() == []


async def test_async_context_manager_cleans_up(tmp_path: Path) -> None:
    require_sshd()
    async with SshCluster(tmp_path, n=1) as cluster:
        host = cluster.hosts[0]
        job = await start_detached(host)
        everything = host.pids()
    assert not alive(job)
    assert not any(alive(p) for p in everything)
    cluster.stop()  # idempotent
    with SshCluster(tmp_path / "again", n=1) as again:
        assert again.hosts[0].is_running()
    assert not again.hosts[0].is_running()


def test_taken_port_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_sshd()
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        offers = iter([taken])
        real = _util.free_port
        monkeypatch.setattr(_util, "free_port", lambda address: next(offers, 0) or real(address))
        with SshCluster(tmp_path, n=1) as cluster:
            host = cluster.hosts[0]
            assert host.port != taken and host.is_running()
            assert "Address already in use" in host.log_text()
            assert f"[127.0.0.2]:{host.port} " in host.known_hosts.read_text()


def test_sshd_that_cannot_start_shows_its_log(tmp_path: Path) -> None:
    require_sshd()
    cluster = SshCluster(tmp_path, n=1, sshd_config=("NoSuchOption yes",))
    with pytest.raises(SshdStartError, match="Bad configuration option: NoSuchOption"):
        cluster.start()
    assert cluster.hosts[0].pids() == []  # torn down


# ====================================================================== isolation
async def test_private_dirs_are_private_both_ways(
    sshd_cluster_factory: Factory, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    a, b = sshd_cluster_factory(n=2, private_dirs=(scratch,)).hosts
    (scratch / "local.txt").write_text("controller\n")
    assert await run(a, f"ls -A {scratch}; echo host1 > {scratch}/remote.txt") == ""
    assert not (scratch / "remote.txt").exists()
    assert a.run(["cat", f"{scratch}/remote.txt"]).stdout == "host1\n"
    assert b.run(["ls", "-A", str(scratch)]).stdout == ""  # hosts do not share either
    await a.arestart(kill_sessions=True)  # the private dir is the host's disk: it stays
    assert await run(a, f"cat {scratch}/remote.txt") == "host1\n"


async def test_netns_cut_and_restore(sshd_cluster_factory: Factory) -> None:
    cluster = sshd_cluster_factory(n=1, netns=True)
    host = cluster.hosts[0]
    assert host.address.startswith("10.213.") and host.port == 22
    assert f"inet {host.address}/30" in host.run(["ip", "-4", "-o", "addr"]).stdout
    assert f"{host.address} ssh-ed25519 " in host.known_hosts.read_text()  # port 22: bare
    async with asyncio.timeout(GUARD), asyncssh.connect(**host.connect_options()) as conn:
        await conn.run("true", check=True)
        await asyncio.to_thread(host.cut_network)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await conn.run("true")
        with pytest.raises((TimeoutError, OSError, asyncssh.Error)):
            await run(host, "true", connect_timeout=0.3)
        await asyncio.to_thread(host.restore_network)
        assert await run(host, "echo new") == "new\n"
        assert (await conn.run("echo old", check=True)).stdout == "old\n"  # TCP retransmits
    link = host._link
    assert link is not None
    await cluster.astop()
    assert not await asyncio.to_thread(netns_exists, link.netns, link.veth)


CHILD = """
import json, sys, time
from xqute_ssh.testing import SshCluster
cluster = SshCluster(sys.argv[1], n=1, netns=True)
cluster.start()
host = cluster.hosts[0]
print(json.dumps([host.pids(), host._link.netns, host._link.veth]), flush=True)
time.sleep(60)
"""


async def test_sigkilled_controller_leaves_nothing_behind(
    sshd_cluster_factory: Factory, tmp_path: Path
) -> None:
    """The reapers kill their hosts when the controller dies; the next netns
    cluster removes the namespaces the dead one left."""
    sshd_cluster_factory(n=1, netns=True)  # skips/fails here if netns is unavailable
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(tmp_path / "child"), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    async with asyncio.timeout(GUARD):
        pids, netns, veth = json.loads(await child.stdout.readline())
        child.kill()
        await child.wait()
        while any(alive(p) for p in pids):
            await asyncio.sleep(0.01)
    assert await asyncio.to_thread(netns_exists, netns, veth)  # nobody removed it yet
    sshd_cluster_factory(n=1, netns=True)
    assert not await asyncio.to_thread(netns_exists, netns, veth)


# ====================================================================== pytest plugin
def test_missing_sshd_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get"):
        skip_or_fail("no sshd binary found; apt-get install openssh-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="may not be skipped"):
        skip_or_fail("no sshd binary found")
