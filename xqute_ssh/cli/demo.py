"""``xqute-ssh demo``: a small batch over two throwaway loopback sshd hosts.

Uses the test harness (:class:`xqute_ssh.testing.SshCluster`) to start two
real OpenSSH servers on 127.0.0.x with their own keys, then runs the batch
through the very code path of ``xqute-ssh run -S ...`` with the live display.
Everything lives in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

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
    """Where sshd is, if installed (it is often outside a user's PATH)."""
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def demo_commands(n: int = N_JOBS) -> list[str | list[str]]:
    """``n`` jobs sleeping 0.2 to 0.9 s each."""
    return [
        ["bash", "-c", JOB_SCRIPT, "demo", str(i), f"0.{2 + (i * 7) % 8}"]
        for i in range(n)
    ]


def demo_command(ns: argparse.Namespace) -> int:
    """The ``demo`` subcommand: 0 when every demo job finished, 2 without sshd."""
    if sshd_path() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    try:
        from ..testing import SshCluster
    except ImportError as exc:
        print(
            f"xqute-ssh demo: the sshd test harness is not available ({exc})",
            file=sys.stderr,
        )
        return 2
    out = Output.choose()
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-demo-") as base:
        out.err_console.print(
            "starting two loopback sshd hosts ...", style="dim", markup=False
        )
        with SshCluster(Path(base) / "hosts", n=2) as cluster:
            servers = {h.name: h.server_spec() for h in cluster.hosts}
            out.err_console.print(
                "hosts: " + ", ".join(servers), style="dim", markup=False
            )
            plan = RunPlan(
                commands=demo_commands(),
                scheduler="ssh",
                scheduler_opts={"servers": servers},
                forks=FORKS_PER_HOST * len(servers),
                workdir=str(Path(base) / ".xqute"),
                servers_flag="demo",
            )
            return asyncio.run(execute(plan, out, verbose=ns.verbose))
