"""End events: a wrapper tells the controller "job N ended" at once.

Without them the controller learns of an end from its next poll, on average
half a poll interval late.  The obvious push, a channel per job (the
wrapper connecting to a port the server forwards to us), costs ~0.6 ms of
controller CPU per job here (asyncssh's per-channel work), and a second
exec channel per host pays the login rc files again.  So each host gets one
*relay*, started once from the control shell (no new login):

* we ask the server to listen on its loopback, on a port of its choosing
  (remote TCP forwarding on a connection we already have);
* the relay, a small bash loop started detached, makes a private directory
  with a FIFO in it, connects to that port (one forwarded channel, for the
  whole run), sends a per-relay secret first, then copies each line the FIFO
  gives it;
* each job's wrapper, once it has written its final status, writes its job
  index into the FIFO (one short write: atomic, never blocks, no process).

An event is a hint, never a verdict: it makes the poller read that job's
files now instead of at the next poll.  A forged or stray line costs one
early read.  Anyone on the host could connect to the port while it is open,
so the first line must be the secret and the port is closed as soon as the
relay is on.  Where the server refuses forwarding (``AllowTcpForwarding
no``), bash lacks ``/dev/tcp``, or the relay dies (its connection closed),
jobs are seen by polling as before; a relay is started again at most every
:data:`RESTART_AFTER` seconds.

The relay ends by itself once its connection is gone (it finds its socket
readable, which only a close makes it: we never send it anything; it looks
after each write and every :data:`KEEPALIVE` seconds) or when told to
(TERM, at close);
it removes its directory as it goes, so a wrapper of a later job never opens
a FIFO nobody reads (it cannot: the directory is gone, and opening a path in
a missing directory fails instead of creating a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable

import asyncssh

from ...errors import SshConnectionLost, SshError, SshTimeoutError
from ...ssh import CommandResult

logger = logging.getLogger("xqute_ssh")

#: Seconds between the relay's checks that its connection is still there
#: when no job writes (it checks after each write too).
KEEPALIVE = 30
#: How long the relay may take to connect back once started.
START_TIMEOUT = 10.0
#: Least seconds between two relay starts on one host.
RESTART_AFTER = 5.0
#: Longest line we take from a relay (job indexes are short).
MAX_LINE = 64

#: The relay, run by bash; $1 the directory, $2 the port, the secret in the
#: environment (not in argv, which any user on the host can read).
_RELAY = f"""
trap '' PIPE HUP INT
d=$1
trap 'rm -rf -- "$d"' EXIT
trap 'exit 0' TERM
t=$XQ_RELAY_TOKEN; unset XQ_RELAY_TOKEN
exec 3<>"$d/fifo" 4<>"/dev/tcp/127.0.0.1/$2" || exit 1
printf '%s\\n' "$t" >&4 || exit 1
while :; do
    if IFS= read -r -t {KEEPALIVE} l <&3; then
        # the lines already waiting go in the same write (one SSH packet)
        while read -r -t 0 <&3 && IFS= read -r m <&3; do l=$l$'\\n'$m; done
        printf '%s\\n' "$l" >&4 || break
    elif [ $? -le 128 ]; then break
    fi
    # Nothing ever comes the other way: a readable socket is a closed one
    # (sshd gone, or our connection with it).
    read -r -t 0 <&4 && break
