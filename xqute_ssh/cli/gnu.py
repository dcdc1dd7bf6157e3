"""GNU parallel's input sources and replacement strings, as pure functions.

``xqute-ssh run CMD ::: a b ::: 1 2`` runs CMD for every combination of the
input sources (a 1, a 2, b 1, b 2: the cross product, first source slowest),
as GNU parallel does.  ``:::: FILE`` is a source read from a file, one value
a line, like ``-a FILE``.

In each word of CMD the replacement strings are replaced; a word is still
one argument whatever the values hold (no shell sees them):

=========  =====================================  ==================
``{}``     the values, joined by a space          ``dir/a.tar.gz``
``{.}``    without the last extension             ``dir/a.tar``
``{/}``    the base name                          ``a.tar.gz``
``{//}``   the directory (``.`` if none)          ``dir``
``{/.}``   the base name without extension        ``a.tar``
``{n}``    the n-th source's value (``{1}``...)   also ``{2.}``, ``{1/}``...
``{#}``    the job's sequence number, from 1
``{%}``    the job slot it runs in, 1..-j         filled in at submission
=========  =====================================  ==================

With no replacement string in CMD the values are appended as arguments.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Sequence

#: A separator between CMD and an input source of values / of files.
ARGS_SEP = ":::"
FILES_SEP = "::::"

_FIELD = re.compile(r"\{(\d*)(//|/\.|/|\.)?\}|\{#\}|\{%\}")
_EXT = re.compile(r"\.[^/.]*$")
#: Stands for ``{%}`` until the job's slot is known (see :func:`fill_slot`).
SLOT_TOKEN = f"\ue000slot-{secrets.token_hex(8)}\ue000"


class SourceError(ValueError):
    """A bad ``:::``/``::::`` or replacement string; the message says which."""


def split_sources(words: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """CMD words, and each ``:::``/``::::`` group as (separator, its words)."""
    cmd: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    for word in words:
        if word in (ARGS_SEP, FILES_SEP):
            groups.append((word, []))
        elif groups:
            groups[-1][1].append(word)
        else:
            cmd.append(word)
    return cmd, groups


def without_ext(value: str) -> str:
    """``{.}``: the last extension removed, if the last path part has one."""
    return _EXT.sub("", value)


def basename(value: str) -> str:
    """``{/}``: everything after the last slash."""
    return value.rsplit("/", 1)[-1]


def dirname(value: str) -> str:
    """``{//}``: the directory, ``.`` when there is none (as Perl's dirname)."""
    stripped = value.rstrip("/")
    if not stripped:
        return "/" if value else "."
    if "/" not in stripped:
        return "."
    head = stripped.rsplit("/", 1)[0].rstrip("/")
    return head or "/"


def _apply(op: str | None, value: str) -> str:
    if op == ".":
        return without_ext(value)
    if op == "/":
        return basename(value)
    if op == "//":
        return dirname(value)
    if op == "/.":
        return without_ext(basename(value))
    return value


def has_fields(template: Sequence[str]) -> bool:
    """Whether any word holds a replacement string (else values are appended)."""
    return any(_FIELD.search(word) for word in template)


def check_template(template: Sequence[str], n_sources: int) -> None:
    """A ``{n}`` beyond the number of input sources is an error naming it."""
    for word in template:
        for m in _FIELD.finditer(word):
            if m[1] and not 1 <= int(m[1]) <= n_sources:
                raise SourceError(
                    f"{m[0]} in {word!r}: there {'is' if n_sources == 1 else 'are'} "
                    f"{n_sources} input source{'' if n_sources == 1 else 's'}"
                )


def expand_word(word: str, values: Sequence[str], seq: int) -> str:
    """One word with its replacement strings filled for one job."""

    def repl(m: re.Match[str]) -> str:
        whole = m[0]
        if whole == "{#}":
            return str(seq)
        if whole == "{%}":
            return SLOT_TOKEN
        value = values[int(m[1]) - 1] if m[1] else " ".join(values)
        return _apply(m[2], value)

    return _FIELD.sub(repl, word)


def expand(template: Sequence[str], values: Sequence[str], seq: int) -> list[str]:
    """The argv of job number ``seq`` (from 1) for one combination of values."""
    if not has_fields(template):
        return [*template, *values]
    return [expand_word(word, values, seq) for word in template]


def combinations(sources: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """The cross product of the sources, first source slowest (GNU's order)."""
    return list(itertools.product(*sources))


def fill_slot(cmd: str | list[str], slot: int) -> str | list[str]:
    """The command with ``{%}`` (the slot token) replaced by ``slot``."""
    if isinstance(cmd, str):
        return cmd.replace(SLOT_TOKEN, str(slot))
    return [word.replace(SLOT_TOKEN, str(slot)) for word in cmd]


def uses_slot(cmd: str | list[str]) -> bool:
    return SLOT_TOKEN in (cmd if isinstance(cmd, str) else "\0".join(cmd))
