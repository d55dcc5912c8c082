"""Who may do what on the bus: NATS identities per role, their permissions, and the server's auth config.

cadre runs NATS in operator mode with an in-memory account resolver: the operator, the accounts and
the users are nkeys, and each user's permissions are in its JWT (in its ``.creds`` file). The server
config holds only public JWTs (``auth.conf``), so it holds no secret. Two accounts:

``CADRE``
    The event stream, the ledger, the inference cache and the actors. Users: ``admin`` (no limits:
    streams and consumers), one user per actor kind (``planner``, ``validator``, ``decomposer``,
    ``agent``), ``intake``, ``budget``, ``approvals``, and ``node`` (the union of the actor roles, for
    a process that runs them all: ``cadre up``, ``cadre run``). An actor role may publish only the
    event types its kind emits, plus the runtime's ``handler_failed`` and ``effects_recorded``, and
    its consultations and settlements to the budget actor.
``READERS``
    Clients. It holds a *mirror* of the event stream under the same name (same sequences), and one of
    the object store of outputs stored by reference (``OBJ_<bucket>``), so a
    reader creates consumers on the mirror, never in ``CADRE``: a consumer request there could edit
    an actor's durable (``name`` in the create payload) or deliver stored events to any subject
    (``deliver_subject``), both verified. Users: ``client`` (submit requests, read events),
    ``approver`` (a client that may also send decisions to ``<prefix>.approvals``) and ``mirror``
    (creates the mirror). Requests and approvals cross from ``READERS`` to ``CADRE`` through service
    imports with ``share``, so the service learns the requester's key (``Nats-Request-Info``).

Every key is kept as a seed in the auth directory (mode 0600): ``<role>.creds`` (user JWT + seed) per
role, ``keys/*.nk`` for the operator and accounts (needed only to mint again). Each role's seed is
also its signing key for later use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from cadre.bus.errors import AuthConfigError
from cadre.bus.roles import ACTOR_ROLES, EMITS, RUNTIME_EMITS, SIGNING_ROLES
from cadre.bus.signing import KeyEntry, Keyring, KeyringFile, creds_seed, load_keyring
from cadre.bus.subjects import Subjects

__all__ = [
    "ACTOR_ROLES",
    "EMITS",
    "ROLES",
    "RUNTIME_EMITS",
    "AuthNames",
    "Identity",
    "Permissions",
    "add_approver",
    "creds_path",
    "ensure_auth",
    "permissions",
    "role_of_creds",
]

CADRE_ACCOUNT = "CADRE"
READERS_ACCOUNT = "READERS"
SYSTEM_ACCOUNT = "SYS"

# The roles of the CADRE account, then of READERS.
CADRE_ROLES = ("admin", "node", *ACTOR_ROLES, "intake", "budget", "approvals")
READERS_ROLES = ("mirror", "client", "approver")
ROLES = (*CADRE_ROLES, *READERS_ROLES)

_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True, slots=True)
class AuthNames:
    """The names a deployment's permissions are written for (they are part of the subjects)."""

    prefix: str = "cadre"
    stream: str = "CADRE_EVENTS"
    ledger: str = "CADRE_LEDGER"
    cache_bucket: str = "CADRE_INFERENCE"
    outputs_bucket: str = "CADRE_OUTPUTS"  # the object store of outputs stored by reference
    pools: tuple[str, ...] = ()  # the agent pools of the policy file: each has its own durable
    partitions: int = 0  # CADRE_PARTITIONS: each durable has one more per partition (``<durable>_p<i>``)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    def durable(self, kind: str, pool: str | None = None) -> str:
        """An actor kind's durable consumer, or an agent pool's (as ``actors.runtime.consumer_name``)."""
        base = f"{self.prefix.replace('.', '_')}_{kind}"
        return base if pool is None else f"{base}_pool_{pool}"

    def durables(self, kind: str, pool: str | None = None) -> list[str]:
        """An actor kind's (or pool's) durable, then its partition durables (``actors.runtime.partition_consumer``)."""
        durable = self.durable(kind, pool)
        return [durable, *(f"{durable}_p{i}" for i in range(self.partitions))]

    @property
    def requests_stream(self) -> str:
        """The durable intake's stream of requests (``bus.requests_stream.intake_spec``)."""
        return f"{self.stream}_REQUESTS"

    @property
    def lease_bucket(self) -> str:
        """The partition leases' bucket (``actors.partitions.bucket_name``; with ``CADRE_PARTITIONS``)."""
        return f"{self.prefix.replace('.', '_')}_partitions"

    @property
    def intake_bucket(self) -> str:
        """The durable intake's pairing bucket (``bus.requests_stream.intake_spec``)."""
        return f"{self.stream}_INTAKE"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prefix": self.prefix,
            "stream": self.stream,
            "ledger": self.ledger,
            "cache_bucket": self.cache_bucket,
            # Recorded so that a deployment minted before the durable intake gets its permissions.
            "requests_stream": self.requests_stream,
            "outputs_bucket": self.outputs_bucket,
        }
        if self.pools:  # absent without pools: a deployment without them keeps its minted credentials
            out["pools"] = list(self.pools)
        if self.partitions:  # the same: absent without partitions
            out["partitions"] = self.partitions
        return out


