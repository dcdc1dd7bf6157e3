"""``xqute-ssh run --slurm LOGIN``: the slurm scheduler's options from flags.

Kept apart from args.py so the Slurm flags are one small hunk there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Jobs in Slurm at once when -j is not given: the cluster queues them, so
#: this bounds only what the controller tracks, not what runs.
DEFAULT_SLURM_FORKS = 100


def slurm_options(
    login: str,
    sbatch: Sequence[str],
    servers: Sequence[str],
    servers_file: str | None,
    jobs: int | None,
) -> tuple[str, dict[str, Any], int, str | None]:
    """Scheduler name, options, forks and flag for ``--slurm``."""
    from .args import UsageError

    if servers or servers_file:
        raise UsageError(
            "--slurm sends every job to the cluster: give no -S/--server or --servers-file with it"
        )
    opts: dict[str, Any] = {"login": login}
    for item in sbatch:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise UsageError(f"--sbatch {item!r}: expected KEY=VALUE, e.g. partition=short")
        opts[key] = value if sep else True
    return "slurm", opts, jobs or DEFAULT_SLURM_FORKS, "--slurm"
