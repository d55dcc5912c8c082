"""Signed events: who wrote each stored message, and whether that party may write its type.

Every event is signed by the identity that wrote it (an nkey, Ed25519) over exactly what
was stored::

    b"cadre-sig-v1\\n" + subject + b"\\n" + event id + b"\\n" + stored bytes

The signature binds the subject (so an event cannot be moved to another workflow or type),
the event id (a replayed copy is a duplicate) and the bytes (which carry ``prev``, the
integrity chain). It travels in two NATS headers beside the message, ``Cadre-Signer``
(the signer's public key, ``U…``) and ``Cadre-Sig`` (base64url, no padding), and in export
files as the record's ``signer`` and ``sig``.

A :class:`Keyring` is the deployment's trust: each public key with its role, and the event
types each role may emit. :meth:`Keyring.check` gives a :class:`Verdict`:

* ``signed``: a valid signature by a known key whose role may emit the type;
* ``unsigned``: no signature (logs written before signing; live actors refuse these);
* ``forged``: a signature that does not verify, an unknown key, or a role that may not emit
  this type (``reason`` says which).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, Literal

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

from cadre.bus.errors import CadreError
from cadre.bus.roles import emits_signed

SIGNER_HEADER: Final = "Cadre-Signer"
SIG_HEADER: Final = "Cadre-Sig"
_DOMAIN: Final = b"cadre-sig-v1\n"


class SigningError(CadreError):
    """A key or keyring that cannot be used: names the file and what is wrong with it."""

    code = "signing_error"


class Signature(msgspec.Struct, frozen=True, gc=False):
    """A stored message's signature: the signer's public key (``U…``) and the signature, base64url."""

    signer: str
    sig: str

    def headers(self) -> dict[str, str]:
        return {SIGNER_HEADER: self.signer, SIG_HEADER: self.sig}


def signature_of(headers: Mapping[str, str] | None) -> Signature | None:
    """The signature carried in a message's headers, or None when it has none."""
    if not headers:
        return None
    signer, sig = headers.get(SIGNER_HEADER), headers.get(SIG_HEADER)
    if signer is None and sig is None:
        return None
    return Signature(signer or "", sig or "")


def signed_bytes(subject: str, event_id: str, data: bytes) -> bytes:
    """What a signature covers: the domain tag, the subject, the event id and the stored bytes."""
    return b"".join((_DOMAIN, subject.encode(), b"\n", event_id.encode(), b"\n", data))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_seed() -> bytes:
    """A fresh nkey user seed (``SU…``), for one role or client."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


class Signer:
    """Signs what one identity (a role) stores; made from its nkey seed."""

    def __init__(self, seed: bytes, role: str) -> None:
        try:
            self._kp = nkeys.from_seed(bytearray(seed.strip()))
        except (nkeys.ErrInvalidSeed, binascii.Error, ValueError) as exc:
            raise SigningError(f"the seed for role {role!r} is not an nkey seed (SU…): {exc!r}") from None
        self.role = role
        self.public_key: str = self._kp.public_key.decode()

    @classmethod
    def from_creds(cls, path: Path, role: str) -> Signer:
        """The signer of ``role`` from its NATS creds file (the seed after ``BEGIN USER NKEY SEED``)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise SigningError(f"cannot read the {role} credentials {path}: {exc.strerror}") from None
        seed = creds_seed(text)
        if seed is None:
            raise SigningError(f"{path} holds no nkey seed: not a creds file of cadre auth init")
        return cls(seed, role)

    def sign(self, subject: str, event_id: str, data: bytes) -> Signature:
        return Signature(self.public_key, _b64(self.sign_raw(signed_bytes(subject, event_id, data))))

    def sign_raw(self, data: bytes) -> bytes:
        """The 64-byte signature of ``data`` (callers add their own domain tag)."""
        signature: bytes = self._kp.sign(data)
        return signature