@dataclass(frozen=True, slots=True)
class Permissions:
    """A user's publish and subscribe allow-lists; ``None`` = unrestricted (admin, mirror)."""

    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    allow_responses: bool = False

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # Both directions always: a block that names only one leaves the other unrestricted.
        if self.publish is not None:
            out["pub"] = {"allow": list(self.publish)}
        if self.subscribe is not None:
            out["sub"] = {"allow": list(self.subscribe)}
        if self.allow_responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _event_reader(stream: str) -> list[str]:
    """Read-only stream calls and an ordered consumer (with its flow control) on ``stream``."""
    return [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.FC.{stream}.>",
    ]


def _object_reader(bucket: str) -> list[str]:
    """Read objects of the outputs' object store (``store.objects``): an object's meta message, then
    its chunks with an ordered consumer."""
    stream = f"OBJ_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.FC.{stream}.>",
    ]


def _object_writer(bucket: str) -> list[str]:
    """Put objects: chunks and meta messages. No purge or delete: a writer adds, and a replaced meta
    message no longer matches the digest its signed event carries."""
    return [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]


def _actor_publish(role: str, names: AuthNames) -> list[str]:
    s = names.subjects
    types = (*EMITS[role], *RUNTIME_EMITS) if role in ACTOR_ROLES else EMITS.get(role, ())
    out = [s.of_type(t) for t in types]
    if role in ACTOR_ROLES:
        # An agent also consumes with each agent pool's durable (`cadre actor agent --pool NAME`); the
        # planner with its children relay's (actors.children).
        pools = names.pools if role == "agent" else ("children",) if role == "planner" else ()
        # With partitions, each has one durable more per partition (its own: no wildcard over names).
        for durable in (*names.durables(role), *(d for p in pools for d in names.durables(role, p))):
            out += [
                # ensure_consumer: its own durable only; then fetch and ack (in_progress, nak, term).
                f"$JS.API.CONSUMER.DURABLE.CREATE.{names.stream}.{durable}",
                f"$JS.API.CONSUMER.INFO.{names.stream}.{durable}",
                f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{durable}",
                f"$JS.ACK.{names.stream}.{durable}.>",
            ]
    if role in ("agent", "planner"):  # tool outputs (the agent's steps, the planner's workflow result)
        out += _object_writer(names.outputs_bucket)
    if role in ACTOR_ROLES:
        out += _lease_access(names)
    # The state cache's ordered consumer, reads of the workflow's last message for appends, and the
    # objects its events refer to.
    return out + _event_reader(names.stream) + _object_reader(names.outputs_bucket)


def _lease_access(names: AuthNames) -> list[str]:
    """The partition leases (``actors.partitions``): the bucket created if missing, its keys read
    (an ordered consumer lists them), written and deleted."""
    bucket = names.lease_bucket
    kv = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.CREATE.{kv}",
        f"$JS.API.STREAM.INFO.{kv}",
        f"$JS.API.STREAM.MSG.GET.{kv}",
        f"$JS.API.DIRECT.GET.{kv}",
        f"$JS.API.DIRECT.GET.{kv}.>",
        f"$JS.API.CONSUMER.CREATE.{kv}",
        f"$JS.API.CONSUMER.CREATE.{kv}.>",
        f"$JS.API.CONSUMER.INFO.{kv}.*",
        f"$JS.API.CONSUMER.DELETE.{kv}.*",
        f"$JS.FC.{kv}.>",
        f"$KV.{bucket}.>",
    ]


