"""Run xqute's own tests against xqute_ssh: module names only, no behaviour.

Copied to the root of the run directory by ``scripts/xqute_suite/run.py``.
Each ``xqute.*`` module a test imports is the xqute_ssh module that holds the
same things; nothing is patched, wrapped or added.
"""

from __future__ import annotations

import importlib
import sys

#: xqute 2.2.1 module name -> the xqute_ssh module that holds the same names.
ALIASES = {
    "xqute": "xqute_ssh",
    "xqute.xqute": "xqute_ssh.xqute",
    "xqute.job": "xqute_ssh.job",
    "xqute.scheduler": "xqute_ssh.scheduler",
    "xqute.plugin": "xqute_ssh.plugin",
    "xqute.path": "xqute_ssh.path",
    "xqute.defaults": "xqute_ssh.status",  # JobStatus, JobErrorStrategy
    "xqute.utils": "xqute_ssh.xqute",  # logger (the "xqute_ssh" logger)
    "xqute.schedulers": "xqute_ssh.schedulers",
    "xqute.schedulers.local_scheduler": "xqute_ssh.schedulers.local",
    "xqute.schedulers.ssh_scheduler": "xqute_ssh.schedulers.ssh",
}

for _alias, _target in ALIASES.items():
    sys.modules[_alias] = importlib.import_module(_target)
