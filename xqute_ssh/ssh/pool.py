"""HostPool: connections, channel slots and control sessions for one host.

Two halves in two modules, kept apart so the rules can be tested without a network
(the httpcore pattern):

* :class:`PoolState` -- pure bookkeeping, no ``await`` anywhere.  It decides
  who gets which connection, whether to open another connection or start a
  control session, who is next in the queue, and which idle connections to
  close.  It returns *actions*; it never does I/O.
* :class:`HostPool` -- carries the actions out (connects, opens channels,
  closes things) and reports the outcome back to the state.

Rules:

* A connection carries at most ``max_sessions`` channels; its control session
  counts as one.  If the server refuses a channel (sshd's ``MaxSessions``
  below ours) that connection's capacity is lowered to what it holds.
* ``exec()`` and ``connection()`` hold one channel slot each; callers beyond
  ``max_connections * max_sessions`` wait FIFO, at most ``acquire_timeout``.
* ``run()`` goes over control sessions, one per connection, pipelined.  It
  picks the least-loaded one; only when every control session has
  ``pipeline_threshold`` requests in flight does the pool add capacity
  (a control session on a connection without one, else a new connection if
  ``max_connections`` allows) -- and meanwhile it pipelines anyway.
* At most one connection is being opened at a time (sshd's ``MaxStartups``
  drops excess unauthenticated connections), and at most one control session
  is being started at a time.
* A connection with nothing in use for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncssh

from ..errors import (
    ConfigError,
    SshConnectError,
    SshConnectionLost,
    SshError,
    SshPoolClosed,
    SshTimeoutError,
)
from .config import HostConfig
from .connect import (
    SshLink,
    is_connection_lost,
    is_session_refused,
    lost_error,
    open_link,
)
from .control import CommandResult, ControlSession, exec_command
from .pool_state import (
    PIPELINE_THRESHOLD,
    ConnSlot,
    Lease,
    OpenConnection,
    PoolState,
    PoolStats,
    Want,
)

logger = logging.getLogger("xqute_ssh.ssh")

_BACKOFF_BASE = 0.25
_BACKOFF_MAX = 8.0
_CLOSE_WAIT = 2.0  # bound on waiting for a channel/connection to finish closing


# ====================================================================== I/O
class HostPool:
    """Pooled SSH access to one host: ``run`` (fast), ``exec``, ``connection``.

    Entering the context does not connect; connections open on demand.  Every
    wait is bounded: ``acquire_timeout`` for a slot, ``command_timeout`` (or
    the call's ``timeout``) for a command, ``connect_timeout`` per connect.
    """

    def __init__(
        self,
        cfg: HostConfig,
        *,
        pipeline_threshold: int = PIPELINE_THRESHOLD,
        on_connect: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.cfg = cfg
        #: Told the outcome of every connect (None: it worked), so host
        #: health follows what the pool sees without a connect of its own.
        self.on_connect = on_connect
        self.label = cfg.label
        self._state = PoolState(
            cfg.max_sessions, cfg.max_connections, pipeline_threshold=pipeline_threshold
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> HostPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        s = self._state.stats()
        closed = " closed" if s.closed else ""
        return (
            f"<HostPool {self.label} conns={s.connections} "
            f"sessions={s.sessions}/{s.capacity} queued={s.queued}{closed}>"
        )

    def stats(self) -> PoolStats:
        """The numbers in the repr and a few more, for tests and monitoring."""
        return self._state.stats()

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------- public operations
    async def try_connect(self) -> None:
        """Open one new connection and close it: does the host take logins now?

        A health probe needs this rather than a round trip: a host whose sshd
        stopped listening keeps serving the connections it already has, so a
        round trip over one of them would call it back while every new
        connect is still refused.  Raises the connect's SshError.
        """
        link = await open_link(self.cfg)
        link.close()

    async def run(
        self, snippet: str, timeout: float | None = None, *, merge_stderr: bool = False
    ) -> CommandResult:
        """Run a POSIX shell snippet over a control session (one round trip).

        The snippet runs in a subshell of the persistent remote sh, with stdin
        from /dev/null and the login environment; it must not leave background
        processes writing to its stdout/stderr.  Quote values with shlex.quote.
        Raises SshTimeoutError past ``timeout`` (default ``command_timeout``),
        SshConnectionLost if the connection dies while it runs.
        ``merge_stderr``: its stderr comes back inside stdout (one packet
        fewer per request; see ssh/control.py).
        """
        limit = self.cfg.command_timeout if timeout is None else timeout
        last: SshError | None = None
        for _attempt in range(3):
            try:
                lease = await self._acquire(Want.CONTROL)
            except SshConnectionLost as exc:  # the control session never started
                last = exc
                continue
            try:
                session = self._state.control_session(lease)
                if session is None or not session.usable:
                    continue  # changed under us before anything was sent: retry
                return await session.run(snippet, limit, merge_stderr=merge_stderr)
            finally:
                self._release(lease)
        raise last or SshConnectionLost(self.label, "no usable control session")

    async def run_checked(self, snippet: str, timeout: float | None = None) -> CommandResult:
        """Like :meth:`run`, but raise RemoteCommandError on a non-zero exit."""
        result = await self.run(snippet, timeout)
        return result.check(self.label)

    async def exec(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run ``command`` in a fresh exec channel (``ssh host command``; slow).

        Costs a new channel and the remote rc files each time; use it where
        the control session does not fit.  stdin is /dev/null.
        """
        limit = self.cfg.command_timeout if timeout is None else timeout
        for _attempt in range(self.cfg.max_sessions + 1):
            lease = await self._acquire(Want.SESSION)
            refused = False
            try:
                return await self._exec_on(lease.slot, command, limit)
            except asyncssh.ChannelOpenError as exc:
                if not is_session_refused(exc):
                    raise lost_error(self.label, exc, "opening a channel") from exc
                refused = True
            finally:
                self._release(lease, refused=refused)
        raise SshConnectionLost(self.label, "the server keeps refusing new channels")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """Reserve one channel slot and yield the raw asyncssh connection.

        Open at most one channel on it at a time (SFTP, a streaming process).
        asyncssh errors meaning the connection died become SshConnectionLost.
        """
        lease = await self._acquire(Want.SESSION)
        self._state.channel_opened(lease.slot)  # most likely, soon: count it
        try:
            yield lease.slot.link.conn
        except Exception as exc:
            if not isinstance(exc, SshError) and (
                is_connection_lost(exc) or lease.slot.link.is_closed
            ):
                raise lost_error(self.label, exc, "using the connection") from exc
            raise
        finally:
            self._state.channel_closed(lease.slot)
            self._release(lease)

    async def listen_loopback(
        self, session_factory: Callable[[str, int], asyncssh.SSHTCPSession[bytes]]
    ) -> asyncssh.SSHListener:
        """Have the server listen on its 127.0.0.1, on a port it picks, and
        hand each connection made there to ``session_factory`` (remote TCP
        forwarding on a connection we have; no channel until someone connects).

        The listener lives as long as its connection; close it to stop
        listening (connections already made stay open).  Raises
        SshConnectionLost if the connection dies, SshError if the server
        refuses to forward (``AllowTcpForwarding no``, say).
        """
        lease = await self._acquire(Want.CONTROL)
        try:
            conn = lease.slot.link.conn
            try:
                listener = await conn.create_server(
                    session_factory, "127.0.0.1", 0, encoding=None
                )
            except asyncssh.ChannelListenError as exc:
                raise SshError(self.label, f"the server refused to listen: {exc}") from exc
            except Exception as exc:
                if is_connection_lost(exc) or lease.slot.link.is_closed:
                    raise lost_error(self.label, exc, "asking the server to listen") from exc
                raise
            if listener is None:  # older asyncssh says no this way
                raise SshError(self.label, "the server refused to listen")
            return listener
        finally:
            self._release(lease)

    async def close(self) -> None:
        """Close all sessions and connections (idempotent; shielded from cancel)."""
        if self._closed:
            return
        self._closed = True
        exc = SshPoolClosed(self.label, "the pool was closed")
        slots = self._state.close(exc)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._reaper is not None and self._reaper is not current:
            self._reaper.cancel()
        await asyncio.shield(self._close_slots(slots, exc))
        logger.debug("%s: pool closed", self.label)

    # ---------------------------------------------------------- acquiring
    async def _acquire(self, want: Want) -> Lease:
        if self._closed:
            raise SshPoolClosed(self.label, "the pool is closed")
        lease = self._state.try_grant(want)
        if lease is not None:
            return lease
        waiter = self._state.add_waiter(want, asyncio.get_running_loop().create_future())
        self._kick()
        try:
            async with asyncio.timeout(self.cfg.acquire_timeout):
                return await waiter.future
        except SshError:
            raise
        except TimeoutError:
            self._state.cancel_waiter(waiter)
            self._kick()
            s = self._state.stats()
            raise SshTimeoutError(
                self.label,
                f"no free SSH session within {self.cfg.acquire_timeout:g}s "
                f"(conns={s.connections} sessions={s.sessions}/{s.capacity} "
                f"queued={s.queued}); raise max_sessions, max_connections or "
                "acquire_timeout",
            ) from None
        except BaseException:
            self._state.cancel_waiter(waiter)
            self._kick()
            raise

    def _release(self, lease: Lease, *, refused: bool = False) -> None:
        self._state.release(lease)
        if refused:
            self._state.session_refused(lease.slot)
        self._kick()

    def _kick(self) -> None:
        """Let the state decide, then start the I/O it asked for."""
        for action in self._state.assign():
            if isinstance(action, OpenConnection):
                self._spawn(self._open(action.slot))
            else:
                self._spawn(self._start_control(action.slot))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------- connections
    async def _open(self, slot: ConnSlot) -> None:
        try:
            link = await self._connect_with_retries()
        except asyncio.CancelledError:
            self._state.connection_failed(slot, SshPoolClosed(self.label, "the pool was closed"))
            raise
        except (SshError, ConfigError) as exc:
            # Logged by whoever watches host health (once per host going down).
            logger.debug("%s", exc)
            self._connect_outcome(exc)
            self._state.connection_failed(slot, exc)
            self._kick()
            return
        except Exception as exc:  # a bug or an asyncssh surprise: fail loudly, not hang
            logger.exception("%s: unexpected error while connecting", self.label)
            err = SshConnectError(self.cfg.address, repr(exc))
            self._connect_outcome(err)
            self._state.connection_failed(slot, err)
            self._kick()
            return
        if self._closed or not slot.alive:
            link.close()
            return
        self._connect_outcome(None)
        self._state.connection_ready(slot, link)
        logger.debug("%s: connection #%d open", self.label, slot.id)
        self._spawn(self._watch(slot, link))
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        self._kick()

    def _connect_outcome(self, exc: BaseException | None) -> None:
        if self.on_connect is not None and not self._closed:
            self.on_connect(exc)

    async def _connect_with_retries(self) -> SshLink:
        """Connect; retry a handshake the server dropped, with backoff and jitter.

        Only that failure is retried here (sshd's ``MaxStartups`` does it to
        a burst of connections).  A refusal or a timeout is not: the host is
        down, and retrying would make one attempt cost several timeouts.
        """
        attempt = 0
        while True:
            try:
                return await open_link(self.cfg)
            except SshConnectError as exc:
                if not exc.dropped or attempt >= self.cfg.connect_retries:
                    raise
                delay = min(_BACKOFF_BASE * 2**attempt, _BACKOFF_MAX) * random.uniform(0.5, 1.5)
                attempt += 1
                logger.info(
                    "%s; retry %d/%d in %.2fs",
                    exc,
                    attempt,
                    self.cfg.connect_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _watch(self, slot: ConnSlot, link: SshLink) -> None:
        """Notice a lost connection; drop it so the next use reconnects."""
        await link.conn.wait_closed()
        if slot.alive:
            logger.warning("%s: connection #%d lost", self.label, slot.id)
            self._state.connection_lost(slot)
            self._kick()
        link.close()  # the tunnel, if any

    async def _reap(self) -> None:
        """Close connections idle for ``idle_timeout``."""
        idle = self.cfg.idle_timeout
        while not self._closed:
            expired = self._state.expired(idle)
            if expired:
                logger.debug("%s: closing %d idle connection(s)", self.label, len(expired))
                await asyncio.shield(
                    self._close_slots(
                        expired, SshConnectionLost(self.label, "idle connection closed")
                    )
                )
            delay = self._state.next_expiry(idle)
            await asyncio.sleep(idle if delay is None else max(delay, 0.01))

    async def _close_slots(self, slots: list[ConnSlot], exc: SshError) -> None:
        """Close sessions and connections; bounded, never raises."""
        for slot in slots:
            for session in [slot.session, *slot.retiring]:
                if session is not None:
                    session.close(exc)
            if slot.link is not None:
                slot.link.close()

        async def wait(slot: ConnSlot) -> None:
            if slot.link is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_WAIT):
                        await slot.link.wait_closed()

        await asyncio.gather(*(wait(s) for s in slots), return_exceptions=True)

    # ---------------------------------------------------------- control sessions
    async def _start_control(self, slot: ConnSlot) -> None:
        try:
            session = await ControlSession.start(
                slot.link.conn,
                label=self.label,
                timeout=self.cfg.command_timeout,
                grace=self.cfg.command_timeout,
                on_open=functools.partial(self._state.channel_opened, slot),
                on_closed=functools.partial(self._control_closed, slot),
                on_retired=functools.partial(self._control_retired, slot),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            refused = is_session_refused(exc)
            err: BaseException = exc
            if refused or is_connection_lost(exc) or isinstance(exc, asyncssh.ChannelOpenError):
                err = lost_error(self.label, exc, "starting the control session")
            elif not isinstance(exc, SshError):
                logger.exception("%s: unexpected error starting the control session", self.label)
                err = SshConnectionLost(self.label, f"control session failed to start: {exc!r}")
            if not refused:
                logger.warning("%s", err)
            self._state.control_failed(slot, err, refused=refused)
            self._kick()
            return
        if self._closed or not slot.alive or not session.usable:
            session.close()
            if slot.alive:
                self._state.control_failed(
                    slot, SshConnectionLost(self.label, "control session closed")
                )
                self._kick()
            return
        self._state.control_ready(slot, session)
        self._kick()

    def _control_closed(self, slot: ConnSlot, session: ControlSession) -> None:
        self._state.channel_closed(slot)  # on_closed follows on_open, only
        self._state.control_closed(slot, session)
        if not self._closed:
            self._kick()

    def _control_retired(self, slot: ConnSlot, session: ControlSession) -> None:
        self._state.control_retired(slot, session)
        if not self._closed:
            self._kick()

    # ---------------------------------------------------------- exec
    async def _exec_on(self, slot: ConnSlot, command: str, limit: float) -> CommandResult:
        try:
            return await exec_command(
                slot.link.conn,
                command,
                label=self.label,
                timeout=limit,
                on_open=functools.partial(self._state.channel_opened, slot),
                on_close=functools.partial(self._state.channel_closed, slot),
            )
        except asyncssh.ChannelOpenError as exc:
            if is_connection_lost(exc):
                raise lost_error(self.label, exc, "opening a channel") from exc
            raise  # exec() handles a refusal (MaxSessions)
        except SshError:
            raise
        except Exception as exc:
            if is_connection_lost(exc) or slot.link.is_closed:
                raise lost_error(self.label, exc, "running a command") from exc
            raise