def _intake_publish(names: AuthNames) -> list[str]:
    """The durable intake: its consumer on the requests stream, its pairing bucket, its notices."""
    stream, durable, kv = names.requests_stream, names.durable("intake"), f"KV_{names.intake_bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        f"$JS.API.STREAM.INFO.{kv}",
        f"$JS.API.STREAM.MSG.GET.{kv}",
        f"$JS.API.DIRECT.GET.{kv}",
        f"$JS.API.DIRECT.GET.{kv}.>",
        f"$KV.{names.intake_bucket}.>",
        names.subjects.intake_settled,
    ]


def permissions(role: str, names: AuthNames) -> Permissions:
    """The least-privilege permissions of ``role`` (see the module docstring)."""
    s = names.subjects
    inbox = "_INBOX.>"
    match role:
        case "admin" | "mirror":
            return Permissions(None, None)
        case "planner" | "validator" | "decomposer" | "agent":
            # Their handlers consult the model through the budget (Context.infer: consult, then settle).
            pub = [*_actor_publish(role, names), s.budget, s.budget_settle]
            if role == "planner":  # `cadre actor planner` hosts the intake as well
                pub += _actor_publish("intake", names) + _intake_publish(names)
                listen = (inbox, s.ping, s.requests, s.intake_settled, s.plan)
                return Permissions(_dedupe(pub), listen, allow_responses=True)
            return Permissions(_dedupe(pub), (inbox, s.ping), allow_responses=True)
        case "intake":
            pub = _actor_publish(role, names) + _intake_publish(names)
            listen = (inbox, s.ping, s.requests, s.intake_settled, s.plan)
            return Permissions(_dedupe(pub), listen, allow_responses=True)
        case "approvals":
            decisions = approvals_subject(s)
            return Permissions(_dedupe(_actor_publish(role, names)), (inbox, s.ping, decisions), allow_responses=True)
        case "budget":
            ledger, kv = names.ledger, f"KV_{names.cache_bucket}"
            pub = [
                s.ledger,
                f"$JS.API.STREAM.CREATE.{ledger}",  # its own streams: created if missing, never edited
                f"$JS.API.STREAM.INFO.{ledger}",
                f"$JS.API.STREAM.MSG.GET.{ledger}",
                f"$JS.API.DIRECT.GET.{ledger}",
                f"$JS.API.DIRECT.GET.{ledger}.>",
                f"$JS.API.CONSUMER.CREATE.{ledger}",
                f"$JS.FC.{ledger}.>",
                f"$JS.API.STREAM.CREATE.{kv}",
                f"$JS.API.STREAM.INFO.{kv}",
                f"$JS.API.STREAM.MSG.GET.{kv}",
                f"$JS.API.DIRECT.GET.{kv}",
                f"$JS.API.DIRECT.GET.{kv}.>",
                f"$KV.{names.cache_bucket}.>",
                "$JS.API.INFO",
            ]
            return Permissions(_dedupe(pub), (inbox, s.ping, s.budget, s.budget_settle), allow_responses=True)
        case "node":
            parts = [permissions(part, names) for part in (*ACTOR_ROLES, "intake", "budget", "approvals")]
            return Permissions(
                _dedupe(x for p in parts for x in p.publish or ()),
                _dedupe(x for p in parts for x in p.subscribe or ()),
                allow_responses=True,
            )
        case "client" | "approver":
            stream = names.stream  # the mirror in READERS
            reads = [
                s.requests,
                s.plan,  # previews of a request's flow and path (nothing runs)
                "$JS.API.STREAM.NAMES",
                *_event_reader(stream),
                f"$JS.API.CONSUMER.CREATE.{stream}.*.{s.events}",  # nats.js with a filter string
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",  # nats.js consume()
                f"$JS.API.CONSUMER.DELETE.{stream}.*",
                *_object_reader(names.outputs_bucket),  # the READERS mirror of the outputs' object store
            ]
            if role == "approver":
                reads.append(approvals_subject(s))
            return Permissions(_dedupe(reads), (inbox,))
    raise AuthConfigError(f"unknown role {role!r}; known roles: {', '.join(ROLES)}")


