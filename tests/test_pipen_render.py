"""The pure parts of the pipen schedulers (no pipen needed): the envs a
pipen job's wrapper exports and xqute's ``$cmd`` contract for prep hooks."""

from __future__ import annotations

import subprocess

import pytest

from xqute_ssh.errors import ConfigError
from xqute_ssh.pipen.render import job_envs, prep_code


def test_envs_are_text_and_xqute_names_are_left_to_the_wrapper() -> None:
    envs = {"PIPEN_JOB_INDEX": 0, "RATIO": 0.5, "XQUTE_METADIR": "/controller/view"}
    assert job_envs(envs) == {"PIPEN_JOB_INDEX": "0", "RATIO": "0.5"}


def test_a_bad_env_name_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'BAD NAME'.*pipen job"):
        job_envs({"BAD NAME": 1})


def _run_prep(code: str) -> str:
    script = f"XQ_CMD=(echo 'a b' \"c'd\")\nxq_hook_prep() {{\n{code}\n:\n}}\nxq_hook_prep\n\"${{XQ_CMD[@]}}\""
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout


def test_prep_hook_sees_the_command_and_may_replace_it() -> None:
    cmd = ["echo", "a b", "c'd"]
    unchanged = prep_code(cmd, "", 'echo "saw: $cmd"')
    assert _run_prep(unchanged) == "saw: echo 'a b' 'c'\"'\"'d'\na b c'd\n"
    replaced = prep_code(cmd, "", 'cmd="echo wrapped; $cmd"')
    assert _run_prep(replaced) == "wrapped\na b c'd\n"


def test_without_plugin_code_only_the_prescript() -> None:
    assert prep_code(["true"], "echo pre", "") == "echo pre"
