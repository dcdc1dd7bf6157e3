"""The ``xqute-ssh`` command line over real sshd hosts (the harness).

The hosts run on this machine, so the workdir (under tmp_path) is shared
with them, as on a cluster with a shared filesystem.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xqute_ssh.testing import SshCluster
from xqute_ssh.testing.pytest_plugin import require_sshd

from ..test_cli import (  # _no_forced_colour: the same autouse fixture here
    ANSI,
    AWKWARD,
    ECHO_ARG,
    _no_forced_colour,  # noqa: F401
    cli,
    plain_lines,
)


def servers_file(tmp_path: Path, cluster: SshCluster, hosts: int | None = None) -> Path:
    """A TOML servers file for the cluster's hosts (the first ``hosts`` of them)."""
    lines = [
        f"keyfile = {json.dumps(str(cluster.client_key))}",
        f"known_hosts = {json.dumps(str(cluster.known_hosts))}",
    ]
    for h in cluster.hosts[:hosts]:
        lines += [
            f"[servers.{h.name}]",
            f"host = {json.dumps(h.address)}",
            f"port = {h.port}",
            f"user = {json.dumps(h.user)}",
        ]
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_exit_status_hosts_and_status_json(
    tmp_path: Path, sshd_cluster: SshCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = servers_file(tmp_path, sshd_cluster)
    args = tmp_path / "args"
    args.write_text("".join(f"{i}\n" for i in range(12)))
    wd = tmp_path / "wd"
    # -j 4 over 2 hosts: 2 slots each, so both hosts get jobs
    code = cli(
        "run",
        "--servers-file",
        hosts,
        "-j",
        "4",
        "-w",
        wd,
        "-a",
        args,
        "--",
        "bash",
        "-c",
        'sleep 0.2; [ "$1" != 7 ]',
        "_",
        "{}",
    )
    assert code == 1
    out = capsys.readouterr().out
    lines = plain_lines(out)
    assert sorted(lines) == list(range(12))
    assert lines[7][:2] == ("FAILED", "1")
    assert {host for _, _, host in lines.values()} == {"host1", "host2"}
    assert "12 jobs: 11 finished, 1 failed, 0 skipped, 0 not run" in out
    assert not ANSI.search(out)

    assert cli("status", "--json", wd) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in records] == list(range(12))
    for r in records:
        assert r["host"] == lines[r["index"]][2]
        assert r["status"] == ("FAILED" if r["index"] == 7 else "FINISHED")
        assert r["command"] == ["bash", "-c", 'sleep 0.2; [ "$1" != 7 ]', "_", str(r["index"])]
        assert r["duration"] is not None and r["duration"] >= 0.15

    assert cli("run", "--servers-file", hosts, "-w", tmp_path / "wd2", "--", "true") == 0


def test_awkward_names_arrive_byte_for_byte_over_ssh(
    tmp_path: Path, sshd_cluster: SshCluster
) -> None:
    hosts = servers_file(tmp_path, sshd_cluster)
    args = tmp_path / "args"
    args.write_bytes(b"\n".join(AWKWARD) + b"\n")
    wd = tmp_path / "wd"
    assert cli("run", "--servers-file", hosts, "-w", wd, "-a", args, "--", *ECHO_ARG, "<{}>") == 0
    for i, name in enumerate(AWKWARD):
        assert (wd / str(i) / "job.stdout").read_bytes() == b"<" + name + b">"


def test_server_flag_joins_the_file_and_gets_its_defaults(
    tmp_path: Path, sshd_cluster: SshCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # the file names host1 only; host2 comes from -S and needs the file's
    # keyfile and known_hosts to be reachable at all
    hosts = servers_file(tmp_path, sshd_cluster, hosts=1)
    second = sshd_cluster.hosts[1].spec_string
    jobs = tmp_path / "jobs"
    jobs.write_text("sleep 0.3\n" * 8)
    assert (
        cli(
            "run",
            "--servers-file",
            hosts,
            "-S",
            second,
            "-j",
            "4",
            "-w",
            tmp_path / "wd",
            "-f",
            jobs,
        )
        == 0
    )
    used = {host for _, _, host in plain_lines(capsys.readouterr().out).values()}
    assert used == {"host1", second}


def test_resume_over_ssh(
    tmp_path: Path, sshd_cluster: SshCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = servers_file(tmp_path, sshd_cluster)
    counts = tmp_path / "counts"
    counts.mkdir()
    args = tmp_path / "args"
    args.write_text("a\nbad\nc\nd\n")
    cmd = ["--", "bash", "-c", 'echo ran >> "$2/$1"; [ "$1" != bad ]', "_", "{}", str(counts)]
    wd = tmp_path / "wd"
    assert cli("run", "--servers-file", hosts, "-w", wd, "-a", args, *cmd) == 1
    capsys.readouterr()
    assert cli(
        "run", "--servers-file", hosts, "-w", wd, "-a", args, "--resume", "--retries", "1", *cmd
    ) == 1
    out = capsys.readouterr().out
    assert {p.name: p.read_text().count("ran") for p in counts.iterdir()} == {
        "a": 1,
        "bad": 2,  # retried: --retries 1, its first attempt counted
        "c": 1,
        "d": 1,
    }
    assert "4 jobs: 0 finished, 1 failed, 3 skipped, 0 not run" in out


def test_ctrl_c_over_ssh_exits_130_and_kills_every_job(
    tmp_path: Path, sshd_cluster: SshCluster
) -> None:
    hosts = servers_file(tmp_path, sshd_cluster)
    wd = tmp_path / "wd"
    args = tmp_path / "args"
    args.write_text("".join(f"{i}\n" for i in range(8)))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xqute_ssh",
            "run",
            "--servers-file",
            str(hosts),
            "-j",
            "4",
            "-w",
            str(wd),
            "-a",
            str(args),
            "--",
            "sleep",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60  # hang guard only

        def running() -> int:
            return sum(
                (wd / str(i) / "job.status").exists()
                and (wd / str(i) / "job.status").read_text().strip() == "4"
                for i in range(8)
            )

        while running() < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the jobs never started"
            time.sleep(0.05)
        assert all(h.job_pids() for h in sshd_cluster.hosts)  # both hosts run jobs
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = plain_lines(out)
    assert sorted(lines) == [0, 1, 2, 3]
    assert {outcome for outcome, _, _ in lines.values()} == {"KILLED"}
    assert "interrupted by SIGINT; 8 jobs: 0 finished, 4 failed, 0 skipped, 4 not run" in out
    assert not ANSI.search(out + err)
    # the host-side kill escalation (a 0.1 s check loop) may still be exiting
    deadline = time.monotonic() + 10  # hang guard only
    while any(h.job_pids() for h in sshd_cluster.hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    for h in sshd_cluster.hosts:
        assert h.job_pids() == [], h.name


def test_demo_runs_over_two_throwaway_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    require_sshd()  # skipped (failed under CI) without sshd, like the fixtures
    assert cli("demo") == 0
    out = capsys.readouterr().out
    lines = plain_lines(out)
    assert sorted(lines) == list(range(24))
    assert {host for _, _, host in lines.values()} == {"host1", "host2"}
    assert "24 jobs: 24 finished, 0 failed" in out
