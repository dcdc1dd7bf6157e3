"""Moving a job's data files where the job runs, and its results back.

Like GNU parallel's ``--transfer`` and ``--return``: ``stage_in`` files or
folders go into the job's directory (or a given path) before it starts;
``stage_out`` paths come back after it succeeded.  The job's directory is its
metadir when the host sees the workdir (this machine, a shared filesystem),
and its remote job directory otherwise; jobs that stage run in it.

Paths are checked at feed time, so a missing input is an error before
anything runs.  A failed transfer fails the job with the reason in
job.stderr and never touches what is already local.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConfigError

StageSpec = Sequence[str | os.PathLike[str]] | Mapping[str | os.PathLike[str], str]


@dataclass(frozen=True)
class StageIn:
    """A local file or folder and where it goes (relative: in the job dir)."""

    source: Path
    dest: str


@dataclass(frozen=True)
class StageOut:
    """A path on the host (relative: in the job dir) and its local target."""

    source: str
    dest: Path | None  # None: the same relative path under the job's metadir


def _pairs(spec: StageSpec | None) -> list[tuple[Any, Any]]:
    """``[a, b]`` -> ``[(a, None), (b, None)]``; ``{a: x}`` -> ``[(a, x)]``."""
    if not spec:
        return []
    if isinstance(spec, Mapping):
        return list(spec.items())
    return [(item, None) for item in spec]


def parse_stage_in(spec: StageSpec | None) -> list[StageIn]:
    """Check every source exists (ConfigError naming it) and resolve it."""
    out = []
    for source, dest in _pairs(spec):
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"stage_in: {str(source)!r} does not exist")
        if dest is not None and (not isinstance(dest, str) or not dest.strip()):
            raise ConfigError(f"stage_in: the destination of {str(source)!r} is empty")
        out.append(StageIn(path, dest if dest is not None else path.name))
    return out


def parse_stage_out(spec: StageSpec | None) -> list[StageOut]:
    out = []
    for source, dest in _pairs(spec):
        text = str(source)
        if not text.strip():
            raise ConfigError("stage_out: an empty path")
        out.append(
            StageOut(text, Path(dest).expanduser() if dest is not None else None)
        )
    return out


def local_target(item: StageOut, metadir: Path) -> Path:
    """Where a staged-out path lands locally."""
    if item.dest is not None:
        return item.dest
    src = PurePosixPath(item.source)
    return metadir / (src.name if src.is_absolute() else str(src))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def copy_in_local(items: Sequence[StageIn], job_dir: Path) -> None:
    """Stage in where the job directory is visible from here (sync)."""
    for item in items:
        dest = Path(item.dest)
        _copy(item.source, dest if dest.is_absolute() else job_dir / dest)


def copy_out_local(items: Sequence[StageOut], job_dir: Path) -> list[str]:
    """Stage out where the job directory is visible from here; the errors."""
    errors = []
    for item in items:
        src = Path(item.source)
        src = src if src.is_absolute() else job_dir / src
        dst = local_target(item, job_dir)
        if dst == src:
            if not src.exists():
                errors.append(f"stage_out: {item.source!r} was not produced")
            continue
        try:
            _copy(src, dst)
        except OSError as exc:
            errors.append(f"stage_out: {item.source!r}: {exc.strerror or exc}")
    return errors


def remote_path(job_dir: str, path: str) -> str:
    p = PurePosixPath(path)
    return str(p if p.is_absolute() else PurePosixPath(job_dir) / p)
