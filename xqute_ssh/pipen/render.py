"""Our wrapper for a job made by pipen (an ``xqute.Job``), without xqute.

Pure functions: which envs the wrapper exports and the hook code that keeps
xqute's contract for plugins (``$cmd`` may be read and replaced in
``on_jobcmd_prep``; ``$rc`` is the command's exit code in ``on_jobcmd_end``).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..job import RESERVED_ENVS, normalize_envs

_q = shlex.quote


def job_envs(envs: Mapping[str, Any] | None) -> dict[str, str]:
    """The job's envs as strings (pipen passes ints), without the XQUTE_*
    names our wrapper sets itself (with the paths as the host sees them)."""
    try:
        return normalize_envs(
            {k: v for k, v in (envs or {}).items() if k not in RESERVED_ENVS}
        )
    except ConfigError as exc:
        raise ConfigError(f"{exc} (a pipen job's envs)") from None


def join_code(parts: Iterable[str | None]) -> str:
    return "\n".join(p.rstrip("\n") for p in parts if p and p.strip())


def prep_code(cmd: Sequence[str], prescript: str, plugin_code: str) -> str:
    """``xq_hook_prep``'s body: the prescript, then plugins' prep code with
    ``$cmd`` holding the command line; if they changed it, that runs."""
    if not plugin_code.strip():
        return join_code([prescript])
    line = shlex.join(cmd)
    return join_code(
        [
            prescript,
            f"cmd={_q(line)}",
            plugin_code,
            f'if [ "$cmd" != {_q(line)} ]; then XQ_CMD=(bash -c "$cmd" xqute-job); fi',
        ]
    )
