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
    out = capsys.readouterr().err
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
    used = {host for _, _, host in plain_lines(capsys.readouterr().err).values()}
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
    out = capsys.readouterr().err
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
    lines = plain_lines(err)
    assert sorted(lines) == [0, 1, 2, 3]
    assert {outcome for outcome, _, _ in lines.values()} == {"KILLED"}
    assert "interrupted by SIGINT; 8 jobs: 0 finished, 4 failed, 0 skipped, 4 not run" in err
    assert not ANSI.search(out + err)
    # the host-side kill escalation (a 0.1 s check loop) may still be exiting
    deadline = time.monotonic() + 10  # hang guard only
    while any(h.job_pids() for h in sshd_cluster.hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    for h in sshd_cluster.hosts:
        assert h.job_pids() == [], h.name
    # status agrees with run: the 4 killed jobs KILLED with the one rc, the
    # 4 that never started are listed too
    status = subprocess.run(
        [sys.executable, "-m", "xqute_ssh", "status", "--json", str(wd)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    records = {r["index"]: r for r in json.loads(status.stdout)}
    assert sorted(records) == list(range(8))
    assert {(records[i]["status"], records[i]["rc"]) for i in lines} == {("KILLED", -15)}
    assert {records[i]["status"] for i in range(8) if i not in lines} == {"NOT_STARTED"}
    assert {str(records[i]["rc"]) for i in lines} == {rc for _, rc, _ in lines.values()}


def test_demo_runs_over_two_throwaway_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    require_sshd()  # skipped (failed under CI) without sshd, like the fixtures
    assert cli("demo") == 0
    out = capsys.readouterr().err
    lines = plain_lines(out)
    assert sorted(lines) == list(range(24))
    assert {host for _, _, host in lines.values()} == {"host1", "host2"}
    assert "24 jobs: 24 finished, 0 failed" in out


def test_no_third_party_warnings_from_cli_or_library(
    tmp_path: Path, sshd_cluster: SshCluster
) -> None:
    """asyncssh + cryptography >= 43 warn about DSA at import: none reach the user."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    hosts = servers_file(tmp_path, sshd_cluster, hosts=1)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xqute_ssh",
            "run",
            "--servers-file",
            str(hosts),
            "-w",
            str(tmp_path / "wd"),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr + proc.stdout
    # A script that imports the library and then asyncssh itself sees nothing either.
    lib = subprocess.run(
        [
            sys.executable,
            "-c",
            "import xqute_ssh; from xqute_ssh.ssh import HostPool; import asyncssh",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert lib.returncode == 0 and lib.stderr == "", lib.stderr


def test_a_host_refusing_us_is_said_once_on_one_line(
    tmp_path: Path, sshd_cluster: SshCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown host key, 12 jobs: one warning line, the keyscan fix unbroken."""
    hosts = servers_file(tmp_path, sshd_cluster, hosts=1)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    hosts.write_text(hosts.read_text().replace(str(sshd_cluster.known_hosts), str(empty)))
    args = tmp_path / "args"
    args.write_text("".join(f"{i}\n" for i in range(12)))
    code = cli(
        "run", "--servers-file", hosts, "-w", tmp_path / "wd", "-a", args, "--", "echo", "{}"
    )
    assert code == 1
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith(("WARNING", "ERROR"))]
    # said when the host is found unusable (and, once, that every host is
    # down): never once per job, each record on one line with the whole fix
    assert 1 <= len(warnings) <= 2, captured.err
    assert f">> {empty}" in warnings[0]
    assert "12 jobs: 0 finished, 12 failed" in captured.err
    # the summary names the cause once and lists the other jobs
    # the log says it once as it happens, the summary once at the end
    assert captured.err.count("host key unknown") == len(warnings) + 1, captured.err
    assert "failed the same way as job" in captured.err
    # each job's own account stays in its files
    assert "host key unknown" in (tmp_path / "wd" / "11" / "job.stderr").read_text()


def test_relative_workdir_and_wd(
    tmp_path: Path,
    sshd_cluster: SshCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A relative -w is this directory's, also on the hosts (shared, no copy-back);
    jobs run in the login's home unless --wd; --wd . is this directory."""
    hosts = servers_file(tmp_path, sshd_cluster, hosts=1)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "process").write_text("#!/bin/sh\necho processed $1 in $PWD\n")
    (proj / "process").chmod(0o755)
    monkeypatch.chdir(proj)
    assert cli("run", "--servers-file", hosts, "-w", "wd", "--", "pwd") == 0
    home = sshd_cluster.hosts[0].run(["sh", "-c", "cd && pwd"]).stdout.strip()
    assert (proj / "wd" / "0" / "job.stdout").read_text() == f"{home}\n"
    code = cli("run", "--servers-file", hosts, "-w", "wd2", "--wd", ".", "--", "./process", "x")
    assert code == 0, capsys.readouterr()
    assert (proj / "wd2" / "0" / "job.stdout").read_text() == f"processed x in {proj}\n"
    # The host saw the workdir (same absolute path): nothing was staged under its home.
    assert not list(Path(home).glob(".cache/xqute-ssh/*/wd2"))
