"""The container backend of the harness: same host API, own filesystem/processes/users."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncssh
import pytest

from xqute_ssh.testing import ContainerHost, HarnessError, SshCluster, SshdUnavailable, _docker

docker = pytest.mark.docker


@docker
async def test_container_hosts_are_their_own_machines(sshd_cluster_factory, tmp_path: Path) -> None:
    secret = tmp_path / "controller-only"
    secret.write_text("x")
    cluster = sshd_cluster_factory(n=2, container="openssh-bookworm")
    h1, h2 = cluster.hosts
    assert isinstance(h1, ContainerHost) and h1.user == "tester"
    assert h1.address != h2.address and h1.address.startswith("127.0.0.")
    async with asyncssh.connect(**h1.connect_options()) as conn:
        r = await conn.run(f"id -un; test -e {secret} && echo shared || echo private", check=True)
        assert r.stdout == "tester\nprivate\n"
        await conn.run("echo mine > ~/f", check=True)
    assert h1.run(["cat", "f"]).stdout == "mine\n"
    assert h2.run(["cat", "f"]).returncode != 0  # hosts share nothing either
    # own PID namespace: only the server (and our exec) are there
    assert [c for c in h1.run(["sh", "-c", "cat /proc/[0-9]*/comm"]).stdout.split() if c == "sshd"] == ["sshd"]


@docker
@pytest.mark.parametrize("image", ["openssh-bookworm", "dropbear-bookworm"])
async def test_stop_restart_semantics_match_process_hosts(sshd_cluster_factory, image: str) -> None:
    host = sshd_cluster_factory(n=1, container=image).hosts[0]
    port = host.port
    async with asyncssh.connect(**host.connect_options()) as conn:
        await conn.run("setsid sleep 300 </dev/null >/dev/null 2>&1 &", check=True)
    assert len(host.job_pids()) == 1
    jobs = host.job_pids()

    # restart(keep_connections=True): an open connection carries on
    async with asyncssh.connect(**host.connect_options()) as conn:
        await host.arestart(keep_connections=True)
        assert (await conn.run("echo still", check=True)).stdout == "still\n"

    # restart(): connections drop, detached jobs survive, same port and key
    conn = await asyncssh.connect(**host.connect_options())
    await host.arestart()
    with pytest.raises((asyncssh.Error, OSError)):
        await conn.run("true", check=True)
    conn.close()
    assert host.port == port and host.is_running()
    assert host.job_pids() == jobs
    async with asyncssh.connect(**host.connect_options()) as conn:
        assert (await conn.run("echo back", check=True)).stdout == "back\n"

    # stop(): nothing of the host survives, its files do
    host.run(["sh", "-c", "echo kept > ~/disk"], check=True)
    await host.astop()
    assert not host.is_running() and host.pids() == []
    with pytest.raises(OSError):
        await asyncssh.connect(**host.connect_options())
    await host.astart()
    assert host.run(["cat", "disk"]).stdout == "kept\n"
    assert "tester" in host.log_text()  # the server logged our logins


@docker
def test_cluster_stop_removes_its_containers(tmp_path: Path) -> None:
    try:
        cluster = SshCluster(tmp_path, 2, container="openssh-bookworm")
        cluster.start()
    except SshdUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    names = [h.container for h in cluster.hosts if isinstance(h, ContainerHost)]
    listed = _docker.docker(["ps", "--all", "--format", "{{.Names}}"]).stdout.split()
    assert set(names) <= set(listed)
    cluster.stop()
    listed = _docker.docker(["ps", "--all", "--format", "{{.Names}}"]).stdout.split()
    assert not set(names) & set(listed)


def test_container_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="openssh-bookworm"):
        SshCluster(tmp_path, 1, container="openssh-stretch")
    with pytest.raises(HarnessError, match="private_dirs and netns"):
        SshCluster(tmp_path, 1, container="openssh-bookworm", private_dirs=[tmp_path / "p"])
    with pytest.raises(HarnessError, match="OpenSSH only"):
        SshCluster(tmp_path, 1, container="dropbear-bookworm", sshd_config=["MaxSessions 2"])


INNER = """
import pytest
pytestmark = pytest.mark.docker

def test_needs_docker(sshd_cluster_factory):
    sshd_cluster_factory(n=1, container="openssh-bookworm")
"""


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_dockerd_skips_with_reason_or_fails_under_ci(tmp_path: Path, ci: str) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    (tmp_path / "conftest.py").write_text((Path(__file__).parents[1] / "conftest.py").read_text())
    env = {
        **os.environ,
        "CI": ci,
        "DOCKER_HOST": f"unix://{tmp_path}/no-dockerd.sock",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-rsf", "-p", "no:cacheprovider", "-m", "docker"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    out = done.stdout
    if ci:
        assert done.returncode == 1 and "1 failed" in out, out
        assert "CI is set" in out
    else:
        assert done.returncode == 0 and "1 skipped" in out, out
    assert "dockerd is not running" in out or "docker CLI is not installed" in out, out


@docker
def test_containers_of_a_killed_run_are_removed_by_the_next(sshd_cluster_factory) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a harness pid that no longer runs
    name = f"xqute-ssh-orphan-{os.getpid()}"
    sshd_cluster_factory(n=1, container="openssh-bookworm")  # makes sure the image exists
    _docker.docker(["create", "--name", name, "--label", f"org.xqute-ssh.owner={gone.pid}",
                    "xqute-ssh-test:openssh-bookworm"])
    sshd_cluster_factory(n=1, container="openssh-bookworm")
    listed = _docker.docker(["ps", "--all", "--format", "{{.Names}}"]).stdout.split()
    assert name not in listed
