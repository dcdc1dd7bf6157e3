"""Launches to one host, sent in batches over its control session.

Each launch used to be a control request of its own: one request line, one
subshell forked by the control ``sh``, one reply (three SSH packets) per job.
Under load, when many jobs end in one poll cycle, the jobs started in their
place become ready at about the same time.  A :class:`LaunchBatcher` keeps at
most one launch request in flight per host; launches that become ready while
it is in flight go out together in the next one, when its reply is back.  At
low load nothing waits (a batch of one is the plain request); under load the
batches grow by themselves, and the controller, sshd and the host's shell
each do one round trip's work for many jobs.

Every launch snippet keeps its own meaning: the batch runs them one after
another in the same subshell, separated by ``echo 'xq-next <i>'``, and the
reply is cut at those lines, each part checked against its position.  The
batch's output is collected and printed in one write at its end
(:func:`collect_output`): each ``echo`` of its own became an SSH packet of
its own, which the controller decrypted and handled one by one (about one
packet per job, measured); one write makes it one packet per batch.  A
reply that does not cut cleanly fails every part with a retryable error,
so the caller looks for the job's own ``job.pid`` before starting it again
(as after a connection lost during a launch), never guessing which pid is
whose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ...errors import SshConnectionLost, SshError
from ...ssh import CommandResult

#: Most launches in one request (each snippet is ~0.6 KB; the line stays small).
MAX_BATCH = 32


@dataclass(eq=False)
class LaunchPart:
    """One launch waiting for its part of a batch's reply."""

    snippet: str
    future: asyncio.Future[CommandResult]
    sent: bool = False


@dataclass
class _Batch:
    parts: list[LaunchPart] = field(default_factory=list)


def join_parts(snippets: list[str]) -> str:
    """One snippet running ``snippets`` in order, a numbered line after each
    but the last."""
    out: list[str] = []
    for i, snippet in enumerate(snippets):
        if i:
            out.append(f"echo 'xq-next {i - 1}'")
        out.append(snippet)
    return "\n".join(out)


def collect_output(snippet: str) -> str:
    """``snippet`` with its stdout printed in one write when it ends.

    A command substitution collects it (one fork per batch); the jobs it
    starts redirect their own output, so nothing holds the capture open.
    If the batch dies midway nothing is printed, and the reply fails to
    cut, as a partial one did before: each caller then looks for its job's
    ``job.pid``.  The substitution drops trailing newlines; the ``printf``
    ends the output with one, and :func:`split_reply` cuts on lines.  What
    a part says on stderr is collected in place, within its own part.
    """
    return f"xq_o=$( {{\n{snippet}\n}} 2>&1 ); printf '%s\\n' \"$xq_o\""


def split_reply(text: str, n: int) -> list[str] | None:
    """Cut a batch's stdout into ``n`` parts; None unless every separator is
    where it should be."""
    parts: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith("xq-next ") and line.rstrip("\n") == f"xq-next {len(parts) - 1}":
            parts.append([])
            continue
        parts[-1].append(line)
    if len(parts) != n:
        return None
    return ["".join(p) for p in parts]


class LaunchBatcher:
    """At most one launch request in flight per host; the rest wait and go
    together (see the module doc).

    Args:
        run: sends one snippet over the host's control session.
        label: the host, for error messages.
        max_batch: most launches per request.
    """

    def __init__(
        self,
        run: Callable[[str], Awaitable[CommandResult]],
        label: str,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run = run
        self._label = label
        self._max = max(1, int(max_batch))
        self._queue: list[LaunchPart] = []
        self._inflight: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        busy = "1 in flight" if self._inflight is not None else "idle"
        return f"<LaunchBatcher {self._label} [{busy}, {len(self._queue)} waiting]>"

    @property
    def waiting(self) -> int:
        """Launches not sent yet."""
        return len(self._queue)

    def submit(self, snippet: str) -> LaunchPart:
        """Queue a launch; its ``future`` gets its part of the reply."""
        part = LaunchPart(snippet, asyncio.get_running_loop().create_future())
        self._queue.append(part)
        self._kick()
        return part

    def withdraw(self, part: LaunchPart) -> bool:
        """Take back a launch not sent yet (True: it will never run)."""
        if part.sent or part not in self._queue:
            return False
        self._queue.remove(part)
        part.future.cancel()
        return True

    def _kick(self) -> None:
        if self._inflight is not None or not self._queue:
            return
        parts, self._queue = self._queue[: self._max], self._queue[self._max :]
        for part in parts:
            part.sent = True
        self._inflight = asyncio.get_running_loop().create_task(self._send(parts))

    async def _send(self, parts: list[LaunchPart]) -> None:
        try:
            if len(parts) == 1:
                await self._one(parts[0])
            else:
                await self._many(parts)
        finally:
            self._inflight = None
            self._kick()

    async def _one(self, part: LaunchPart) -> None:
        try:
            reply = await self._run(part.snippet)
        except BaseException as exc:
            _fail(part, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not part.future.done():
            part.future.set_result(reply)

    async def _many(self, parts: list[LaunchPart]) -> None:
        try:
            reply = await self._run(collect_output(join_parts([p.snippet for p in parts])))
        except BaseException as exc:
            for part in parts:
                _fail(part, exc)
            if not isinstance(exc, Exception):
                raise
            return
        pieces = split_reply(reply.stdout, len(parts))
        for i, part in enumerate(parts):
            if part.future.done():
                continue
            if pieces is None:
                part.future.set_exception(
                    SshConnectionLost(
                        self._label,
                        "the reply to a batch of launches did not cut into its parts",
                    )
                )
            else:
                part.future.set_result(
                    CommandResult(reply.returncode, pieces[i], reply.stderr)
                )


def _fail(part: LaunchPart, exc: BaseException) -> None:
    """Give ``part`` its own copy of the batch's error."""
    if part.future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        part.future.cancel()
        return
    if isinstance(exc, SshError):
        copy: BaseException = type(exc).__new__(type(exc))
        copy.__dict__.update(exc.__dict__)
        copy.args = exc.args
        part.future.set_exception(copy)
    else:
        part.future.set_exception(exc)
    part.future.exception()  # retrieved: the caller may have gone
