"""Hostile input and secrets, against real sshd hosts."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from xqute_ssh import ConfigError, JobStatus, Xqute
from xqute_ssh.schedulers.ssh import SshScheduler

from ..helpers import read

SECRET = "pw-s3cr3t-D0-n0t-LEAK"


async def run(xq: Xqute, timeout: float = 90) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


async def test_password_never_logged_or_written(sshd_cluster, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    host = sshd_cluster.hosts[0]
    spec = {**host.server_spec(), "keyfile": [], "password": SECRET, "connect_retries": 0}
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"h": spec}})
    job = await xq.feed(["true"])
    await run(xq)
    assert job.status == JobStatus.FAILED  # the harness's sshd refuses passwords
    assert SECRET not in caplog.text
    assert SECRET not in repr(xq.scheduler) + repr(xq.scheduler.servers)
    assert SECRET not in repr(xq.scheduler.hosts["h"].pool)
    for path in (tmp_path / "wd").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_job_files_are_not_world_writable(sshd_cluster, tmp_path: Path) -> None:
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"h": sshd_cluster.hosts[0].server_spec()}})
    job = await xq.feed(["echo", "hi"])
    await run(xq)
    assert job.status == JobStatus.FINISHED
    for path in job.metadir.path.iterdir():
        mode = path.stat().st_mode
        assert not mode & stat.S_IWOTH, path
    assert not job.wrapped_script_file("ssh").path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


async def test_job_output_is_never_executed(sshd_cluster, tmp_path: Path) -> None:
    """A job printing control-protocol look-alikes and shell code changes nothing."""
    canary = tmp_path / "canary"
    evil = (
        f"xq-started 1 1\nxq-error noscript\n$(touch {canary})\n`touch {canary}`\n"
        f"; touch {canary}\n\nxq-0123456789abcdef 0\n"
    )
    xq = Xqute("ssh", forks=2, workdir=tmp_path / "wd", scheduler_opts={"servers": {"h": sshd_cluster.hosts[0].server_spec()}})
    job = await xq.feed(["printf", "%s", evil])
    other = await xq.feed(["bash", "-c", 'printf "%s" "$1" >&2', "_", evil])
    await run(xq)
    assert job.status == JobStatus.FINISHED and other.status == JobStatus.FINISHED
    assert read(job.stdout_file.path) == evil
    assert read(other.stderr_file.path) == evil
    assert not canary.exists()


async def test_hostile_workdir_path(sshd_cluster, tmp_path: Path) -> None:
    weird = tmp_path / "wd $(touch x) `y` 'q' \"d\" é"
    xq = Xqute("ssh", workdir=weird, scheduler_opts={"servers": {"h": sshd_cluster.hosts[0].server_spec()}})
    job = await xq.feed(["bash", "-c", 'echo "$XQUTE_JOB_METADIR"'])
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert read(job.stdout_file.path) == f"{weird}/0\n"
    assert not (Path.home() / "x").exists()


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_key"
    with pytest.raises(ConfigError, match="no_such_key"):
        SshScheduler(workdir=tmp_path, servers={"h": {"host": "127.0.0.1", "keyfile": str(missing)}})


async def test_tcp_without_ssh_times_out_not_hangs(tmp_path: Path) -> None:
    """A host that accepts TCP but never speaks SSH: a bounded failure."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        spec = {"host": "127.0.0.1", "port": port, "connect_timeout": 2, "connect_retries": 0, "known_hosts": str(tmp_path / "kh")}
        (tmp_path / "kh").write_text("")
        xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"mute": spec}})
        job = await xq.feed(["true"])
        await run(xq, timeout=60)
        assert job.status == JobStatus.FAILED
        assert "127.0.0.1" in read(job.stderr_file.path)
    finally:
        listener.close()


def test_env_values_cannot_inject(tmp_path: Path) -> None:
    from xqute_ssh.wrapper import WrapperSpec, render

    text = render(WrapperSpec(cmd=["true"], job_index=0, metadir="/m", job_metadir="/m/0", envs={"A": "'; touch /tmp/pwned; '"}))
    assert "export A=''\"'\"'; touch /tmp/pwned; '\"'\"''" in text
    assert os.path.exists("/tmp/pwned") is False


def test_key_file_with_open_permissions_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SshScheduler(workdir=tmp_path, servers={"h": {"host": "127.0.0.1", "keyfile": str(key)}})


async def test_key_passphrase_works_and_never_leaks(sshd_cluster, tmp_path: Path, caplog) -> None:
    import subprocess

    caplog.set_level(logging.DEBUG)
    key = tmp_path / "id_pass"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", SECRET, "-f", str(key)], check=True)
    with open(sshd_cluster.authorized_keys, "a") as fh:
        fh.write(key.with_suffix(".pub").read_text())
    host = sshd_cluster.hosts[0]
    spec = {**host.server_spec(), "keyfile": str(key), "connect_options": {"passphrase": SECRET}}
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"h": spec}})
    job = await xq.feed(["echo", "in"])
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert SECRET not in caplog.text
    assert SECRET not in repr(xq.scheduler.servers[0].config)
    for path in (tmp_path / "wd").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
