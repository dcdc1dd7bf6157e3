"""The control session: one persistent remote ``sh`` per connection.

Why: a fresh exec channel costs ~85 ms here, nearly all of it the remote
user's ``~/.bashrc``; a round trip over an open channel costs ~0.8 ms.  So we
start ``exec /bin/sh`` once through an exec channel (the login shell runs the
rc files once and its exported environment is inherited by everything this sh
starts, exactly what ``ssh host cmd`` would give) and then send it requests.

Protocol (all of it is written by this module; nothing the remote prints is
ever executed or evaluated here).  For request number ``SEQ`` we write::

    ( eval 'SNIPPET' ) </dev/null; printf '\\nXQ<nonce> %d %d\\n' SEQ "$?"; \
printf '\\nXQ<nonce> %d\\n' SEQ >&2

* ``SNIPPET`` is single-quoted as a whole, so it cannot break the framing;
  ``eval`` in a subshell means a syntax error or an ``exit 3`` in the snippet
  only ends the subshell (returncode 2 or 3), never the control shell, and
  ``cd`` or variables set by one request do not leak into the next.
* stdin of the snippet is /dev/null: nothing it runs can eat the protocol
  stream, and a snippet that reads stdin sees EOF at once.
* The reply is everything on stdout up to the stdout marker line and
  everything on stderr up to the stderr marker line.  A request sent with
  ``merge_stderr`` has its stderr folded into its stdout (``2>&1``) and no
  stderr marker: one packet back instead of two (job launches, one per job
  where hosts are many and batches small).  The marker is preceded
  by a newline that we print and strip, so output without a trailing newline
  comes back byte-exact.  ``<nonce>`` is 128 random bits per session, written
  literally into each request (never stored in a shell variable), so command
  output cannot forge a marker.
* Requests are pipelined: many can be outstanding; sh runs them in order and
  replies arrive in order, matched FIFO and checked against ``SEQ``.  A write
  is one synchronous ``chan.write`` (no await between choosing the sequence
  number and writing), so concurrent callers need no lock.
* A handshake request is sent first and its output discarded, which removes
  whatever the login shell's rc files printed (banners, ``echo`` in .bashrc).

Timeouts and cancellation: a cancelled caller's reply still arrives and is
dropped; the session stays usable.  A caller whose request exceeds its
timeout gets :class:`SshTimeoutError`, and the session is *retired* (marked
suspect: it takes no new requests, the pool starts another).  It is closed as
soon as its outstanding replies have arrived, or after ``grace`` seconds,
failing whatever is still outstanding with :class:`SshConnectionLost` -- we
cannot tell a slow command from a stuck shell, so we never wait unboundedly.

If the shell exits or the channel or connection closes, every outstanding and
future request fails with :class:`SshConnectionLost` (retryable).

Background processes started by a snippet must redirect stdout/stderr (as
job wrappers do): otherwise their late output lands in later replies, and
they keep the channel open after the shell exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh

from ..errors import RemoteCommandError, SshConnectionLost, SshError, SshTimeoutError

logger = logging.getLogger("xqute_ssh.ssh")

#: What the login shell runs: rc files once, then a plain POSIX sh on the channel.
START_COMMAND = "exec /bin/sh"

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


@dataclass(frozen=True)
class CommandResult:
    """What a remote command produced; output decoded with surrogateescape.

    ``stdout.encode("utf-8", "surrogateescape")`` gives back the exact bytes.
    """

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0

    def check(self, host: str, what: str = "remote command") -> CommandResult:
        """Return self, or raise RemoteCommandError naming ``host`` if non-zero."""
        if self.returncode != 0:
            tail = self.stderr.strip()[-500:]
            raise RemoteCommandError(
                host,
                f"{what} exited {self.returncode}" + (f": {tail}" if tail else ""),
                self.returncode,
                self.stderr,
            )
        return self


def _again(exc: SshError) -> SshError:
    """A fresh copy of ``exc`` (one instance raised many times grows its traceback)."""
    return type(exc)(exc.host, str(exc).removeprefix(f"{exc.host}: "))


@dataclass(eq=False)
class _Request:
    """One request in flight: filled in as its two marker lines arrive."""

    seq: int
    future: asyncio.Future[CommandResult]
    returncode: int | None = None
    stdout: bytes | None = None
    stderr: bytes | None = None


@dataclass(eq=False)
class _Stream:
    """Buffer and FIFO of requests still waiting for their marker on one stream."""

    name: str
    buf: bytearray = field(default_factory=bytearray)
    scan: int = 0  # where to resume searching for a marker
    waiting: deque[_Request] = field(default_factory=deque)


class ControlSession(asyncssh.SSHClientSession[bytes]):
    """A persistent remote ``sh`` speaking the marker protocol (see module doc).

    Create with :meth:`start`; send requests with :meth:`run`.  Callbacks, all
    plain functions so the pool can keep its books synchronously: ``on_open``
    when the server accepted the channel; ``on_retired`` once, when the session
    stops taking requests (retired after a timeout, or failed: shell exited,
    channel lost); ``on_closed`` once, when the channel is gone (always after
    ``on_open``).
    """

    def __init__(
        self,
        label: str,
        *,
        grace: float,
        on_closed: Callable[[ControlSession], None] | None = None,
        on_retired: Callable[[ControlSession], None] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self._on_open = on_open
        self._grace = grace
        self._on_closed = on_closed
        self._on_retired = on_retired
        self._tag = "XQ" + secrets.token_hex(16)
        self._marker = b"\n" + self._tag.encode("ascii") + b" "
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._out = _Stream("stdout")
        self._err = _Stream("stderr")
        self._seq = 0
        self._inflight = 0
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._error: SshError | None = None  # set once: every later request fails with it
        self._suspect = False
        self._grace_timer: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()
        self._started = False

    # ------------------------------------------------------------ lifecycle
    @classmethod
    async def start(
        cls,
        conn: asyncssh.SSHClientConnection,
        *,
        label: str,
        timeout: float,
        grace: float,
        on_closed: Callable[[ControlSession], None] | None = None,
        on_retired: Callable[[ControlSession], None] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> ControlSession:
        """Open the channel, start sh, and complete the handshake within ``timeout``.

        asyncssh errors from opening the channel (ChannelOpenError when the
        server's MaxSessions is reached, ConnectionLost) propagate unchanged
        so the pool can tell them apart.
        """
        self = cls(
            label,
            grace=grace,
            on_closed=on_closed,
            on_retired=on_retired,
            on_open=on_open,
        )
        try:
            async with asyncio.timeout(timeout):
                await conn.create_session(lambda: self, START_COMMAND, encoding=None)
                req = self._submit(":")
                hello = await req.future
        except TimeoutError:
            self.close(SshTimeoutError(label, "control session start timed out"))
            raise SshTimeoutError(
                label,
                f"control shell did not answer within {timeout:g}s "
                "(slow or interactive rc files on the remote?)",
            ) from None
        except BaseException:
            self.close()
            raise
        if hello.stdout or hello.stderr:
            logger.debug(
                "%s: discarded %d+%d bytes printed before the control shell started",
                label,
                len(hello.stdout),
                len(hello.stderr),
            )
        self._started = True
        logger.debug("%s: control session ready", label)
        return self

    def close(self, exc: SshError | None = None) -> None:
        """Fail what is outstanding with ``exc``; close the channel (idempotent)."""
        self._fail(exc or SshConnectionLost(self.label, "control session closed"))
        if self._chan is not None:
            self._chan.close()
        else:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until the channel is gone (bound it with a timeout)."""
        await self._closed.wait()

    @property
    def usable(self) -> bool:
        """True while new requests are accepted (not failed, closing or retired)."""
        return self._error is None and not self._suspect

    @property
    def suspect(self) -> bool:
        """True once retired after a timeout."""
        return self._suspect

    @property
    def is_closed(self) -> bool:
        """True once the channel is gone."""
        return self._closed.is_set()

    @property
    def outstanding(self) -> int:
        """Requests written whose reply has not fully arrived."""
        return self._inflight

    def __repr__(self) -> str:
        state = "failed" if self._error else "suspect" if self._suspect else "ok"
        return f"<ControlSession {self.label} {state} outstanding={self._inflight}>"

    # ------------------------------------------------------------ requests
    async def run(
        self, snippet: str, timeout: float, *, merge_stderr: bool = False
    ) -> CommandResult:
        """Run ``snippet`` (POSIX shell code) and return its result.

        The write happens before the first await, so a caller that checked
        :attr:`usable` knows the request was sent if this raises later.
        With ``merge_stderr`` the snippet's stderr comes back in ``stdout``
        (in order with it) and ``stderr`` is empty.
        Raises SshTimeoutError after ``timeout`` seconds (and retires the
        session), SshConnectionLost if the session dies first.
        """
        req = self._submit(snippet, merge_stderr=merge_stderr)
        try:
            async with asyncio.timeout(timeout):
                return await req.future
        except TimeoutError:
            self._retire(f"a request exceeded its {timeout:g}s timeout")
            raise SshTimeoutError(
                self.label, f"remote command did not finish within {timeout:g}s"
            ) from None

    def _submit(self, snippet: str, *, merge_stderr: bool = False) -> _Request:
        """Frame and write one request; synchronous so FIFO order is the write order."""
        if "\0" in snippet:
            raise ValueError("a shell snippet cannot contain NUL characters")
        if self._error is not None:
            raise _again(self._error)
        if self._suspect or self._chan is None:
            raise SshConnectionLost(self.label, "control session is retired")
        seq = self._seq
        self._seq += 1
        req = _Request(seq, asyncio.get_running_loop().create_future())
        tag = self._tag
        if merge_stderr:
            frame = (
                f"( eval {shlex.quote(snippet)} ) </dev/null 2>&1; "
                f"printf '\\n{tag} %d %d\\n' {seq} \"$?\"\n"
            )
            req.stderr = b""  # nothing comes on stderr for this one
        else:
            frame = (
                f"( eval {shlex.quote(snippet)} ) </dev/null; "
                f"printf '\\n{tag} %d %d\\n' {seq} \"$?\"; "
                f"printf '\\n{tag} %d\\n' {seq} >&2\n"
            )
            self._err.waiting.append(req)
        self._out.waiting.append(req)
        self._inflight += 1
        # Requests made in the same loop iteration go out in one channel
        # write: one SSH packet (one encryption, one send) for many launches.
        self._wbuf.append(frame.encode(_ENCODING, _ERRORS))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return req

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self._wbuf = b"".join(self._wbuf), []
        if data and self._chan is not None and self._error is None:
            self._chan.write(data)

    def _retire(self, why: str) -> None:
        """Stop accepting requests; close once drained or after the grace period."""
        if self._suspect or self._error is not None:
            return
        self._suspect = True
        logger.warning("%s: retiring control session: %s", self.label, why)
        self._notify_retired()
        if self._inflight == 0:
            self.close()
        else:
            self._grace_timer = asyncio.get_running_loop().call_later(
                self._grace, self._grace_expired
            )

    def _notify_retired(self) -> None:
        if self._on_retired is not None:
            callback, self._on_retired = self._on_retired, None
            callback(self)

    def _grace_expired(self) -> None:
        self.close(
            SshConnectionLost(
                self.label,
                f"control session gave no reply within {self._grace:g}s after a timeout; closed it",
            )
        )

    def _fail(self, exc: SshError) -> None:
        """Fail every outstanding request with ``exc``; refuse new ones from now on."""
        if self._error is None:
            self._error = exc
            self._notify_retired()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        pending = {id(r): r for r in (*self._out.waiting, *self._err.waiting)}
        self._out.waiting.clear()
        self._err.waiting.clear()
        self._inflight = 0
        for req in pending.values():
            if not req.future.done():
                req.future.set_exception(_again(self._error))
                req.future.exception()  # mark retrieved: nobody may be awaiting it

    # ------------------------------------------------------------ asyncssh callbacks
    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan
        if self._on_open is not None:
            self._on_open()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._err.buf += data
            self._parse(self._err)
        else:
            self._out.buf += data
            self._parse(self._out)

    def eof_received(self) -> bool:
        self._fail(SshConnectionLost(self.label, self._death_message("control shell exited")))
        return False

    def exit_status_received(self, status: int) -> None:
        # The shell itself ended; a background child may keep the channel open.
        self._fail(
            SshConnectionLost(
                self.label,
                self._death_message(f"control shell exited with status {status}"),
            )
        )

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._fail(
            SshConnectionLost(
                self.label, self._death_message(f"control shell killed by SIG{signal}")
            )
        )
        if self._chan is not None:
            self._chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = getattr(exc, "reason", None) or (str(exc) if exc else "channel closed")
        self._fail(
            SshConnectionLost(self.label, self._death_message(f"control session lost: {reason}"))
        )
        self._closed.set()
        if self._on_closed is not None:
            callback, self._on_closed = self._on_closed, None
            callback(self)

    def _death_message(self, what: str) -> str:
        """Add what the shell said on stderr if it died while starting."""
        if self._started:
            return what
        said = bytes(self._err.buf).decode(_ENCODING, "replace").strip()[-300:]
        return f"{what} before the handshake" + (f": {said}" if said else "")

    # ------------------------------------------------------------ parsing
    def _parse(self, st: _Stream) -> None:
        """Cut every complete reply off the front of ``st.buf``."""
        marker = self._marker
        buf = st.buf
        while True:
            i = buf.find(marker, st.scan)
            if i < 0:
                st.scan = max(0, len(buf) - len(marker) + 1)
                return
            eol = buf.find(b"\n", i + len(marker))
            if eol < 0:
                st.scan = i
                return
            fields = bytes(buf[i + len(marker) : eol]).split()
            payload = bytes(buf[:i])
            del buf[: eol + 1]
            st.scan = 0
            if not self._accept(st, payload, fields):
                return

    def _accept(self, st: _Stream, payload: bytes, fields: list[bytes]) -> bool:
        """Attach ``payload`` to the next request on ``st``; False on desync."""
        want = 2 if st is self._out else 1
        req = st.waiting[0] if st.waiting else None
        if (
            req is None
            or len(fields) != want
            or not all(f.isdigit() for f in fields)
            or int(fields[0]) != req.seq
        ):
            self.close(
                SshConnectionLost(
                    self.label,
                    f"control protocol out of sync on {st.name}; session closed",
                )
            )
            return False
        st.waiting.popleft()
        if st is self._out:
            req.stdout = payload
            req.returncode = int(fields[1])
        else:
            req.stderr = payload
        if req.stdout is not None and req.stderr is not None:
            self._inflight -= 1
            if not req.future.done():  # else: the caller gave up; drop the reply
                req.future.set_result(
                    CommandResult(
                        req.returncode or 0,
                        req.stdout.decode(_ENCODING, _ERRORS),
                        req.stderr.decode(_ENCODING, _ERRORS),
                    )
                )
            if self._suspect and self._inflight == 0:
                self.close()
        return True


# ====================================================================== one-shot exec
class _ExecSession(asyncssh.SSHClientSession[bytes]):
    """Collects one exec channel's output and exit status (the slow path)."""

    def __init__(
        self, on_open: Callable[[], None] | None, on_close: Callable[[], None] | None
    ) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.status: int | None = None
        self.signal: str | None = None
        self.lost: Exception | None = None
        self.done = asyncio.Event()  # an Event: a cancelled waiter cannot spoil it
        self._on_open = on_open
        self._on_close = on_close

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        if self._on_open is not None:
            self._on_open()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data
        else:
            self.stdout += data

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.done.set()
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()

    @property
    def returncode(self) -> int:
        """Exit status; 128+N for a signal, like a shell reports it."""
        if self.status is not None:
            return self.status
        if self.signal is not None:
            with contextlib.suppress(KeyError):
                return 128 + int(signal.Signals["SIG" + self.signal])
        return 255


async def exec_command(
    conn: asyncssh.SSHClientConnection,
    command: str,
    *,
    label: str,
    timeout: float,
    on_open: Callable[[], None] | None = None,
    on_close: Callable[[], None] | None = None,
) -> CommandResult:
    """Run ``command`` in a fresh exec channel with stdin at EOF (``ssh host cmd``).

    ``on_open``/``on_close`` fire when the server accepts and when the channel
    is gone, always paired, so the pool can count accepted channels.  Opening
    errors (asyncssh.ChannelOpenError, e.g. MaxSessions) propagate unchanged.
    """
    session = _ExecSession(on_open, on_close)
    chan, _ = await conn.create_session(lambda: session, command, encoding=None)
    try:
        chan.write_eof()
        async with asyncio.timeout(timeout):
            await session.done.wait()
    except TimeoutError:
        raise SshTimeoutError(label, f"remote command did not finish within {timeout:g}s") from None
    finally:
        if not session.done.is_set():
            with contextlib.suppress(Exception):
                chan.send_signal("TERM")  # else sshd keeps the session until it ends
        chan.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await session.done.wait()
    if session.status is None and session.signal is None:
        reason = getattr(session.lost, "reason", None) or session.lost or "closed"
        raise SshConnectionLost(label, f"connection lost while running a command: {reason}")
    return CommandResult(
        session.returncode,
        bytes(session.stdout).decode(_ENCODING, _ERRORS),
        bytes(session.stderr).decode(_ENCODING, _ERRORS),
    )
