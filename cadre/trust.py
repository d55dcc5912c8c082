"""What a cadre process trusts and signs with, from its settings.

* The keyring: ``--keys FILE`` (audits), else ``CADRE_KEYRING``, else ``keyring.json`` beside the
  process's credentials (``--creds`` / ``CADRE_NATS_CREDS``), else the data dir's
  (``<data_dir>/auth/keyring.json``, written with the embedded server's credentials). None of
  them: signatures are neither made nor checked (a bare nats-server, as before signing).
* The signers: for each role the process acts as, the seed in ``<role>.creds`` in the same
  directory as its credentials (the data dir's auth directory by default). A deployment that
  runs one kind per process mounts that kind's creds file only (``deploy/compose.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from cadre.actors.trust import Trust
from cadre.bus.auth import creds_path, role_of_creds
from cadre.bus.signing import Keyring, Signer, load_keyring
from cadre.settings import Settings
from cadre.store.filelog import FileLog


def credentials_dir(settings: Settings) -> Path:
    """Where this process's credentials are: beside ``--creds``, else the data dir's auth directory."""
    return settings.nats_creds.parent if settings.nats_creds is not None else settings.auth_dir


def keyring_path(settings: Settings) -> Path:
    """The deployment's keyring file (it may not exist)."""
    if settings.keyring is not None:
        return settings.keyring
    return credentials_dir(settings) / "keyring.json"


def find_keyring(settings: Settings, keys: Path | None = None) -> tuple[Keyring | None, str]:
    """The keyring to check signatures with and where it came from (None, "": there is none)."""
    if keys is not None:
        return load_keyring(keys), str(keys)
    path = keyring_path(settings)
    if settings.keyring is not None or path.exists():
        return load_keyring(path), str(path)
    return None, ""


def keyring_for(
    settings: Settings, keys: Path | None = None, export: FileLog | None = None
) -> tuple[Keyring | None, str]:
    """The keyring that checks a workflow's records, and where it came from: ``--keys FILE`` when
    given; for records read from an export, the keyring it carries; else the deployment's."""
    if keys is None and export is not None and export.keyring is not None:
        where = str(export.path) if export.path is not None else "the export"
        return export.keyring, f"{where} (the keyring the export carries; --keys FILE checks yours)"
    return find_keyring(settings, keys)


def signer_for(settings: Settings, role: str) -> Signer | None:
    """The signer of ``role`` from its creds file beside this process's credentials, if there is one."""
    if settings.nats_creds is not None and role_of_creds(settings.nats_creds) == role:
        return Signer.from_creds(settings.nats_creds, role)
    path = creds_path(credentials_dir(settings), role)
    return Signer.from_creds(path, role) if path.exists() else None


def trust_for(settings: Settings, roles: Iterable[str]) -> Trust:
    """The keyring and the signers of ``roles`` this process can have (see the module docstring)."""
    keyring, _ = find_keyring(settings)
    if keyring is None:
        return Trust()
    signers = {role: s for role in roles if (s := signer_for(settings, role)) is not None}
    return Trust(keyring, signers)


def keyring_loader(settings: Settings) -> Callable[[], Keyring | None]:
    """The deployment's keyring as it is on disk now: read again when the file changes (an approver
    added by ``cadre auth add-approver`` counts at once), else the copy read before."""
    path = keyring_path(settings)
    cache: dict[str, tuple[float, Keyring | None]] = {}

    def current() -> Keyring | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        held = cache.get("k")
        if held is None or held[0] != mtime:
            cache["k"] = held = (mtime, load_keyring(path))
        return held[1]

    return current
