"""Which keyring a command trusts: ``--keys FILE``, else ``CADRE_KEYRING``, else the data dir's.

The keyring holds the deployment's public keys (:mod:`bus.signing`); ``cadre auth init`` writes
it beside the credentials, and the embedded server's first start writes the local one.
"""

from __future__ import annotations

from pathlib import Path

from bus.signing import Keyring, load_keyring
from cadre.settings import Settings


def keyring_path(settings: Settings) -> Path:
    """Where this deployment's keyring is: ``CADRE_KEYRING``, else ``<data_dir>/auth/keyring.json``."""
    return settings.keyring if settings.keyring is not None else settings.data_dir / "auth" / "keyring.json"


def find_keyring(settings: Settings, keys: Path | None = None) -> tuple[Keyring | None, str]:
    """The keyring to check signatures with, and where it came from (None: there is none)."""
    if keys is not None:
        return load_keyring(keys), str(keys)
    path = keyring_path(settings)
    if settings.keyring is not None or path.exists():
        return load_keyring(path), str(path)
    return None, ""
