"""Small file operations that never block the event loop.

Every function runs the real work in a worker thread and accepts local paths
and cloudpathlib paths alike.  Status reads for many jobs are batched into one
thread hop (:func:`read_many`), since polling is the hot path.

Small operations on local files issued in the same event-loop iteration
share one worker-thread hop (:func:`small`), run in the order they were
issued: under load, when a batch of launches comes back or many jobs end at
once, a hop per file costed more (waking a thread, handing the GIL back and
forth) than the writes themselves.  Nothing waits for a batch to fill: the
hop leaves at the end of the iteration that asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from .path import AnyPathLike, SpecPath, is_cloud

if TYPE_CHECKING:
    from cloudpathlib import CloudPath

PathArg: TypeAlias = "AnyPathLike | SpecPath"


to_thread = asyncio.to_thread

_T = TypeVar("_T")


class _Hop:
    """The small operations one loop iteration asked for, and their futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self.scheduled = False

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.items.append((fn, args, future))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._go)
        return future

    def _go(self) -> None:
        items, self.items = self.items, []
        self.scheduled = False
        done = self.loop.run_in_executor(None, _run_items, [(f, a) for f, a, _ in items])
        done.add_done_callback(lambda d: _settle([fut for _, _, fut in items], d))


def _run_items(
    items: list[tuple[Callable[..., Any], tuple[Any, ...]]],
) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    for fn, args in items:
        try:
            out.append((True, fn(*args)))
        except Exception as exc:  # each caller gets its own error
            out.append((False, exc))
    return out


def _settle(futures: list[asyncio.Future[Any]], done: asyncio.Future[Any]) -> None:
    if done.cancelled() or done.exception() is not None:
        exc = asyncio.CancelledError() if done.cancelled() else done.exception()
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)  # type: ignore[arg-type]
        return
    for fut, (ok, value) in zip(futures, done.result(), strict=True):
        if fut.done():  # its caller was cancelled; the operation ran anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


_hops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hop] = weakref.WeakKeyDictionary()


async def small(local: bool, fn: Callable[..., _T], *args: Any) -> _T:
    """Run a small blocking file operation off the loop; ``local``: its files
    are on a local filesystem, so it may share a hop with the other small
    operations of this loop iteration (see the module doc).  Cloud paths get
    a thread of their own: a slow request must not hold the others up."""
    result: _T = await small_soon(local, fn, *args)
    return result


def small_soon(local: bool, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """:func:`small` without waiting: the operation leaves with this loop
    iteration's hop (or its own thread); the future gets its result.  Many
    issued before the caller yields (a script feeding jobs in a loop) share
    one hop."""
    if not local:
        return asyncio.ensure_future(asyncio.to_thread(fn, *args))
    loop = asyncio.get_running_loop()
    hop = _hops.get(loop)
    if hop is None:
        hop = _hops[loop] = _Hop(loop)
    return hop.submit(fn, args)


def _p(path: PathArg) -> AnyPathLike:
    return path.path if isinstance(path, SpecPath) else path


def read_text_sync(path: PathArg) -> str | None:
    """The file's text, or None when it does not exist."""
    target = _p(path)
    try:
        if is_cloud(target):
            return _read_cloud(target)
        return target.read_text(encoding="utf-8", errors="surrogateescape")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        # NotADirectory: a file sits where the job's directory should be
        return None


def _read_cloud(path: CloudPath) -> str:
    """Always the object's current content.

    cloudpathlib's local cache trusts modification times, which object stores
    keep to the second: a file rewritten within the same second (SUBMITTED
    then FINISHED) could be served stale.  Status files are tiny: download.
    """
    from cloudpathlib.exceptions import CloudPathNotExistsError

    with tempfile.TemporaryDirectory(prefix="xqute-ssh-") as tmp:
        local = Path(tmp) / "f"
        try:
            path.download_to(local)
        except CloudPathNotExistsError:
            raise FileNotFoundError(str(path)) from None
        return local.read_text(encoding="utf-8", errors="surrogateescape")


def write_text_sync(path: PathArg, text: str, mode: int = 0o644) -> None:
    """Write a whole small file in place: the data first, then the size.

    In place rather than tmp + rename: a new inode per write costs far more
    than the write on many filesystems.  Not truncated first: a controller
    killed between the truncation and the write left an empty job.status,
    and a restart then took a job that had ended for one never started (it
    ran twice).  Now a kill leaves the old content or the new one (while a
    shorter text replaces a longer one, the old tail stays until the final
    truncate; readers of these files treat what they cannot parse as "no
    news yet", as they do an empty read).
    """
    target = _p(path)
    if is_cloud(target):
        target.write_text(text)
        return
    data = text.encode("utf-8", "surrogateescape")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, mode)
    except FileNotFoundError:  # a job's metadir is made lazily
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def append_text_sync(path: PathArg, text: str) -> None:
    target = _p(path)
    if is_cloud(target):
        target.write_text((read_text_sync(target) or "") + text)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(text)


