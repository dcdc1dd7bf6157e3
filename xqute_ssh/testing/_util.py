"""Shared pieces of the sshd harness: its errors, finding tools, keys, ports."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from xqute_ssh.errors import XquteError

INSTALL_HINT = "install OpenSSH's server: apt-get install openssh-server"
START_TIMEOUT = 10.0  # sshd normally listens within ~20 ms
STOP_TIMEOUT = 5.0
MAX_PORT_TRIES = 5
LOOPBACK_PREFIX = "127.0.0."
# keywords the harness must own, or the host would not be where it says it is
RESERVED_KEYWORDS = frozenset({"listenaddress", "port", "hostkey", "pidfile"})


class HarnessError(XquteError, RuntimeError):
    """The sshd test harness failed or was misused (root of its errors)."""


class SshdUnavailable(HarnessError):
    """sshd, or a feature asked for (private dirs, netns), cannot run here.

    The pytest fixtures turn it into a skip, or a failure when ``CI`` is set.
    """


class SshdStartError(HarnessError):
    """sshd exists but did not come up; the message ends with its log tail."""


def sshd_path() -> str:
    """Absolute path of the sshd binary (sshd refuses to run otherwise).

    sshd usually lives in an ``sbin`` directory that a non-root PATH lacks,
    so the usual places are tried after PATH.
    """
    candidates = [shutil.which("sshd")] + [
        f"{d}/sshd" for d in ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")
    ]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    raise SshdUnavailable(f"no sshd binary found; {INSTALL_HINT}")


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        raise SshdUnavailable(f"{name} not found; apt-get install {package}")
    return path


def free_port(address: str) -> int:
    """A port free on ``address`` right now (sshd may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def is_listening(pid: int, address: str, port: int) -> bool:
    """True when process ``pid`` itself listens on TCP ``address:port``.

    Read from /proc, so it works whatever LogLevel the user set and costs no
    connection to sshd (a probe would count against MaxStartups).  The socket
    must be one of ``pid``'s own: someone else listening there (the race that
    makes sshd fail to bind) does not count.
    """
    raw = int.from_bytes(socket.inet_aton(address), sys.byteorder)
    want = f"{raw:08X}:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as fh:
            next(fh, None)
            inodes = {
                f"socket:[{f[9]}]"
                for f in (line.split() for line in fh)
                if f[1] == want and f[3] == "0A"  # 0A: TCP_LISTEN
            }
        if not inodes:
            return False
        fd_dir = f"/proc/{pid}/fd"
        return any(os.readlink(f"{fd_dir}/{fd}") in inodes for fd in os.listdir(fd_dir))
    except OSError:
        return False


def keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    done = subprocess.run(
        [
            tool("ssh-keygen", "openssh-client"),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise HarnessError(f"ssh-keygen {path}: {done.stderr.strip()}")


def keyword(line: str) -> str:
    """The lower-cased keyword of an sshd_config line ('' for blanks/comments)."""
    words = re.split(r"[\s=]+", line.strip(), maxsplit=1)
    return "" if not words[0] or words[0].startswith("#") else words[0].lower()


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])