done
"""


def start_snippet(name: str, port: int, token: str) -> str:
    """POSIX sh: make the relay's directory and FIFO, start it detached.

    Prints ``xq-relay <pid> <fifo>`` or ``xq-relay-error <why>``.  ``name``
    is a random hex string (the directory's name), ``port`` an integer.
    """
    base = '"$HOME/.cache/xqute-ssh"'
    d = f'"$HOME/.cache/xqute-ssh/ev-{name}"'
    return (
        f'if [ -z "$HOME" ]; then echo "xq-relay-error no HOME"; '
        f"elif ! mkdir -p {base} 2>/dev/null || ! mkdir -m 700 {d} 2>/dev/null "
        f"|| ! mkfifo -m 600 {d}/fifo 2>/dev/null; then "
        f'echo "xq-relay-error cannot make a FIFO in $HOME/.cache/xqute-ssh"; '
        f"else unset SSH_CLIENT SSH2_CLIENT; XQ_RELAY_TOKEN={shlex.quote(token)} "
        f"setsid bash -c {shlex.quote(_RELAY)} xq-relay {d} {int(port)} "
        "</dev/null >/dev/null 2>&1 & "
        f'echo "xq-relay $! "{d}/fifo; fi'
    )


def stop_snippet(pid: int, fifo: str) -> str:
    """POSIX sh: TERM the relay ``pid`` if it is still the one reading ``fifo``."""
    d = fifo.rsplit("/", 1)[0]
    return (
        f"[ -p {shlex.quote(fifo)} ] && "
        f"grep -q xq-relay /proc/{int(pid)}/cmdline 2>/dev/null && "
        f"kill -s TERM {int(pid)} 2>/dev/null; rm -rf -- {shlex.quote(d)}; :"
    )


def parse_start(text: str) -> tuple[int, str] | str:
    """(pid, fifo) from the start snippet's reply, or why it failed."""
    for line in text.splitlines():
        if line.startswith("xq-relay "):
            _, pid, fifo = line.split(" ", 2)
            if pid.isdigit() and fifo.endswith("/fifo"):
                return int(pid), fifo
        if line.startswith("xq-relay-error "):
            return line.removeprefix("xq-relay-error ")
    return text.strip()[-200:] or "no reply"


class _RelayChannel(asyncssh.SSHTCPSession[bytes]):
    """One connection to the forwarded port: the relay's, once it proves it."""

    def __init__(self, owner: EndEvents, token: bytes) -> None:
        self._owner = owner
        self._token = token
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._buf = b""
        self._proven = False

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        buf = self._buf + data
        *lines, self._buf = buf.split(b"\n")
        if len(self._buf) > MAX_LINE:
            self._close()
            return
        for line in lines:
            if not self._proven:
                if not secrets.compare_digest(line, self._token):
                    logger.debug("%s: a connection to the event port without the secret; closed",
                                 self._owner.label)
                    self._close()
                    return
                self._proven = True
                self._owner._relay_on(self)
            elif line.isdigit():
                self._owner.on_end(int(line))
            # anything else (an empty line, say) is ignored

    def connection_lost(self, exc: Exception | None) -> None:
        if self._proven:
            self._owner._relay_off(self)

    def _close(self) -> None:
        if self._chan is not None:
            self._chan.close()


class EndEvents:
    """One host's relay: started once, restarted when it dies (rate-limited).

    ``fifo`` is what a launch passes to the wrapper (None: no events now).
    """

    def __init__(
        self,
        label: str,
        on_end: Callable[[int], None],
        run: Callable[[str], Awaitable[CommandResult]],
        listen: Callable[
            [Callable[[str, int], asyncssh.SSHTCPSession[bytes]]],
            Awaitable[asyncssh.SSHListener],
        ],
    ) -> None:
        self.label = label
        self.on_end = on_end
        self._run = run
        self._listen = listen
        self.fifo: str | None = None
        self._pid: int | None = None
        self._channel: _RelayChannel | None = None
        self._relay_up: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_start = float("-inf")
        self._unsupported = False
        self._closed = False

    def __repr__(self) -> str:
        state = "on" if self.fifo else "unsupported" if self._unsupported else "off"
        return f"<EndEvents {self.label} {state}>"

    def fifo_for_launch(self) -> str | None:
        """The FIFO a job launched now reports to; starts a relay if none runs."""
        if self.fifo is None:
            self.kick()
        return self.fifo

    def kick(self) -> None:
        """Start a relay in the background unless one runs, starts, or may not."""
        if (
            self.fifo is not None
            or self._unsupported
            or self._closed
            or (self._task is not None and not self._task.done())
            or time.monotonic() - self._last_start < RESTART_AFTER
        ):
            return
        self._last_start = time.monotonic()
        self._task = asyncio.ensure_future(self._start())

    async def started(self) -> None:
        """Wait (bounded by the start itself) for a relay start in progress."""
        if self._task is not None:
            with contextlib.suppress(Exception):  # logged by _start; never the caller's
                await asyncio.shield(self._task)

    async def _start(self) -> None:
        token = secrets.token_hex(16)
        name = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        self._relay_up = up = loop.create_future()
        listener: asyncssh.SSHListener | None = None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                try:
                    listener = await self._listen(
                        lambda _host, _port: _RelayChannel(self, token.encode())
                    )
                except (SshConnectionLost, SshTimeoutError):
                    raise
                except (SshError, asyncssh.Error, OSError) as exc:
                    self._unsupported = True
                    logger.info(
                        "%s: no end events (the server does not forward a port "
                        "for us: %s); job ends are seen by polling",
                        self.label, exc,
                    )
                    return
                reply = await self._run(start_snippet(name, listener.get_port(), token))
                started = parse_start(reply.stdout)
                if isinstance(started, str):
                    self._unsupported = True
                    logger.info("%s: no end events (%s); job ends are seen by polling",
                                self.label, started)
                    return
                await up
                self._pid, fifo = started
                if not self._closed:
                    self.fifo = fifo
                    logger.debug("%s: end events on (relay pid %d)", self.label, self._pid)
        except asyncio.CancelledError:
            raise
        except SshError as exc:  # the host went away meanwhile: try again later
            logger.debug("%s: end-event relay not started: %s", self.label, exc)
        except TimeoutError:
            self._unsupported = True  # no /dev/tcp in its bash, say: not again
            logger.info("%s: the end-event relay did not connect within %gs; job ends "
                        "are seen by polling", self.label, START_TIMEOUT)
        finally:
            self._relay_up = None
            if listener is not None:
                listener.close()  # the relay's channel stays; nobody else gets in

    def _relay_on(self, channel: _RelayChannel) -> None:
        if self._relay_up is not None and not self._relay_up.done() and self._channel is None:
            self._channel = channel
            self._relay_up.set_result(None)
        else:  # a second relay on one port: not ours to keep
            channel._close()

    def _relay_off(self, channel: _RelayChannel) -> None:
        if channel is self._channel:
            self._channel = None
            self.fifo = None
            self._pid = None

    async def close(self, remote: bool = True) -> None:
        """Stop the relay; with ``remote``, over the control session (it would
        end by itself once its connection is gone, within :data:`KEEPALIVE`)."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        pid, fifo = self._pid, self.fifo
        self.fifo = None
        if pid is not None and fifo is not None and remote:
            with contextlib.suppress(SshError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._run(stop_snippet(pid, fifo))
        if self._channel is not None:
            self._channel._close()
