"""Newcomer's SSH errors: a passphrase-protected key, known_hosts = false.

Each error must say what to do next; the opt-out of host-key checking must be
explicit (a named value) and loud (a warning on every connection).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from xqute_ssh.errors import ConfigError
from xqute_ssh.ssh import HostConfig, open_link
from xqute_ssh.ssh.config import INSECURE_NO_HOST_KEY_CHECK
from xqute_ssh.testing import SshCluster

from ..test_cli import cli


@pytest.fixture
def encrypted_key(tmp_path: Path, sshd_cluster: SshCluster) -> Path:
    key = tmp_path / "enc_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(key)], check=True
    )
    with sshd_cluster.authorized_keys.open("a") as fh:
        fh.write(key.with_suffix(".pub").read_text())
    return key


async def test_passphrase_key_error_says_how_and_the_option_works(
    sshd_cluster: SshCluster, encrypted_key: Path
) -> None:
    host = sshd_cluster.hosts[0]
    base = dict(
        host=host.address,
        port=host.port,
        user=host.user,
        keyfile=str(encrypted_key),
        known_hosts=str(sshd_cluster.known_hosts),
    )
    with pytest.raises(ConfigError) as err:
        await open_link(HostConfig(**base))
    text = str(err.value)
    assert "passphrase" in text and "ssh-agent" in text and "connect_options" in text
    link = await open_link(HostConfig(**base, connect_options={"passphrase": "s3cret"}))
    try:
        done = await link.conn.run("echo in", check=True)
        assert done.stdout == "in\n"
    finally:
        link.close()
    # the passphrase never shows in the config's repr
    assert "s3cret" not in repr(HostConfig(**base, connect_options={"passphrase": "s3cret"}))


def test_known_hosts_false_in_a_servers_file_is_a_clear_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text('known_hosts = false\n[servers.h1]\nhost = "127.0.0.1"\n')
    assert cli("run", "--servers-file", hosts, "-w", tmp_path / "wd", "--", "true") == 2
    err = capsys.readouterr().err
    assert "known_hosts must be the path of a known_hosts file" in err
    assert INSECURE_NO_HOST_KEY_CHECK in err
    assert "Traceback" not in err


async def test_the_explicit_opt_out_connects_and_warns_each_time(
    sshd_cluster: SshCluster, caplog: pytest.LogCaptureFixture
) -> None:
    host = sshd_cluster.hosts[0]
    cfg = HostConfig(
        host=host.address,
        port=host.port,
        user=host.user,
        keyfile=str(sshd_cluster.client_key),
        known_hosts=INSECURE_NO_HOST_KEY_CHECK,
    )
    assert cfg.known_hosts is None
    with caplog.at_level(logging.WARNING, logger="xqute_ssh"):
        link = await open_link(cfg)
        link.close()
    assert any("host key checking is OFF" in r.getMessage() for r in caplog.records)
