"""Hosts that do not see the workdir: jobs run in a remote job directory.

The wrapper travels with the launch request (base64, one round trip);
statuses of all active jobs of a host are read in one round trip per poll;
when a job ends its rc, stdout and stderr come back into the local metadir:
in the same round trip as the end is noticed when they are small, streamed
over SFTP when they are large (never whole in memory).  The remote job
directory is removed after a successful fetch unless ``keep_remote``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from . import remote

_q = shlex.quote

#: Outputs up to this size come back inside the status round trip.
SMALL_OUTPUT = 1 << 20

FILES = ("job.pid", "job.stdout", "job.stderr", "job.status", "job.rc")


def default_remote_workdir(home: str, workdir: str) -> PurePosixPath:
    """``~/.cache/xqute-ssh/<key>``: one folder per controller workdir."""
    key = hashlib.sha256(f"{socket.gethostname()}:{workdir}".encode()).hexdigest()
    return PurePosixPath(home or "/tmp") / ".cache" / "xqute-ssh" / key[:16]


def fs_token_check(mounted_token: str) -> str:
    """Print the token file's content as the host sees it (empty if unseen)."""
    return f"cat -- {_q(mounted_token)} 2>/dev/null; echo"


def launch(job_dir: str, script: str) -> str:
    """Make the job directory, write the wrapper, write SUBMITTED, start it."""
    d = _q(job_dir)
    payload = base64.b64encode(script.encode("utf-8", "surrogateescape")).decode()
    path = f"{job_dir}/job.wrapped.ssh"
    files = " ".join(_q(f"{job_dir}/{f}") for f in FILES)
    return (
        f"umask 077; mkdir -p -- {d} && rm -f -- {files} && "
        f"printf '%s' {payload} | base64 -d > {_q(path)} && "
        f"echo 3 > {_q(job_dir + '/job.status')} && "
        + remote.launch(path, f"{job_dir}/job.stdout", f"{job_dir}/job.stderr")
    )


def read_statuses(
    job_dirs: Sequence[tuple[int, str]], remove: Sequence[str] = ()
) -> str:
    """Print "<index> <status>" per job (no fork per job: ``read`` builtin).

    Directories in ``remove`` (already fetched) are deleted first, so their
    clean-up rides on a round trip we make anyway.
    """
    parts = []
    if remove:
        parts.append("rm -rf -- " + " ".join(_q(r) for r in remove) + "; ")
    items = " ".join(f"{int(i)}:{_q(d)}" for i, d in job_dirs)
    parts.append(
        f"for x in {items}; do s=; "
        'read -r s < "${x#*:}/job.status" 2>/dev/null; '
        'echo "${x%%:*} $s"; done'
    )
    return "".join(parts)


def parse_statuses(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in text.splitlines():
        index, _, status = line.partition(" ")
        if index.isdigit():
            out[int(index)] = status.strip()
    return out


@dataclass
class Fetched:
    """A job's end as read from its remote directory."""

    rc: str
    stdout: bytes | None  # None: too large, stream it
    stderr: bytes | None


def fetch_small(job_dir: str) -> tuple[str, str]:
    """One round trip: rc, and stdout/stderr when small, split by a nonce."""
    mark = "xq-" + secrets.token_hex(16)
    d = job_dir
    out, err, rc = _q(d + "/job.stdout"), _q(d + "/job.stderr"), _q(d + "/job.rc")
    snippet = (
        # wc -c on a redirected regular file asks its size (fstat), reads nothing
        f"a=$(wc -c < {out} 2>/dev/null) || a=0; "
        f"b=$(wc -c < {err} 2>/dev/null) || b=0; "
        "sz=$((a + b)); "
        f'small=; [ "$sz" -le {SMALL_OUTPUT} ] && small=1; '
        "if [ -n \"$small\" ]; then printf 'small\\n'; else printf 'big\\n'; fi; "
        f"cat -- {rc} 2>/dev/null; printf '\\n{mark}\\n'; "
        f'if [ -n "$small" ]; then cat -- {out} 2>/dev/null; '
        f"printf '\\n{mark}\\n'; cat -- {err} 2>/dev/null; fi"
    )
    return snippet, mark


def parse_fetch(text: str, mark: str) -> Fetched | None:
    """Split a fetch reply; None when it is not one (the directory is gone)."""
    head, sep, rest = text.partition("\n")
    if not sep or head not in ("small", "big"):
        return None
    sep_mark = f"\n{mark}\n"
    parts = rest.split(sep_mark)
    rc = parts[0].strip()
    if head == "big":
        return Fetched(rc=rc, stdout=None, stderr=None)
    if len(parts) != 3:
        return None
    return Fetched(
        rc=rc,
        stdout=parts[1].encode("utf-8", "surrogateescape"),
        stderr=parts[2].encode("utf-8", "surrogateescape"),
    )
