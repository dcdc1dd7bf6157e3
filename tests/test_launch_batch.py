"""LaunchBatcher: launches to one host go out in batches (no network here)."""

from __future__ import annotations

import asyncio

import pytest

from xqute_ssh.errors import SshConnectionLost
from xqute_ssh.schedulers.ssh.launcher import LaunchBatcher, join_parts, split_reply
from xqute_ssh.ssh import CommandResult


def test_a_batch_reply_cuts_at_numbered_separators_only() -> None:
    text = "xq-started 1 5\nxq-next 0\nxq-next 7\nxq-started 2 6\nxq-next 1\n"
    assert split_reply(text, 3) == ["xq-started 1 5\n", "xq-next 7\nxq-started 2 6\n", ""]
    assert split_reply(text, 2) is None  # a separator too many or too few: no guess
    assert split_reply("a\nxq-next 1\nb\n", 2) is None  # out of order
    assert join_parts(["a", "b", "c"]) == "a\necho 'xq-next 0'\nb\necho 'xq-next 1'\nc"


class FakeHost:
    """Runs joined snippets like sh would: each part prints its own line."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def run(self, snippet: str) -> CommandResult:
        self.requests.append(snippet)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        out = []
        for line in snippet.split("\n"):
            if line.startswith("echo 'xq-next "):
                out.append(line[6:-1] + "\n")
            else:
                out.append(f"did {line}\n")
        return CommandResult(0, "".join(out), "")


async def test_launches_ready_while_one_is_in_flight_go_out_together() -> None:
    host = FakeHost()
    b = LaunchBatcher(host.run, "h")
    first = b.submit("job0")
    await asyncio.sleep(0)
    rest = [b.submit(f"job{i}") for i in range(1, 5)]
    assert len(host.requests) == 1 and b.waiting == 4
    host.release.set()
    results = await asyncio.gather(first.future, *(p.future for p in rest))
    assert [r.stdout for r in results] == [f"did job{i}\n" for i in range(5)]
    assert len(host.requests) == 2  # one alone, then the four that waited
    assert "<LaunchBatcher h [idle, 0 waiting]>" == repr(b)


async def test_a_launch_not_sent_yet_can_be_withdrawn_and_never_runs() -> None:
    host = FakeHost()
    b = LaunchBatcher(host.run, "h")
    b.submit("job0")
    await asyncio.sleep(0)
    waiting = b.submit("job1")
    assert b.withdraw(waiting) and waiting.future.cancelled()
    host.release.set()
    await asyncio.sleep(0.01)
    assert not any("job1" in r for r in host.requests)


async def test_a_failed_batch_fails_each_launch_with_its_own_error() -> None:
    host = FakeHost()
    b = LaunchBatcher(host.run, "h")
    b.submit("job0")
    await asyncio.sleep(0)
    parts = [b.submit(f"job{i}") for i in range(1, 3)]
    host.fail = SshConnectionLost("h", "gone")
    host.release.set()
    errors = []
    for p in parts:
        with pytest.raises(SshConnectionLost) as info:
            await p.future
        errors.append(info.value)
    assert errors[0] is not errors[1] and errors[0].retryable
