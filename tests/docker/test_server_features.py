"""What differs between the SSH servers we support, measured (docs/testing.md's table).

Each assertion is a fact the SSH layer relies on or works around; if a server
changes, the table and the code that handles it must change with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.testing.images import MATRIX

from ..helpers import read

pytestmark = pytest.mark.docker

VERSIONS = {
    "openssh-bullseye": "OpenSSH_8.4",
    "openssh-bookworm": "OpenSSH_9.2",
    "openssh-trixie": "OpenSSH_10.",
    "dropbear-bookworm": "dropbear_2022.83",
}


@pytest.fixture(params=MATRIX)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_server_behaviour(sshd_cluster_factory, server: str) -> None:
    host = sshd_cluster_factory(n=1, container=server).hosts[0]
    async with asyncssh.connect(**host.connect_options()) as conn:
        assert VERSIONS[server] in str(conn.get_extra_info("server_version"))
        # exit status, and a death by signal reported as exit-signal
        r = await conn.run("exit 7")
        assert (r.exit_status, r.exit_signal) == (7, None)
        r = await conn.run("kill -s TERM $$")
        assert r.exit_signal is not None and r.exit_signal[0] == "TERM"
        # "signal" channel requests reach the command (we TERM timed-out commands)
        p = await conn.create_process("echo up; exec sleep 60")
        assert await p.stdout.readline() == "up\n"
        p.send_signal("TERM")
        async with asyncio.timeout(10):  # hang guard: the signal was ignored
            await p.wait()
        assert p.exit_signal is not None and p.exit_signal[0] == "TERM"
        # "env" requests are refused (ours: no AcceptEnv; Dropbear: none taken)
        r = await conn.run("echo ${XQ_ENV_PROBE-unset}", env={"XQ_ENV_PROBE": "1"})
        assert r.stdout == "unset\n"
        # SFTP subsystem
        async with conn.start_sftp_client() as sftp:
            assert await sftp.realpath(".") == "/home/tester"
        # channels per connection: OpenSSH refuses the 11th (MaxSessions 10)
        chans: list[Any] = []
        try:
            with pytest.raises(asyncssh.ChannelOpenError) if server.startswith("openssh") else contextlib.nullcontext():
                for _ in range(16):
                    chans.append(await conn.create_process("sleep 60"))
            assert len(chans) == (10 if server.startswith("openssh") else 16)
        finally:
            for c in chans:
                c.close()


async def test_host_without_sftp_server_fails_staging_clearly(sshd_cluster_factory, tmp_path: Path) -> None:
    """Dropbear without OpenSSH's sftp-server: staging needs SFTP; outputs, even
    large ones, come back over the control session and do not."""
    host = sshd_cluster_factory(n=1, container="dropbear-bookworm").hosts[0]
    host.run(["rm", "-f", "/usr/lib/openssh/sftp-server"], as_root=True, check=True)
    data = tmp_path / "in.txt"
    data.write_text("x\n")
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"c": host.server_spec()}})
    staged = await xq.feed(["cat", "in.txt"], stage_in=[data])
    big = await xq.feed(["head", "-c", "5000000", "/dev/zero"])
    async with asyncio.timeout(60):  # hang guard: once the run crashed here
        await xq.run_until_complete()
    assert staged.status == JobStatus.FAILED
    err = read(staged.stderr_file.path)
    assert "no SFTP server" in err and "openssh-sftp-server" in err, err
    assert big.status == JobStatus.FINISHED, read(big.stderr_file.path)
    assert big.stdout_file.path.read_bytes() == b"\0" * 5_000_000


async def test_openssh_penalty_lockout_is_explained(sshd_cluster_factory, tmp_path: Path) -> None:
    """OpenSSH >= 9.8 drops every connection from an address after ~16 that
    never tried to log in (here: host keys we rejected); say so, not just "lost"."""
    host = sshd_cluster_factory(n=1, container="openssh-trixie").hosts[0]
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    for _ in range(30):
        with contextlib.suppress(asyncssh.Error, OSError):
            async with asyncssh.connect(**{**host.connect_options(), "known_hosts": str(empty)}):
                pass
    assert "penalty" in host.log_text()
    spec = {**host.server_spec(), "connect_retries": 0}
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"c": spec}})
    job = await xq.feed(["true"])
    async with asyncio.timeout(60):
        await xq.run_until_complete()
    assert job.status == JobStatus.FAILED
    assert "PerSourcePenalties" in read(job.stderr_file.path)
