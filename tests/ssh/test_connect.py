"""HostConfig parsing and connecting: auth, host keys, errors that name the fix."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from xqute_ssh.errors import (
    ConfigError,
    SshAuthError,
    SshConnectError,
    SshHostKeyError,
)
from xqute_ssh.ssh import HostConfig, HostPool, open_link
from xqute_ssh.ssh.connect import connect_kwargs


def host_config(host, **overrides) -> HostConfig:
    """A HostConfig for a harness host (its key and known_hosts: checking stays on)."""
    return HostConfig(**{**host.server_spec(), **overrides})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ====================================================================== config
@pytest.mark.parametrize(
    ("spec", "user", "host", "port"),
    [
        ("node1", None, "node1", None),
        ("alice@node1", "alice", "node1", None),
        ("alice@node1:2222", "alice", "node1", 2222),
        ("127.0.0.2:22", None, "127.0.0.2", 22),
        ("[::1]:2200", None, "::1", 2200),
        ("bob@[fe80::1]", "bob", "fe80::1", None),
        ("  node-2.example.org:65535 ", None, "node-2.example.org", 65535),
    ],
)
def test_from_spec(spec: str, user, host: str, port) -> None:
    cfg = HostConfig.from_spec(spec)
    assert (cfg.user, cfg.host, cfg.port) == (user, host, port)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "user@",
        ":22",
        "host:0",
        "host:65536",
        "host:abc",
        "host:",
        "a b",
        "host:22:33",
        "u@v@host",
        "[::1",
        "-oProxyCommand=x",
    ],
)
def test_from_spec_rejects_malformed_entries(spec: str) -> None:
    with pytest.raises(ConfigError) as e:
        HostConfig.from_spec(spec)
    assert isinstance(e.value, ValueError)
    assert repr(spec.strip()) in str(e.value) or "port" in str(e.value)


def test_from_spec_entry_wins_over_default_user_and_port() -> None:
    cfg = HostConfig.from_spec("alice@h:2200", user="bob", port=22)
    assert (cfg.user, cfg.port) == ("alice", 2200)
    cfg = HostConfig.from_spec("h", user="bob", port=2222)
    assert (cfg.user, cfg.port) == ("bob", 2222)


def test_from_spec_keeps_other_fields() -> None:
    cfg = HostConfig.from_spec("alice@h:2", max_sessions=3, keyfile="/k")
    assert (cfg.max_sessions, cfg.keyfiles, cfg.label) == (3, ("/k",), "alice@h:2")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 70000},
        {"max_sessions": 0},
        {"max_connections": 0},
        {"connect_timeout": 0},
        {"connect_retries": -1},
        {"host": ""},
    ],
)
def test_invalid_values_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        HostConfig(**{"host": "h", **kwargs})


def test_password_never_in_label_or_repr() -> None:
    cfg = HostConfig(
        host="h",
        user="u",
        port=2,
        password="s3cret",
        connect_options={"passphrase": "pp-secret", "x": 1},
    )
    assert cfg.label == "u@h:2"
    text = repr(cfg) + str(cfg) + cfg.label + repr(HostPool(cfg))
    assert "s3cret" not in text and "pp-secret" not in text
    assert "password='***'" in repr(cfg)


def test_jump_config_inherits_keys_not_password() -> None:
    cfg = HostConfig(
        host="h",
        keyfile="/k",
        password="pw",
        known_hosts="/kh",
        proxy_jump="j1:2201,jo@j2:2202",
    )
    jump = cfg.jump_config()
    assert jump is not None
    assert (jump.user, jump.host, jump.port, jump.keyfile, jump.known_hosts) == (
        "jo",
        "j2",
        2202,
        "/k",
        "/kh",
    )
    assert jump.password is None
    first = jump.jump_config()
    assert first is not None and (first.host, first.port) == ("j1", 2201)
    assert first.jump_config() is None


def test_missing_key_file_is_config_error_before_connecting(tmp_path: Path) -> None:
    missing = tmp_path / "nope_id"
    with pytest.raises(ConfigError, match="nope_id"):
        connect_kwargs(HostConfig(host="127.0.0.1", port=1, keyfile=str(missing)))


async def test_missing_key_file_through_pool(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope_id")
    async with HostPool(HostConfig(host="127.0.0.1", port=1, keyfile=missing)) as pool:
        with pytest.raises(ConfigError, match="nope_id"):
            await pool.run("true")


def test_connect_options_passed_through_and_win() -> None:
    kw = connect_kwargs(
        HostConfig(
            host="h",
            port=2,
            user="u",
            known_hosts=None,
            connect_options={"keepalive_interval": 1, "x509_trusted_certs": None},
        )
    )
    assert kw["keepalive_interval"] == 1 and kw["x509_trusted_certs"] is None
    assert kw["known_hosts"] is None and kw["username"] == "u" and kw["port"] == 2
    assert "password" not in kw and "client_keys" not in kw


async def test_known_hosts_none_logs_a_warning(caplog) -> None:
    """Nothing listens on the port: we see the warning without connecting."""
    cfg = HostConfig(host="127.0.0.1", port=free_port(), known_hosts=None)
    with caplog.at_level(logging.WARNING, logger="xqute_ssh.ssh"):
        with pytest.raises(SshConnectError):
            await open_link(cfg)
    assert any("host key checking is OFF" in r.getMessage() for r in caplog.records)


# ====================================================================== errors
async def test_unreachable_port_names_host_port_quickly() -> None:
    port = free_port()
    cfg = HostConfig(host="127.0.0.1", port=port, connect_retries=0)
    start = time.monotonic()
    async with HostPool(cfg) as pool:
        with pytest.raises(SshConnectError, match=rf"127\.0\.0\.1:{port}.*refused") as e:
            await pool.run("true")
    # refused at once: no waiting for connect_timeout (10 s); bound generous
    assert time.monotonic() - start < 5.0
    assert e.value.retryable


async def test_refused_is_not_retried() -> None:
    """A refusal means the host is down: one attempt, and host health takes
    over (retrying here made one failure cost several timeouts)."""
    accepts = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepts
        accepts += 1
        writer.close()

    # A server that drops every connection during the handshake (what sshd's
    # MaxStartups does under a burst) IS retried, connect_retries times.
    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = HostConfig(host="127.0.0.1", port=port, connect_retries=2, known_hosts=None)
        async with HostPool(cfg) as pool:
            with pytest.raises(SshConnectError, match="dropped during the handshake") as e:
                await pool.exec("true")
        assert e.value.dropped
        assert accepts == 3
    finally:
        server.close()
    cfg = HostConfig(host="127.0.0.1", port=free_port(), connect_retries=2)
    outcomes: list[BaseException | None] = []
    async with HostPool(cfg, on_connect=outcomes.append) as pool:
        with pytest.raises(SshConnectError, match="refused") as e:
            await pool.exec("true")
    assert not e.value.dropped
    assert len(outcomes) == 1 and isinstance(outcomes[0], SshConnectError)


async def test_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = HostConfig(
            host="127.0.0.1",
            port=port,
            connect_timeout=0.3,
            connect_retries=0,
            known_hosts=None,
        )
        start = time.monotonic()
        with pytest.raises(SshConnectError, match=r"no SSH answer within 0\.3s"):
            async with HostPool(cfg) as pool:
                await pool.run("true")
        assert time.monotonic() - start < 5  # hang guard: the timeout is 0.3 s
    finally:
        server.close()


async def test_unknown_host_key_refused(
    sshd_host, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xqute_ssh.ssh")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    cfg = host_config(sshd_host, known_hosts=str(kh))
    async with HostPool(cfg) as pool:
        with pytest.raises(SshHostKeyError) as e:
            await pool.run("true")
    msg = str(e.value)
    assert "unknown" in msg and cfg.label in msg
    assert f"ssh-keyscan -p {sshd_host.port} {sshd_host.address} >> {kh}" in msg
    assert not e.value.retryable
    assert not [r for r in caplog.records if "retry" in r.getMessage()]  # never retried


async def test_changed_host_key_says_so(sshd_host, tmp_path: Path) -> None:
    other = tmp_path / "other"
    proc = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)
    )
    assert await proc.wait() == 0
    kh = tmp_path / "known_hosts"
    pub = (tmp_path / "other.pub").read_text().split()[:2]
    kh.write_text(f"[{sshd_host.address}]:{sshd_host.port} {' '.join(pub)}\n")
    async with HostPool(host_config(sshd_host, known_hosts=str(kh))) as pool:
        with pytest.raises(SshHostKeyError, match="CHANGED") as e:
            await pool.run("true")
    assert "ssh-keygen -R" in str(e.value)


async def test_wrong_client_key_is_auth_error(sshd_host, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_id"
    proc = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)
    )
    assert await proc.wait() == 0
    cfg = host_config(sshd_host, keyfile=str(wrong), password=None)
    async with HostPool(cfg) as pool:
        with pytest.raises(SshAuthError) as e:
            await pool.run("true")
    msg = str(e.value)
    assert f"{sshd_host.user}@{sshd_host.address}" in msg
    assert "authentication failed" in msg and str(wrong) in msg
    assert not e.value.retryable


async def test_wrong_password_is_auth_error_and_not_leaked(sshd_host, tmp_path) -> None:
    wrong = tmp_path / "wrong_id"
    proc = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)
    )
    assert await proc.wait() == 0
    cfg = host_config(sshd_host, keyfile=str(wrong), password="hunter2-secret")
    async with HostPool(cfg) as pool:
        with pytest.raises(SshAuthError) as e:
            await pool.run("true")
    assert "password" in str(e.value) and "hunter2-secret" not in str(e.value)


# ====================================================================== options
async def test_ssh_config_file_is_honoured(sshd_host, tmp_path: Path) -> None:
    conf = tmp_path / "ssh_config"
    conf.write_text(
        "Host xq-alias\n"
        f"  HostName {sshd_host.address}\n"
        f"  Port {sshd_host.port}\n"
        f"  User {sshd_host.user}\n"
        f"  IdentityFile {sshd_host.client_key}\n"
        f"  UserKnownHostsFile {sshd_host.known_hosts}\n"
    )
    cfg = HostConfig(host="xq-alias", config=str(conf))
    async with HostPool(cfg) as pool:
        assert (await pool.run("echo via-config")).stdout == "via-config\n"


async def test_proxy_jump(sshd_cluster) -> None:
    jump, target = sshd_cluster.hosts[0], sshd_cluster.hosts[1]
    cfg = host_config(target, proxy_jump=host_config(jump))
    before = len(jump.pids())
    async with HostPool(cfg) as pool:
        r = await pool.run("echo through-the-jump")
        assert r.stdout == "through-the-jump\n"
        assert (await pool.exec("echo exec-too")).stdout == "exec-too\n"
        assert len(jump.pids()) > before  # a connection to the jump host is open
    # closing the pool closed the jump connection too
    async with asyncio.timeout(10):
        while len(jump.pids()) > before:
            await asyncio.sleep(0.05)
    # and it really goes through the jump host: without it, no connection
    await jump.astop()
    async with HostPool(
        host_config(target, proxy_jump=host_config(jump), connect_retries=0)
    ) as pool:
        with pytest.raises(SshConnectError, match=rf"{jump.address}:{jump.port}"):
            await pool.run("true")
