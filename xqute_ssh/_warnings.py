"""Keep third-party deprecation noise off the user's screen.

asyncssh (2.24) still names DSA key types in its annotations, and
cryptography (>= 43?) warns about each when asyncssh is imported: ten lines
of ``CryptographyDeprecationWarning`` that the user can do nothing about, on
every command and script that uses SSH.  We ignore exactly that category when
raised from asyncssh's own modules; warnings from the user's code, from
cryptography used directly, and every other category still show.
"""

from __future__ import annotations

import warnings


def quiet_asyncssh_crypto_warnings() -> None:
    """Ignore cryptography's deprecation warnings raised inside asyncssh.

    Idempotent (``filterwarnings`` moves an identical filter to the front).
    Called when ``xqute_ssh`` is imported, before anything imports asyncssh.
    """
    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # pragma: no cover - cryptography comes with asyncssh
        return
    warnings.filterwarnings(
        "ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)"
    )
