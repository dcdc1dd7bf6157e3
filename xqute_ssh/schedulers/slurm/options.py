"""Slurm options: from ``scheduler_opts`` (and per job) to ``#SBATCH`` lines.

Names follow xqute's SlurmScheduler, so its users need not relearn them:
any option the scheduler does not know itself is an ``sbatch`` option,
``_`` becomes ``-``, a one-letter key is a short option (``c=2`` ->
``#SBATCH -c 2``), a longer one a long option (``cpus_per_task=2`` ->
``#SBATCH --cpus-per-task=2``); ``True`` gives a bare flag.  ``sbatch``,
``squeue`` and ``scancel`` name the commands.  ``sbatch_extra`` adds
verbatim lines (``["--constraint=avx2"]``).  Per job, ``job.extra["sbatch"]``
(a mapping of the same form) is laid over the run's options.

Pure: no I/O.  Every value is checked to be one line, so nothing a user
writes can add a directive or a command to the script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import ConfigError

#: Options the scheduler sets itself: where the job's output goes, its name,
#: and what it needs to report an id.  A user value would break tracking.
RESERVED = frozenset(
    {"output", "o", "error", "e", "job-name", "J", "parsable", "array", "a",
     "wrap", "wait", "W", "open-mode", "export"}
)

_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _norm_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ConfigError(
            f"Slurm option name {key!r} is not an sbatch option name "
            "(letters, digits, '-' or '_', e.g. 'partition' or 'cpus_per_task')"
        )
    return key if len(key) == 1 else key.replace("_", "-")


def _one_line(where: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfigError(f"{where}: the value {value!r} must be on one line")
    return value


def normalize(options: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Check option names and values; keys in sbatch's own spelling."""
    out: dict[str, Any] = {}
    if options is None:
        return out
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: Slurm options must be a mapping, got {options!r}")
    for raw_key, value in options.items():
        key = _norm_key(raw_key)
        if key in RESERVED:
            raise ConfigError(
                f"{where}: {raw_key!r} is set by the slurm scheduler itself "
                "(job output goes to the job's directory; the job name tracks it)"
            )
        if value is None or value is False:
            out[key] = None  # lets a job drop a run-level option
            continue
        if value is not True:
            if isinstance(value, list | tuple | dict | set):
                raise ConfigError(f"{where}: {raw_key!r} must be a single value")
            value = _one_line(f"{where} {raw_key!r}", str(value))
        out[key] = value
    return out


def extra_lines(lines: Iterable[str] | str | None, where: str) -> list[str]:
    """``sbatch_extra``: option strings like ``--constraint=avx2``."""
    if lines is None:
        return []
    if isinstance(lines, str):
        lines = [lines]
    out = []
    for line in lines:
        if not isinstance(line, str):
            raise ConfigError(f"{where}: each entry must be a string, got {line!r}")
        line = _one_line(where, line.strip())
        if line.startswith("#SBATCH"):
            line = line[len("#SBATCH"):].strip()
        if not line.startswith("-"):
            raise ConfigError(
                f"{where}: {line!r} is not an sbatch option (it must start with "
                "'-', e.g. '--constraint=avx2')"
            )
        out.append(line)
    return out


def directives(options: Mapping[str, Any], extra: Iterable[str] = ()) -> list[str]:
    """``#SBATCH`` lines for checked options (None values left out)."""
    lines = []
    for key, value in options.items():
        if value is None:
            continue
        if len(key) == 1:
            lines.append(f"#SBATCH -{key}" + ("" if value is True else f" {value}"))
        else:
            lines.append(f"#SBATCH --{key}" + ("" if value is True else f"={value}"))
    lines.extend(f"#SBATCH {line}" for line in extra)
    return lines
