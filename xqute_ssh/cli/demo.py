"""``xqute-ssh demo``: a small batch over two throwaway loopback sshd hosts.

Uses the test harness (:class:`xqute_ssh.testing.SshCluster`) to start two
real OpenSSH servers on 127.0.0.x with their own keys, then runs the batch
through the same code as ``xqute-ssh run`` with servers, with the
live display.  Everything lives in a temporary directory that is removed
afterwards, and the harness stops every sshd and job process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from ..testing import harness
from .args import RunPlan
from .output import Output
from .run import execute

N_JOBS = 24
FORKS_PER_HOST = 4
INSTALL_HINT = (
    "xqute-ssh demo needs OpenSSH's server (sshd), which is not installed.\n"
    "On Debian/Ubuntu:  sudo apt-get install openssh-server\n"
    "On Fedora/RHEL:    sudo dnf install openssh-server\n"
    "(the demo starts its own sshd on loopback; it does not touch the system one)"
)
#: Each job says who it is and takes a little while, so the display has
#: something to show.  Values come in as arguments, never spliced into code.
JOB_SCRIPT = 'echo "job $1 ran as $(id -un) in $PWD"; sleep "$2"'


def sshd_path() -> str | None:
    """Where sshd is, if installed (the harness also looks outside PATH)."""
    try:
        return harness.sshd_path()
    except harness.SshdUnavailable:
        return None


def demo_commands(n: int = N_JOBS) -> list[str | list[str]]:
    """``n`` jobs sleeping 0.2 to 0.9 s each."""
    return [["bash", "-c", JOB_SCRIPT, "demo", str(i), f"0.{2 + (i * 7) % 8}"] for i in range(n)]


def demo_command(ns: argparse.Namespace) -> int:
    """The ``demo`` subcommand: 0 when every demo job finished, 2 without sshd."""
    if sshd_path() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    out = Output.choose()
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-demo-") as base:
        out.err_console.print("starting two loopback sshd hosts ...", style="dim", markup=False)
        try:
            cluster = harness.SshCluster(Path(base) / "hosts", n=2)
            cluster.start()
        except harness.SshdUnavailable as exc:
            print(f"{exc}\n{INSTALL_HINT}", file=sys.stderr)
            return 2
        with cluster:
            servers = {h.name: h.server_spec() for h in cluster.hosts}
            out.err_console.print(
                "hosts: " + ", ".join(f"{h.name} ({h.spec_string})" for h in cluster.hosts),
                style="dim",
                markup=False,
            )
            plan = RunPlan(
                commands=demo_commands(),
                scheduler="ssh",
                scheduler_opts={
                    "servers": servers,
                    "forks_per_server": FORKS_PER_HOST,
                },
                forks=FORKS_PER_HOST * len(servers),
                workdir=str(Path(base) / ".xqute"),
                servers_flag="demo",
            )
            return asyncio.run(execute(plan, out, verbose=ns.verbose))
