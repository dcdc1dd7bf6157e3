"""Hosts that do not see the workdir: jobs run in a remote job directory.

The wrapper travels with the launch request (base64, one round trip);
statuses of all active jobs of a host are read in one round trip per poll;
when a job ends its rc, stdout and stderr come back into the local metadir:
in the same round trip as the end is noticed when they are small, in 1 MiB
chunks over the same control session when they are large (never whole in
memory, and no SFTP subsystem needed).  The remote job
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

#: Larger outputs come back in chunks of this size, one round trip each.
CHUNK = 1 << 20

FILES = ("job.pid", "job.stdout", "job.stderr", "job.status", "job.rc")


def default_remote_workdir(home: str, workdir: str) -> PurePosixPath:
    """``~/.cache/xqute-ssh/<key>``: one folder per controller workdir."""
    key = hashlib.sha256(f"{socket.gethostname()}:{workdir}".encode()).hexdigest()
    return PurePosixPath(home or "/tmp") / ".cache" / "xqute-ssh" / key[:16]


def fs_token_check(mounted_token: str, mounted_reply: str, reply: str) -> str:
    """Print the token file's content as the host sees it (empty if unseen),
    then write ``reply`` into ``mounted_reply`` and say whether that worked
    ("xq-write-ok", or "xq-write-failed" and the shell's error): a workdir
    the host can read but not write is found here, before jobs go there."""
    return (
        f"cat -- {_q(mounted_token)} 2>/dev/null; echo; "
        f"if xq_err=$( {{ printf '%s\\n' {_q(reply)} > {_q(mounted_reply)}; }} 2>&1 ); "
        'then echo xq-write-ok; else echo "xq-write-failed $xq_err"; fi'
    )


def parse_token_check(text: str) -> tuple[str, str | None]:
    """(the token the host read, None if it could write or the error)."""
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    for line in lines[1:]:
        if line.startswith("xq-write-ok"):
            return token, None
        if line.startswith("xq-write-failed"):
            return token, line[len("xq-write-failed") :].strip() or "write failed"
    return token, "no answer to the write test"


def launch(job_dir: str, script: str, events: str | None = None) -> str:
    """Make the job directory, write the wrapper, write SUBMITTED, start it
    (``events``: see remote.launch)."""
    d = _q(job_dir)
    payload = base64.b64encode(script.encode("utf-8", "surrogateescape")).decode()
    path = f"{job_dir}/job.wrapped.ssh"
    files = " ".join(_q(f"{job_dir}/{f}") for f in FILES)
    return (
        f"umask 077; mkdir -p -- {d} && rm -f -- {files} && "
        f"printf '%s' {payload} | base64 -d > {_q(path)} && "
        f"echo 3 > {_q(job_dir + '/job.status')} && "
        + remote.launch(path, f"{job_dir}/job.stdout", f"{job_dir}/job.stderr", events)
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
    """One round trip: rc, output sizes, and the outputs when small.

    Three processes on the host (the size query, its subshell, one cat); the
    reply is "<rc> <out bytes> <err bytes> small|big", the nonce, then stdout
    and stderr back to back, split by the sizes.
    """
    mark = "xq-" + secrets.token_hex(16)
    out, err, rc = (_q(f"{job_dir}/{n}") for n in ("job.stdout", "job.stderr", "job.rc"))
    snippet = (
        f"rc=; read -r rc < {rc}; : >> {out}; : >> {err}; "
        f"sz=$(stat -c %s -- {out} {err} 2>/dev/null) || sz='0 0'; set -- $sz; "
        f'if [ $(($1 + $2)) -le {SMALL_OUTPUT} ]; then k=small; else k=big; fi; '
        f"printf '%s %s %s %s\\n{mark}\\n' \"$rc\" \"$1\" \"$2\" \"$k\"; "
        f'[ "$k" = small ] && cat -- {out} {err} 2>/dev/null; :'
    )
    return snippet, mark


def parse_fetch(text: str, mark: str) -> Fetched | None:
    """Split a fetch reply; None when it is not one (the directory is gone)."""
    head, sep, rest = text.partition(f"\n{mark}\n")
    fields = head.split()
    if not sep or len(fields) != 4 or fields[3] not in ("small", "big"):
        return None
    rc, n_out, n_err, kind = fields
    if kind == "big":
        return Fetched(rc=rc, stdout=None, stderr=None)
    data = rest.encode("utf-8", "surrogateescape")
    try:
        size_out, size_err = int(n_out), int(n_err)
    except ValueError:
        return None
    if len(data) != size_out + size_err:
        return None  # still being written: try again next cycle
    return Fetched(rc=rc, stdout=data[:size_out], stderr=data[size_out:])


def read_chunk(path: str, offset: int, size: int = CHUNK) -> tuple[str, str]:
    """Print a nonce line, then up to ``size`` bytes of ``path`` from
    ``offset`` (``tail -c +N`` seeks in a regular file); "xq-missing" in
    place of the nonce when the file cannot be read."""
    mark = "xq-" + secrets.token_hex(16)
    p = _q(path)
    snippet = (
        f"if [ -r {p} ]; then printf '%s\\n' {mark}; "
        f"tail -c +{int(offset) + 1} -- {p} | head -c {int(size)}; "
        "else echo xq-missing; fi"
    )
    return snippet, mark


def parse_chunk(text: str, mark: str) -> bytes | None:
    """The chunk's bytes; None when the file could not be read."""
    _, sep, rest = text.partition(mark + "\n")
    if not sep:
        return None
    return rest.encode("utf-8", "surrogateescape")

