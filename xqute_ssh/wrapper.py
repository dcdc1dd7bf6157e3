"""Render a job's wrapper script.

The script is a short generated header followed by the static body in
``wrapper.sh``.  The header holds only values, each quoted once with
``shlex.quote`` (bash reads single-quoted text literally, byte for byte), and
the hook code as bash functions.  No layered formatting, no double quoting.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

_q = shlex.quote


@lru_cache(maxsize=1)
def static_body() -> str:
    return resources.files(__package__).joinpath("wrapper.sh").read_text("utf-8")


@dataclass
class WrapperSpec:
    """Everything that varies from one job's wrapper to the next."""

    cmd: str | list[str]
    job_index: int
    metadir: str  # the workdir as the host sees it
    job_metadir: str  # the job's metadir as the host sees it
    envs: dict[str, str] = field(default_factory=dict)
    shebang: str = "#!/usr/bin/env bash"
    wrapper_init: str = ""
    hook_init: str = ""
    hook_prep: str = ""
    hook_end: str = ""
    timeout: float = 0
    kill_grace: float = 5
    cwd: str | None = None
    #: KILL what is left of the job's process group when it ends.
    kill_group_on_end: bool = False
    #: Seconds between touches of job.pid, the heartbeat (0: none); see fencing.py.
    heartbeat: float = 0


def _function(name: str, body: str) -> str:
    body = body.rstrip("\n")
    return f"{name}() {{\n{body}\n:\n}}\n" if body.strip() else f"{name}() {{ :; }}\n"


def _seconds(value: float) -> str:
    whole = int(value)
    return str(whole if whole == value else max(whole + 1, 1))


def render(spec: WrapperSpec) -> str:
    """The whole wrapper script for one job."""
    if isinstance(spec.cmd, str):
        argv = ["bash", "-c", spec.cmd, "xqute-job"]
    else:
        argv = spec.cmd
    lines = [spec.shebang.rstrip("\n")]
    if spec.wrapper_init.strip():
        lines.append(spec.wrapper_init.rstrip("\n"))
    lines.append("# ---- values (generated; each quoted once) ----")
    lines.append(f"XQUTE_JOB_INDEX={int(spec.job_index)}")
    lines.append(f"XQUTE_METADIR={_q(spec.metadir)}")
    lines.append(f"XQUTE_JOB_METADIR={_q(spec.job_metadir)}")
    lines.append("export XQUTE_JOB_INDEX XQUTE_METADIR XQUTE_JOB_METADIR")
    for name, value in spec.envs.items():
        # names were checked to be identifiers when the job was created
        lines.append(f"export {name}={_q(value)}")
    lines.append("XQ_CMD=(" + " ".join(_q(a) for a in argv) + ")")
    lines.append(f"XQ_TIMEOUT={_seconds(spec.timeout) if spec.timeout > 0 else 0}")
    lines.append(f"XQ_KILL_GRACE={_seconds(spec.kill_grace)}")
    lines.append(f"XQ_CWD={_q(spec.cwd) if spec.cwd else ''}")
    lines.append(f"XQ_KILL_ON_END={1 if spec.kill_group_on_end else ''}")
    lines.append(f"XQ_HEARTBEAT={_seconds(spec.heartbeat) if spec.heartbeat > 0 else 0}")
    lines.append("# ---- hooks and prescript / postscript ----")
    lines.append(_function("xq_hook_init", spec.hook_init))
    lines.append(_function("xq_hook_prep", spec.hook_prep))
    lines.append(_function("xq_hook_end", spec.hook_end))
    return "\n".join(lines) + "\n" + static_body()