def approvals_subject(subjects: Subjects) -> str:
    """Where approvers send their decisions (the approvals service answers there)."""
    return subjects.approvals


# --- keys, JWTs, creds ----------------------------------------------------------------------------------


def _new_seed(prefix: int) -> bytes:
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    return seed


def _public(seed: bytes) -> str:
    kp = nkeys.from_seed(bytearray(seed))
    pub: str = kp.public_key.decode()
    return pub


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer_seed: bytes, subject: str, name: str, nats: dict[str, Any], iat: int) -> str:
    claims: dict[str, Any] = {"iat": iat, "iss": _public(issuer_seed), "name": name, "sub": subject, "nats": nats}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(_JWT_HEADER).encode()) + "." + _b64(json.dumps(claims).encode())
    sig = nkeys.from_seed(bytearray(issuer_seed)).sign(body.encode())
    return body + "." + _b64(sig)


def _creds(jwt: str, seed: bytes) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600 (created so from the start; replaced atomically)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _seed_file(path: Path, prefix: int) -> bytes:
    """The seed in ``path``, created (0600) when missing."""
    if path.exists():
        seed = path.read_bytes().strip()
        try:
            nkeys.from_seed(bytearray(seed))
        except Exception as exc:
            raise AuthConfigError(f"{path} does not hold an nkey seed ({exc}); delete it to make a new one") from None
        return seed
    seed = _new_seed(prefix)
    _write_private(path, seed.decode() + "\n")
    return seed


def _creds_seed(path: Path) -> bytes | None:
    """The user seed in an existing creds file, None when there is no file."""
    if not path.exists():
        return None
    seed = creds_seed(path.read_text())
    if seed is not None:
        return seed
    raise AuthConfigError(f"{path} is not a NATS creds file (no user seed); delete it to make a new one")


@dataclass(frozen=True, slots=True)
class Identity:
    """A role's credentials file and public key."""

    role: str
    creds: Path
    public_key: str


def creds_path(auth_dir: Path, role: str) -> Path:
    return auth_dir / f"{role}.creds"


def _account_claims(exports: list[dict[str, Any]], imports: list[dict[str, Any]]) -> dict[str, Any]:
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": dict(_UNLIMITED)}
    if exports:
        nats["exports"] = exports
    if imports:
        nats["imports"] = imports
    return nats


def ensure_auth(auth_dir: Path, names: AuthNames) -> dict[str, Identity]:
    """Make ``auth_dir`` hold every role's credentials and the server's ``auth.conf`` for ``names``.

    Keys are created once and kept; the JWTs are minted again when ``names`` or the event types each
    role emits change (or a file is missing). Files holding a seed are mode 0600. Returns the identities by role.
    """
    auth_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = auth_dir / "keys"
    keys.mkdir(exist_ok=True, mode=0o700)
    names_file = auth_dir / "names.json"
    operator = _seed_file(keys / "operator.nk", nkeys.PREFIX_BYTE_OPERATOR)
    accounts = {
        a: _seed_file(keys / f"{a.lower()}.nk", nkeys.PREFIX_BYTE_ACCOUNT)
        for a in (SYSTEM_ACCOUNT, CADRE_ACCOUNT, READERS_ACCOUNT)
    }
    seeds: dict[str, bytes] = {}
    for role in ROLES:
        seeds[role] = _creds_seed(creds_path(auth_dir, role)) or _new_seed(nkeys.PREFIX_BYTE_USER)
    conf = auth_dir / "auth.conf"
    # What each role may publish is minted into its JWT: a version of cadre with new event types
    # mints again, or an upgraded deployment's actors could not publish them. The same for a new
    # subject a role listens on (``<prefix>.plan``): the subscribe lists are part of what is compared.
    current = {
        **names.to_json(),
        "emits": {role: list(types) for role, types in (*EMITS.items(), ("*", RUNTIME_EMITS))},
        "listens": {role: list(permissions(role, names).subscribe or ()) for role in CADRE_ROLES},
    }
    try:
        recorded = json.loads(names_file.read_text())
    except (OSError, ValueError):
        recorded = None
    complete = conf.exists() and all(creds_path(auth_dir, r).exists() for r in ROLES)
    if recorded != current or not complete:
        _mint(auth_dir, names, operator, accounts, seeds)
        names_file.write_text(json.dumps(current) + "\n")
    identities = {r: Identity(r, creds_path(auth_dir, r), _public(seeds[r])) for r in ROLES}
    _write_keyring(auth_dir / "keyring.json", identities)
    return identities


