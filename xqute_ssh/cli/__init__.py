"""The ``xqute-ssh`` command line: ``run``, ``status`` and ``demo``.

:func:`main` returns the exit status instead of exiting, so it can be called
in-process (tests) and as the console script (which exits with the value):

* 0: every job succeeded; 1: some failed or never ran, or a runtime error
  (an SSH host unreachable); 2: a usage error, whose message names the flag;
* 128 + n after signal n (130 after Ctrl-C), once the jobs have been killed.

User errors never print a traceback; only bugs do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import ConfigError, XquteError
from .args import (
    UsageError,
    build_parser,
    subcommand_parser,
    suggest_command,
    unknown_options_message,
)

__all__ = ["UsageError", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xqute-ssh`` with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    hint = suggest_command(parser, args)
    if hint is not None:
        print(f"usage: {parser.format_usage().split(': ', 1)[-1].strip()}", file=sys.stderr)
        print(f"xqute-ssh: error: {hint}", file=sys.stderr)
        return 2
    try:
        ns, extra = parser.parse_known_args(args)
    except SystemExit as exc:  # argparse printed usage and the error, or --help
        return exc.code if isinstance(exc.code, int) else 2
    if extra:
        sub = subcommand_parser(parser, ns.subcommand)
        print(sub.format_usage().rstrip(), file=sys.stderr)
        print(f"xqute-ssh {ns.subcommand}: error: {unknown_options_message(sub, extra)}",
              file=sys.stderr)
        return 2
    prog = f"xqute-ssh {ns.subcommand}"
    try:
        if ns.subcommand == "run":
            from .run import run_command

            return run_command(ns)
        if ns.subcommand == "status":
            from .status import status_command

            return status_command(ns)
        from .demo import demo_command

        return demo_command(ns)
    except (UsageError, ConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except XquteError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, like other tools;
        # point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
