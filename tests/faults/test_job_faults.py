"""Jobs that misbehave: daemons, closed stdout, huge output, odd bytes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import JobStatus, Xqute, plugin

from ..helpers import assert_gone, read


def ssh_opts(cluster: Any, **extra: Any) -> dict[str, Any]:
    return {"servers": {h.name: h.server_spec() for h in cluster.hosts}, **extra}


async def run(xq: Xqute, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


async def test_background_daemon_dies_with_the_job_on_kill(sshd_cluster, tmp_path: Path) -> None:
    marker = f"xq-daemon-{os.getpid()}"

    class KillSoon:
        name = "kill-daemon-job"

        @plugin.impl
        async def on_job_started(scheduler, job):
            async def later() -> None:
                await asyncio.sleep(1)
                await scheduler.kill_job_and_update_status(job)

            asyncio.get_running_loop().create_task(later())

    xq = Xqute("ssh", workdir=tmp_path, plugins=[KillSoon], scheduler_opts=ssh_opts(sshd_cluster, kill_grace=1))
    # nohup'd, TERM-ignoring daemon in the background, then the job waits
    job = await xq.feed(["bash", "-c", f"nohup bash -c \"trap '' TERM; exec -a {marker} sleep 300\" >/dev/null 2>&1 & sleep 300"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    await assert_gone(marker)


async def test_job_closing_stdout_early(sshd_cluster, tmp_path: Path) -> None:
    xq = Xqute("ssh", workdir=tmp_path, scheduler_opts=ssh_opts(sshd_cluster))
    job = await xq.feed(["bash", "-c", "echo before; exec 1>&- 2>&-; sleep 0.5; exit 0"])
    await run(xq)
    assert job.status == JobStatus.FINISHED
    assert read(job.stdout_file.path) == "before\n"


@pytest.mark.slow
async def test_job_printing_1gb(sshd_cluster, tmp_path: Path) -> None:
    xq = Xqute("ssh", workdir=tmp_path, scheduler_opts=ssh_opts(sshd_cluster))
    job = await xq.feed(["head", "-c", str(1 << 30), "/dev/zero"])
    await run(xq, timeout=300)
    assert job.status == JobStatus.FINISHED
    assert job.stdout_file.path.stat().st_size == 1 << 30
    job.stdout_file.path.unlink()


async def test_non_utf8_output_kept_byte_for_byte(sshd_cluster, tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    xq = Xqute("ssh", workdir=tmp_path, scheduler_opts=ssh_opts(sshd_cluster))
    job = await xq.feed(["bash", "-c", 'printf "$1" >&2; printf "$1"', "_", "".join(f"\\x{b:02x}" for b in data)])
    await run(xq)
    assert job.status == JobStatus.FINISHED
    assert job.stdout_file.path.read_bytes() == data
    assert job.stderr_file.path.read_bytes() == data


async def test_man_in_the_middle_host_key_is_refused(sshd_cluster_factory, tmp_path: Path) -> None:
    """Another sshd, with another host key, takes over the real host's address
    and port (a man in the middle): refused, and the message says so."""
    import subprocess

    from xqute_ssh.testing import sshd_path

    real = sshd_cluster_factory(n=1).hosts[0]
    spec = real.server_spec()
    real.stop()
    mitm = tmp_path / "mitm"
    mitm.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(mitm / "hostkey")], check=True)
    pub = subprocess.run(["ssh-keygen", "-y", "-f", spec["keyfile"]], capture_output=True, text=True, check=True).stdout
    (mitm / "authorized_keys").write_text(pub)
    (mitm / "sshd_config").write_text(
        f"ListenAddress {real.address}:{real.port}\nHostKey {mitm / 'hostkey'}\n"
        f"AuthorizedKeysFile {mitm / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        f"PidFile {mitm / 'pid'}\nPermitRootLogin prohibit-password\n"
    )
    impostor = subprocess.Popen([sshd_path(), "-D", "-f", str(mitm / "sshd_config"), "-E", str(mitm / "log")])
    try:
        async with asyncio.timeout(20):  # hang guard: wait until it listens
            while "Server listening" not in ((mitm / "log").read_text() if (mitm / "log").exists() else ""):
                await asyncio.sleep(0.05)
        xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"h": spec}})
        job = await xq.feed(["true"])
        await run(xq)
    finally:
        impostor.terminate()
        impostor.wait()
    assert job.status == JobStatus.FAILED
    err = read(job.stderr_file.path).lower()
    assert "host key" in err and "changed" in err, err