def _write_keyring(path: Path, identities: Mapping[str, Identity]) -> None:
    """The roles' keys as they are now, and the named approvers added before (kept)."""
    roles = keyring_of(identities).file
    added: tuple[KeyEntry, ...] = ()
    if path.exists():
        added = tuple(e for e in load_keyring(path).file.keys if e.role == "approver" and e.name != "approver")
    wanted = Keyring(KeyringFile(keys=(*roles.keys, *added), emits=roles.emits)).to_json()
    if not path.exists() or path.read_bytes() != wanted:
        path.write_bytes(wanted)


def keyring_of(identities: Mapping[str, Identity]) -> Keyring:
    """The keyring of a deployment: the public key of every role that signs events or decisions."""
    return Keyring.of(
        (i.public_key, role, role) for role, i in identities.items() if role in SIGNING_ROLES or role == "approver"
    )


def _write_user(path: Path, role: str, names: AuthNames, account: bytes, seed: bytes, iat: int) -> int:
    """A user's creds file: its JWT with ``role``'s permissions, issued by its account's key directly
    (no signing key: iss = the account), and its seed."""
    nats: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
    nats.update(permissions(role, names).claims())
    nats["issuer_account"] = _public(account)
    jwt = _jwt(account, _public(seed), role, nats, iat)
    _write_private(path, _creds(jwt, seed))
    return len(jwt)