def unlink_sync(path: PathArg) -> None:
    with contextlib.suppress(FileNotFoundError):
        _p(path).unlink()


def write_bytes_sync(path: PathArg, data: bytes) -> None:
    target = _p(path)
    if is_cloud(target):
        target.write_bytes(data)
        return
    with open(target, "wb") as fh:
        fh.write(data)


def upload_sync(local: Path, dest: PathArg) -> None:
    """Copy a local file to ``dest`` (local or cloud), streamed, not in memory."""
    target = _p(dest)
    if is_cloud(target):
        target.upload_from(local, force_overwrite_to_cloud=True)
    else:
        shutil.copyfile(local, target)


def move_sync(src: PathArg, dst: PathArg) -> None:
    """Move a file if it exists (a missing source is not an error)."""
    s, d = _p(src), _p(dst)
    if is_cloud(s) or is_cloud(d):
        if s.exists():
            s.rename(d)  # type: ignore[arg-type]
        return
    with contextlib.suppress(FileNotFoundError):
        os.replace(s, d)


def rmtree_sync(path: PathArg) -> None:
    target = _p(path)
    if is_cloud(target):
        if target.exists():
            target.rmtree()
        return
    shutil.rmtree(target, ignore_errors=True)


def mkdir_sync(path: PathArg) -> None:
    _p(path).mkdir(parents=True, exist_ok=True)


def make_dir_sync(path: PathArg) -> bool:
    """Make the directory (and its parents); True if this call created it.

    A job directory this process just created holds nothing of an earlier
    attempt, so its first submission need not look for one (the common
    case: a new run).  Cloud paths have no such answer: False.
    """
    target = _p(path)
    if not isinstance(target, Path):
        target.mkdir(parents=True, exist_ok=True)
        return False
    for _ in range(2):
        try:
            os.mkdir(target)
            return True
        except FileExistsError:
            if target.is_dir():
                return False
            raise
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(target)  # the parents vanished twice: let the error speak
    return True


async def read_text(path: PathArg) -> str | None:
    return await small(is_local(path), read_text_sync, path)


async def write_text(path: PathArg, text: str, mode: int = 0o644) -> None:
    await small(is_local(path), write_text_sync, path, text, mode)


async def append_text(path: PathArg, text: str) -> None:
    await small(is_local(path), append_text_sync, path, text)


async def unlink(path: PathArg) -> None:
    await small(is_local(path), unlink_sync, path)


async def mkdir(path: PathArg) -> None:
    await asyncio.to_thread(mkdir_sync, path)


async def make_dir(path: PathArg) -> bool:
    """See :func:`make_dir_sync`."""
    return await small(is_local(path), make_dir_sync, path)


async def exists(path: PathArg) -> bool:
    return await asyncio.to_thread(_p(path).exists)


def _read_many(paths: Sequence[PathArg]) -> list[str | None]:
    return [read_text_sync(p) for p in paths]


async def read_many(paths: Iterable[PathArg]) -> list[str | None]:
    """Read many small files in one worker-thread hop (None for missing ones)."""
    items = list(paths)
    if not items:
        return []
    return await small(all(is_local(p) for p in items), _read_many, items)


def _move_many(pairs: Sequence[tuple[PathArg, PathArg]]) -> None:
    for src, dst in pairs:
        move_sync(src, dst)


async def move_many(pairs: Sequence[tuple[PathArg, PathArg]]) -> None:
    """Move several files (missing ones skipped) in one worker-thread hop."""
    await asyncio.to_thread(_move_many, pairs)


def _unlink_many(paths: Sequence[PathArg]) -> None:
    for path in paths:
        unlink_sync(path)


async def unlink_many(paths: Sequence[PathArg]) -> None:
    """Remove several files (missing ones skipped) in one worker-thread hop."""
    await asyncio.to_thread(_unlink_many, paths)


def is_local(path: PathArg) -> bool:
    return isinstance(_p(path), Path)
