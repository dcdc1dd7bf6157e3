"""The control session: marker protocol (fake channel) and real-sshd behaviour."""

from __future__ import annotations

import asyncio
import re
import shlex

import asyncssh
import pytest

from xqute_ssh.errors import RemoteCommandError, SshConnectionLost, SshTimeoutError
from xqute_ssh.ssh import CommandResult, HostConfig, HostPool
from xqute_ssh.ssh.control import ControlSession


def host_config(host, **overrides) -> HostConfig:
    """A HostConfig for a harness host (its key and known_hosts: checking stays on)."""
    return HostConfig(**host.server_spec(), **overrides)


# ====================================================================== fake channel
class FakeChan:
    """Records what the session writes; lets a test play the remote sh."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.frames.append(data.decode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self.closed = True


def fake_session(grace: float = 5.0) -> tuple[ControlSession, FakeChan]:
    session = ControlSession("u@h:22", grace=grace)
    chan = FakeChan()
    session.connection_made(chan)  # type: ignore[arg-type]
    return session, chan


def tag_of(frame: str) -> str:
    m = re.search(r"printf '\\n(XQ[0-9a-f]{32}) %d %d\\n' (\d+)", frame)
    assert m, frame
    return m.group(1)


def reply(
    session: ControlSession,
    seq: int,
    out: bytes,
    err: bytes,
    rc: int = 0,
    chunk: int | None = None,
) -> None:
    """Feed what sh would print for request ``seq``, optionally in small chunks."""
    tag = session._tag.encode()
    stdout = out + b"\n" + tag + b" %d %d\n" % (seq, rc)
    stderr = err + b"\n" + tag + b" %d\n" % seq
    step = chunk or max(len(stdout), len(stderr))
    for i in range(0, max(len(stdout), len(stderr)), step):
        if stdout[i : i + step]:
            session.data_received(stdout[i : i + step], None)
        if stderr[i : i + step]:
            session.data_received(stderr[i : i + step], asyncssh.EXTENDED_DATA_STDERR)


async def test_frame_quotes_snippet_and_uses_devnull_subshell() -> None:
    session, chan = fake_session()
    req = session._submit("echo 'a b'; exit 3")
    await asyncio.sleep(0)  # requests of one loop iteration go out together
    frame = chan.frames[0]
    assert frame.startswith("( eval " + shlex.quote("echo 'a b'; exit 3") + " ) </dev/null;")
    assert frame.endswith(" >&2\n") and frame.count("\n") == 1
    assert tag_of(frame) == session._tag
    reply(session, req.seq, b"a b\n", b"", rc=3)
    assert req.future.result() == CommandResult(3, "a b\n", "")


async def test_nonce_is_random_per_session() -> None:
    a, _ = fake_session()
    b, _ = fake_session()
    assert a._tag != b._tag and len(a._tag) == 34


async def test_replies_matched_fifo_even_byte_by_byte() -> None:
    session, _ = fake_session()
    reqs = [session._submit(f"echo {i}") for i in range(5)]
    for i, req in enumerate(reqs):
        reply(session, req.seq, b"out%d" % i, b"err%d\n" % i, rc=i, chunk=1)
    assert [r.future.result() for r in reqs] == [
        CommandResult(i, f"out{i}", f"err{i}\n") for i in range(5)
    ]
    assert session.outstanding == 0


async def test_output_resembling_a_marker_is_output() -> None:
    session, _ = fake_session()
    req = session._submit("x")
    fake = b"\nXQ" + b"0" * 32 + b" 0 0\n" + session._tag.encode() + b"x 0 0\n"
    reply(session, req.seq, fake, b"")
    assert req.future.result().stdout.encode() == fake


async def test_junk_before_handshake_is_discarded() -> None:
    session, _ = fake_session()
    hello = session._submit(":")
    session.data_received(b"Welcome!\nconda: activated\n", None)
    session.data_received(b"bashrc warning\n", asyncssh.EXTENDED_DATA_STDERR)
    reply(session, hello.seq, b"", b"")
    assert hello.future.result().stdout == "Welcome!\nconda: activated\n"
    req = session._submit("echo ok")
    reply(session, req.seq, b"ok\n", b"")
    assert req.future.result() == CommandResult(0, "ok\n", "")


async def test_non_utf8_round_trips() -> None:
    session, _ = fake_session()
    req = session._submit("x")
    raw = bytes(range(256))
    reply(session, req.seq, raw, raw, chunk=7)
    res = req.future.result()
    assert res.stdout.encode("utf-8", "surrogateescape") == raw
    assert res.stderr.encode("utf-8", "surrogateescape") == raw


async def test_cancelled_caller_reply_is_dropped_session_stays_usable() -> None:
    session, _ = fake_session()
    task = asyncio.ensure_future(session.run("sleep 1", timeout=10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.outstanding == 1 and session.usable
    req = session._submit("echo next")
    reply(session, 0, b"late", b"")  # the cancelled one's reply arrives
    reply(session, req.seq, b"next\n", b"")
    assert req.future.result().stdout == "next\n"
    assert session.outstanding == 0


async def test_timeout_retires_then_closes_when_drained() -> None:
    suspects: list[ControlSession] = []
    session = ControlSession("u@h:22", grace=5, on_retired=suspects.append)
    chan = FakeChan()
    session.connection_made(chan)  # type: ignore[arg-type]
    other = session._submit("echo queued")
    with pytest.raises(SshTimeoutError, match=r"u@h:22.*within 0\.05s"):
        await session.run("sleep 9", timeout=0.05)
    assert suspects == [session] and not session.usable
    with pytest.raises(SshConnectionLost):
        session._submit("echo new")
    assert not chan.closed  # still waiting for the outstanding replies
    reply(session, other.seq, b"queued\n", b"")
    assert other.future.result().stdout == "queued\n"
    reply(session, other.seq + 1, b"", b"")
    assert chan.closed


async def test_timeout_then_silence_closes_after_grace() -> None:
    session, chan = fake_session(grace=0.05)
    other = session._submit("echo queued")
    with pytest.raises(SshTimeoutError):
        await session.run("sleep 9", timeout=0.05)
    await asyncio.sleep(0.1)
    assert chan.closed
    with pytest.raises(SshConnectionLost, match="no reply within"):
        other.future.result()


async def test_desync_closes_session() -> None:
    session, chan = fake_session()
    req = session._submit("x")
    tag = session._tag.encode()
    session.data_received(b"\n" + tag + b" 99 0\n", None)
    assert chan.closed
    with pytest.raises(SshConnectionLost, match="out of sync"):
        req.future.result()


async def test_channel_loss_fails_outstanding_and_future_requests() -> None:
    closed: list[ControlSession] = []
    session = ControlSession("u@h:22", grace=5, on_closed=closed.append)
    session.connection_made(FakeChan())  # type: ignore[arg-type]
    reqs = [session._submit("x") for _ in range(3)]
    session.connection_lost(asyncssh.ConnectionLost("reset"))
    for req in reqs:
        assert isinstance(req.future.exception(), SshConnectionLost)
    assert closed == [session] and session.is_closed
    with pytest.raises(SshConnectionLost):
        session._submit("x")


async def test_nul_in_snippet_rejected() -> None:
    session, _ = fake_session()
    with pytest.raises(ValueError):
        session._submit("echo \0")


def test_command_result_check() -> None:
    assert CommandResult(0, "", "").check("h").ok
    with pytest.raises(RemoteCommandError, match="h: remote command exited 3: bad") as e:
        CommandResult(3, "", "bad\n").check("h")
    assert e.value.returncode == 3 and e.value.stderr == "bad\n"


# ====================================================================== real sshd
async def test_run_exact_output(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        assert await pool.run("echo out; echo err >&2; exit 3") == CommandResult(
            3, "out\n", "err\n"
        )
        assert await pool.run("printf abc; printf def >&2") == CommandResult(0, "abc", "def")
        assert await pool.run("printf '\\n\\n'") == CommandResult(0, "\n\n", "")
        assert await pool.run("true") == CommandResult(0, "", "")


async def test_run_non_utf8_and_large_output(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        r = await pool.run("printf '\\377\\376caf\\303\\251\\200'")
        assert r.stdout.encode("utf-8", "surrogateescape") == b"\xff\xfecaf\xc3\xa9\x80"
        big = await pool.run("head -c 1048576 /dev/zero | tr '\\0' x; echo tail >&2")
        assert big.stdout == "x" * 1048576 and big.stderr == "tail\n"
        both = await pool.run("head -c 1048576 /dev/zero | tr '\\0' y >&2; printf end")
        assert both.stderr == "y" * 1048576 and both.stdout == "end"


async def test_run_fake_marker_and_odd_snippets(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        fake = "XQ" + "0" * 32 + " 0 0"
        r = await pool.run(f"printf '%s\\n' {shlex.quote(fake)}; printf 'no newline'")
        assert r.stdout == fake + "\nno newline"
        # exit, syntax errors, unbalanced braces only end the subshell
        assert (await pool.run("exit 7")).returncode == 7
        assert (await pool.run("echo 'unterminated")).returncode != 0
        assert (await pool.run("}")).returncode != 0
        # each request runs in its own subshell: cd and variables do not leak
        assert (await pool.run("cd /tmp; X=1; pwd")).stdout == "/tmp\n"
        assert (await pool.run("pwd")).stdout != "/tmp\n"
        assert (await pool.run("echo ${X:-unset}")).stdout == "unset\n"
        assert (await pool.run("echo ok")).stdout == "ok\n"
        assert pool.stats().control_sessions == 1  # same session all along


async def test_stdin_is_eof(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        r = await pool.run("cat; read x; echo rc=$?", timeout=10)
        assert r.stdout == "rc=1\n"
        assert (await pool.run("echo still")).stdout == "still\n"


async def test_environment_matches_exec(sshd_host) -> None:
    """Jobs started from the control sh see what `ssh host cmd` sees."""
    async with HostPool(host_config(sshd_host)) as pool:
        keys = ["PATH", "HOME", "USER", "LOGNAME", "SHELL"]
        show = "; ".join(f'printf "%s=%s\\n" {k} "${k}"' for k in keys)
        via_run = await pool.run(show)
        via_exec = await pool.exec(show)
        assert via_run.stdout == via_exec.stdout
        assert via_run.stdout.startswith("PATH=")


async def test_pipelined_requests_come_back_in_order(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        results = await asyncio.gather(
            *(pool.run(f"echo {i}; echo e{i} >&2; exit {i % 5}") for i in range(300))
        )
        assert results == [CommandResult(i % 5, f"{i}\n", f"e{i}\n") for i in range(300)]


async def test_merged_stderr_mixed_with_plain_requests_stays_in_sync(sshd_host) -> None:
    """Launch-style requests (stderr folded into stdout, no stderr marker)
    pipelined between plain ones: every reply is its own, in order."""
    async with HostPool(host_config(sshd_host)) as pool:
        reqs = []
        for i in range(200):
            snippet = f"echo {i}; echo e{i} >&2; exit {i % 3}"
            reqs.append(pool.run(snippet, merge_stderr=i % 2 == 0))
        results = await asyncio.gather(*reqs)
        for i, r in enumerate(results):
            if i % 2 == 0:
                assert r == CommandResult(i % 3, f"{i}\ne{i}\n", ""), (i, r)
            else:
                assert r == CommandResult(i % 3, f"{i}\n", f"e{i}\n"), (i, r)
        # after a merged request, a plain one's stderr is still its own
        assert await pool.run("echo x >&2") == CommandResult(0, "", "x\n")


async def test_cancelled_run_keeps_session(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        await pool.run("true")
        tasks = [asyncio.ensure_future(pool.run("sleep 0.1; echo x")) for _ in range(3)]
        await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert (await pool.run("echo after")).stdout == "after\n"
        s = pool.stats()
        assert (s.control_sessions, s.control_load, s.queued) == (1, 0, 0)


async def test_timeout_retires_session_and_pool_recovers(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        await pool.run("true")
        with pytest.raises(SshTimeoutError, match=r"within 0\.2s"):
            await pool.run("sleep 1", timeout=0.2)
        r = await pool.run("echo fresh")  # a new control session
        assert r.stdout == "fresh\n"
        # the retired one drains (already gone if the new one was slow to start)
        assert pool.stats().sessions in (1, 2)
        for _ in range(400):  # hang guard, 20 s
            if pool.stats().sessions == 1:
                break
            await asyncio.sleep(0.05)
        assert pool.stats().sessions == 1


async def test_run_checked(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        assert (await pool.run_checked("echo ok")).stdout == "ok\n"
        with pytest.raises(RemoteCommandError, match="exited 4: nope") as e:
            await pool.run_checked("echo nope >&2; exit 4")
        assert e.value.returncode == 4 and e.value.host == pool.label


async def test_control_shell_killed_is_restarted(sshd_host) -> None:
    async with HostPool(host_config(sshd_host)) as pool:
        await pool.run("true")
        # in the snippet's subshell, $$ is the control sh itself: kill it
        with pytest.raises(SshConnectionLost):
            await pool.run("kill -9 $$; sleep 5")
        assert (await pool.run("echo again")).stdout == "again\n"
        assert pool.stats().connections == 1


async def test_requests_of_one_iteration_share_one_write() -> None:
    session, chan = fake_session()
    reqs = [session._submit(f"echo {i}") for i in range(5)]
    await asyncio.sleep(0)
    assert len(chan.frames) == 1 and chan.frames[0].count("\n") == 5
    for i, req in enumerate(reqs):
        reply(session, req.seq, b"%d\n" % i, b"", rc=0)
    assert [r.future.result().stdout for r in reqs] == [f"{i}\n" for i in range(5)]