def _mint(
    auth_dir: Path, names: AuthNames, operator: bytes, accounts: dict[str, bytes], seeds: dict[str, bytes]
) -> None:
    iat = int(time.time())
    pub = {a: _public(s) for a, s in accounts.items()}
    s = names.subjects
    shared = [s.requests, approvals_subject(s)]  # the service learns who asks
    cadre_exports: list[dict[str, Any]] = [{"name": subj, "subject": subj, "type": "service"} for subj in shared]
    readers_imports: list[dict[str, Any]] = [
        {"name": subj, "subject": subj, "account": pub[CADRE_ACCOUNT], "type": "service", "share": True}
        for subj in shared
    ]
    # What each READERS mirror (the event stream, the outputs' object store) needs of CADRE: create
    # its consumer, answer flow control, receive deliveries.
    for stream in (names.stream, f"OBJ_{names.outputs_bucket}"):
        api = [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>"]
        fc = f"$JS.FC.{stream}.>"
        deliver = f"deliver.readers.{stream}.>"
        cadre_exports += [
            *({"name": subj, "subject": subj, "type": "service"} for subj in [*api, fc]),
            {"name": deliver, "subject": deliver, "type": "stream"},
        ]
        readers_imports += [
            *(
                {
                    "name": subj,
                    "subject": subj,
                    "local_subject": "JS.CADRE.API" + subj.removeprefix("$JS.API"),
                    "account": pub[CADRE_ACCOUNT],
                    "type": "service",
                }
                for subj in api
            ),
            {"name": fc, "subject": fc, "account": pub[CADRE_ACCOUNT], "type": "service"},
            {"name": deliver, "subject": deliver, "account": pub[CADRE_ACCOUNT], "type": "stream"},
        ]
    account_jwts = {
        SYSTEM_ACCOUNT: _jwt(operator, pub[SYSTEM_ACCOUNT], SYSTEM_ACCOUNT, {"type": "account", "version": 2}, iat),
        CADRE_ACCOUNT: _jwt(operator, pub[CADRE_ACCOUNT], CADRE_ACCOUNT, _account_claims(cadre_exports, []), iat),
        READERS_ACCOUNT: _jwt(
            operator, pub[READERS_ACCOUNT], READERS_ACCOUNT, _account_claims([], readers_imports), iat
        ),
    }
    largest = 0
    for role in ROLES:
        account = CADRE_ACCOUNT if role in CADRE_ROLES else READERS_ACCOUNT
        written = _write_user(creds_path(auth_dir, role), role, names, accounts[account], seeds[role], iat)
        largest = max(largest, written)
    op_pub = _public(operator)
    op_jwt = _jwt(operator, op_pub, "cadre", {"type": "operator", "version": 2}, iat)
    preload = "\n".join(f"  {pub[a]}: {jwt}" for a, jwt in account_jwts.items())
    _write_private(
        auth_dir / "auth.conf",
        "# cadre's NATS authorization, generated by `cadre auth init`: operator mode, accounts in memory.\n"
        f"# Accounts: {CADRE_ACCOUNT} = {pub[CADRE_ACCOUNT]}, {READERS_ACCOUNT} = {pub[READERS_ACCOUNT]}.\n"
        "# It holds public keys and JWTs only; the seeds are in the .creds files and keys/ next to it.\n"
        f"operator: {op_jwt}\n"
        f"system_account: {pub[SYSTEM_ACCOUNT]}\n"
        "# A client's CONNECT line carries its JWT: the node role's (every actor role's permissions, and an\n"
        "# agent durable per agent pool, each durable one more per partition) outgrows the default limit of 4 KB.\n"
        f"max_control_line: {control_line(largest)}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"{preload}\n"
        "}\n",
    )


MAX_CONTROL_LINE = 32_768
"""The server's limit on a protocol line (``auth.conf``): room for the largest role's JWT."""


def control_line(largest_jwt: int) -> int:
    """``max_control_line`` for users whose largest JWT has ``largest_jwt`` characters: at least
    :data:`MAX_CONTROL_LINE`, and room for that JWT and the rest of a CONNECT line (many partitions
    make the node role's JWT longer: a durable per partition per kind)."""
    return max(MAX_CONTROL_LINE, -(-(largest_jwt + 8192) // 4096) * 4096)


def role_of_creds(path: Path) -> str | None:
    """The role a cadre creds file was minted for (its JWT's ``name``); None for other creds."""
    try:
        text = path.read_text()
    except OSError:
        return None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "BEGIN NATS USER JWT" in line and i + 1 < len(lines):
            parts = lines[i + 1].strip().split(".")
            if len(parts) != 3:
                return None
            try:
                claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            except (ValueError, binascii.Error):
                return None
            name = claims.get("name") if isinstance(claims, dict) else None
            return name if isinstance(name, str) and name in ROLES else None
    return None


_APPROVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def add_approver(auth_dir: Path, names: AuthNames, name: str) -> Identity:
    """A named approver of the deployment in ``auth_dir``: its creds file
    (``approvers/<name>.creds``, a ``READERS`` user with the approver's permissions, minted with the
    account key: the server config does not change) and its key in ``keyring.json``, under
    ``name``, which is what approval events and the approvers-per-tool policy name. Idempotent."""
    if not _APPROVER_NAME.fullmatch(name):
        raise AuthConfigError(
            f"approver name {name!r} is not valid: letters, digits and _ . @ - (at most 64), starting with "
            "a letter or digit"
        )
    keyring_file = auth_dir / "keyring.json"
    readers_key = auth_dir / "keys" / f"{READERS_ACCOUNT.lower()}.nk"
    if not keyring_file.exists() or not readers_key.exists():
        raise AuthConfigError(f"{auth_dir} holds no deployment: make one first with `cadre auth init {auth_dir}`")
    folder = auth_dir / "approvers"
    folder.mkdir(exist_ok=True, mode=0o700)
    path = folder / f"{name}.creds"
    seed = _creds_seed(path) or _new_seed(nkeys.PREFIX_BYTE_USER)
    account = _seed_file(readers_key, nkeys.PREFIX_BYTE_ACCOUNT)
    _write_user(path, "approver", names, account, seed, int(time.time()))
    keyring = load_keyring(keyring_file)
    key = _public(seed)
    entries = [e for e in keyring.file.keys if e.key != key and not (e.role == "approver" and e.name == name)]
    entries.append(KeyEntry(key=key, role="approver", name=name))
    updated = KeyringFile(keys=tuple(entries), emits=keyring.file.emits)
    keyring_file.write_bytes(Keyring(updated).to_json())
    return Identity("approver", path, key)