def creds_seed(text: str) -> bytes | None:
    """The user seed in the text of a NATS creds file (the line after ``BEGIN USER NKEY SEED``)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "BEGIN USER NKEY SEED" in line and i + 1 < len(lines):
            return lines[i + 1].strip().encode()
    return None


def public_key_raw(public_key: str) -> bytes:
    """The 32-byte Ed25519 key of an nkey user public key (``U…``); prefix and checksum checked."""
    try:
        raw = base64.b32decode(public_key.encode() + b"=" * (-len(public_key) % 8))
    except (binascii.Error, ValueError):
        raise nkeys.ErrInvalidPublicKey() from None
    body, crc = raw[:-2], raw[-2:]
    if (
        len(body) != 33
        or body[0] != nkeys.PREFIX_BYTE_USER
        or int.from_bytes(crc, "little") != nkeys.crc16(bytearray(body))
    ):
        raise nkeys.ErrInvalidPublicKey()
    return body[1:]


Status = Literal["signed", "unsigned", "forged"]


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """What the keyring says of one stored message (``role``: the signer's, when known)."""

    status: Status
    reason: str = ""
    role: str | None = None

    @property
    def trusted(self) -> bool:
        return self.status == "signed"


UNSIGNED: Final = Verdict("unsigned", "the event carries no signature")


class KeyEntry(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    role: str
    name: str = ""


class KeyringFile(msgspec.Struct, frozen=True, kw_only=True):
    """A keyring as written (``keyring.json``; exports carry it): public keys only.

    ``{"keys": [{"key": "UA…", "role": "planner"}, …], "emits": {"planner": ["plan_proposed", …], …}}``
    """

    keys: tuple[KeyEntry, ...] = ()
    emits: dict[str, tuple[str, ...]] = msgspec.field(default_factory=emits_signed)


class Keyring:
    """The deployment's trusted public keys, each with its role, and what each role may emit."""

    def __init__(self, file: KeyringFile) -> None:
        self.file = file
        self._roles: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._verifiers: dict[str, nacl.signing.VerifyKey] = {}
        for entry in file.keys:
            try:
                self._verifiers[entry.key] = nacl.signing.VerifyKey(public_key_raw(entry.key))
            except nkeys.ErrInvalidPublicKey:
                raise SigningError(f"keyring: {entry.key!r} ({entry.role}) is not an nkey user public key") from None
            self._roles[entry.key] = entry.role
            self._names[entry.key] = entry.name
        self._allowed = {(role, t) for role, types in file.emits.items() for t in types}

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str] | tuple[str, str, str]]) -> Keyring:
        """A keyring of ``(public key, role[, name])``, with the default emit table."""
        return cls(
            KeyringFile(keys=tuple(KeyEntry(key=e[0], role=e[1], name=e[2] if len(e) > 2 else "") for e in entries))
        )

    def role_of(self, key: str) -> str | None:
        return self._roles.get(key)

    def name_of(self, key: str) -> str:
        """The name the keyring gives ``key`` (its entry's ``name``, else the key itself)."""
        return self._names.get(key) or key

    def verify_raw(self, key: str, data: bytes, sig: str) -> bool:
        """Whether ``sig`` (base64url) is ``key``'s signature of ``data`` (False for an unknown key)."""
        verifier = self._verifiers.get(key)
        if verifier is None:
            return False
        try:
            verifier.verify(data, _unb64(sig))
        except (nacl.exceptions.BadSignatureError, binascii.Error, ValueError):
            return False
        return True

    def may_emit(self, role: str, event_type: str) -> bool:
        return (role, event_type) in self._allowed

    def check(
        self,
        subject: str,
        event_type: str,
        event_id: str,
        data: bytes,
        signature: Signature | None,
        *,
        verified: bool = False,
    ) -> Verdict:
        """Whether this stored message was written by a party allowed to write its type.

        ``verified``: the caller knows the signature holds (this process made it over these very
        bytes), so the Ed25519 check is skipped; the key and its role are still checked.
        """
        if signature is None:
            return UNSIGNED
        role = self._roles.get(signature.signer)
        if role is None:
            return Verdict("forged", f"signed by {signature.signer[:12]}…, a key the keyring does not know")
        if not verified and not self.verify_raw(signature.signer, signed_bytes(subject, event_id, data), signature.sig):
            return Verdict("forged", f"its signature by the {role} key does not match what was stored", role)
        if not self.may_emit(role, event_type):
            return Verdict("forged", f"signed by the {role} key, but {role} may not emit {event_type}", role)
        return Verdict("signed", "", role)

    def to_json(self) -> bytes:
        """The keyring as JSON (public keys only: safe to ship with an export)."""
        return msgspec.json.format(msgspec.json.encode(self.file))


def load_keyring(path: Path) -> Keyring:
    """Read a keyring file; a missing or malformed one is a :class:`SigningError` naming the file."""
    try:
        return Keyring(msgspec.json.decode(path.read_bytes(), type=KeyringFile))
    except OSError as exc:
        raise SigningError(f"cannot read the keyring {path}: {exc.strerror}; `cadre auth init` writes one") from None
    except msgspec.ValidationError as exc:
        raise SigningError(f"the keyring {path} is not valid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise SigningError(f"the keyring {path} is not JSON: {exc}") from None
