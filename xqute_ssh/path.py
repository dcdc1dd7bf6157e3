"""SpecPath: one path seen from two places.

The controller reads and writes job files at ``path``; the job's host sees the
same file at ``mounted`` (a shared filesystem mounted elsewhere, or the same
path when nothing is remapped).  Either side may be a local path or a
cloudpathlib path (s3://, gs://, az://).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from cloudpathlib import CloudPath
    from typing_extensions import TypeIs

AnyPathLike: TypeAlias = "Path | CloudPath"
MountedPath: TypeAlias = "PurePosixPath | CloudPath"


def is_cloud(value: object) -> TypeIs[CloudPath]:
    """Whether ``value`` is a cloudpathlib path, without importing cloudpathlib.

    Importing it costs ~0.15 s where boto3 is installed (it loads its S3
    client), half of ``import xqute_ssh``, and most runs use no cloud path.
    A CloudPath object can only exist once its module is loaded, so a module
    not loaded yet means "not a cloud path".
    """
    module = sys.modules.get("cloudpathlib")
    return module is not None and isinstance(value, module.CloudPath)


def as_path(value: str | os.PathLike[str] | CloudPath) -> AnyPathLike:
    """A local ``Path`` or a ``CloudPath`` for a string such as ``s3://b/k``.

    A relative local path is made absolute here, on the controller: a host
    that is given it would resolve it against its own login directory (the
    remote home), which is not what the user meant.
    """
    if is_cloud(value):
        return value
    if isinstance(value, Path):
        return value.expanduser().absolute()
    text = str(value)
    if "://" not in text:  # no scheme: local, and no cloudpathlib needed
        return Path(text).expanduser().absolute()
    from cloudpathlib import AnyPath

    path = AnyPath(text)
    if isinstance(path, Path):
        return path.expanduser().absolute()
    return path


class SpecPath(os.PathLike[str]):
    """A path as the controller sees it, with ``.mounted`` as the host sees it.

    ``SpecPath("/data/wd", mounted="/mnt/wd") / "1"`` is ``/data/wd/1`` here and
    ``/mnt/wd/1`` on the host.  Attribute access not defined here (``exists``,
    ``read_text``, ...) goes to the controller-side path, so frameworks that
    treat job files as plain paths keep working.
    """

    __slots__ = ("_mounted", "path")

    def __init__(
        self,
        path: str | os.PathLike[str] | CloudPath,
        mounted: str | os.PathLike[str] | CloudPath | None = None,
    ) -> None:
        if isinstance(path, SpecPath):
            mounted = mounted if mounted is not None else path._mounted
            path = path.path
        self.path: AnyPathLike = as_path(path)
        self._mounted: MountedPath | None
        if mounted is None:
            self._mounted = None
        elif is_cloud(mounted):
            self._mounted = mounted
        else:
            text = str(mounted)
            self._mounted = (
                as_path(text)  # type: ignore[assignment]
                if "://" in text
                else PurePosixPath(text)
            )

    @property
    def mounted(self) -> MountedPath:
        """The same path as the job's host sees it."""
        if self._mounted is not None:
            return self._mounted
        if is_cloud(self.path):
            return self.path
        return PurePosixPath(str(self.path))

    @property
    def is_cloud(self) -> bool:
        return is_cloud(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> SpecPath:
        return SpecPath(self.path.parent, self.mounted.parent)

    def joinpath(self, *parts: str) -> SpecPath:
        # Built directly (no __init__ re-parsing) and without a mounted side
        # when nothing is remapped: job paths are made on the hot path.
        new = SpecPath.__new__(SpecPath)
        path: Any = self.path
        new.path = path.joinpath(*parts)
        new._mounted = self._mounted.joinpath(*parts) if self._mounted is not None else None
        return new

    def __truediv__(self, part: str) -> SpecPath:
        return self.joinpath(part)

    def __fspath__(self) -> str:
        if is_cloud(self.path):
            raise TypeError(f"{self.path} is a cloud path, not a local file path")
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        if self._mounted is None:
            return f"SpecPath({str(self.path)!r})"
        return f"SpecPath({str(self.path)!r}, mounted={str(self._mounted)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpecPath):
            return str(self.path) == str(other.path) and str(self.mounted) == str(
                other.mounted
            )
        if isinstance(other, str | os.PathLike):
            return str(self.path) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((str(self.path), str(self.mounted)))

    # Async file operations on the controller side, named as xqute's (and
    # panpath's) paths name them, so code written for xqute runs unchanged.
    # Each runs in a worker thread: the event loop never waits on a disk.
    async def a_exists(self) -> bool:
        return await asyncio.to_thread(self.path.exists)

    async def a_is_file(self) -> bool:
        return await asyncio.to_thread(self.path.is_file)

    async def a_is_dir(self) -> bool:
        return await asyncio.to_thread(self.path.is_dir)

    async def a_read_text(self, encoding: str = "utf-8") -> str:
        return await asyncio.to_thread(self.path.read_text, encoding)

    async def a_read_bytes(self) -> bytes:
        return await asyncio.to_thread(self.path.read_bytes)

    async def a_write_text(self, text: str, encoding: str = "utf-8") -> int:
        return await asyncio.to_thread(self.path.write_text, text, encoding)

    async def a_write_bytes(self, data: bytes) -> int:
        return await asyncio.to_thread(self.path.write_bytes, data)

    async def a_unlink(self, missing_ok: bool = False) -> None:
        await asyncio.to_thread(self.path.unlink, missing_ok=missing_ok)

    async def a_mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        await asyncio.to_thread(self.path.mkdir, parents=parents, exist_ok=exist_ok)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined here: delegate to the local side.
        if name.startswith("__") or name in ("path", "_mounted"):
            raise AttributeError(name)
        return getattr(self.path, name)
