"""Credentials of a cadre process, the bootstrap of a deployment's streams, and ``cadre auth``.

Which credentials a process uses (see ``bus/auth.py`` for the roles):

* ``--creds FILE`` / ``CADRE_NATS_CREDS``, when given, for everything the process does;
* else, on the embedded server of the data dir (no ``--nats``, or ``--nats`` naming that server), the
  role's file in ``<data_dir>/auth/``, generated on the server's first start: a local user gives none;
* else none (a server without authorization).

``cadre auth init DIR`` makes a deployment's files: every role's ``.creds`` and the server's
``auth.conf`` (included by ``deploy/nats/node.conf``). ``cadre auth bootstrap --auth-dir DIR`` creates
the streams and the readers' mirror with the ``admin`` and ``mirror`` credentials, once per deployment.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from cadre.bus.auth import ROLES, add_approver, creds_path, ensure_auth, role_of_creds
from cadre.bus.connection import connect
from cadre.bus.embedded import find_running
from cadre.bus.errors import AuthConfigError, StreamConfigError
from cadre.bus.requests_stream import ensure_intake_streams
from cadre.bus.stream import StreamSpec, ensure_stream
from cadre.settings import Settings
from cadre.store.objects import OutputObjects

EXIT_OK = 0
_MIRROR_API = "JS.CADRE.API"  # where READERS imports CADRE's consumer API (bus/auth.py)
_STREAM_IN_USE = 10058


def local_auth(settings: Settings, url: str | None) -> Path | None:
    """The data dir's auth directory when ``url`` is its embedded server (or None: to be started)."""
    if settings.nats_creds is not None:
        return None
    if url is None:
        return settings.auth_dir
    running = find_running(settings.data_dir) if (settings.auth_dir / "admin.creds").exists() else None
    return settings.auth_dir if running is not None and running.url == url else None


def creds_for(settings: Settings, role: str, auth_dir: Path | None) -> Path | None:
    """The creds file a process acting as ``role`` connects with (module docstring)."""
    if settings.nats_creds is not None:
        return settings.nats_creds
    if auth_dir is not None:
        return creds_path(auth_dir, role)
    return None


def prepare_embedded(settings: Settings) -> Path:
    """Generate (first start) or refresh the embedded server's credentials; the config it reads."""
    auth_dir = settings.auth_dir
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_auth(auth_dir, settings.auth_names())
    return auth_dir / "auth.conf"


async def bootstrap(settings: Settings, url: str, auth_dir: Path) -> None:
    """Create (or bring up to date) the event stream and the intake's requests stream and bucket as
    ``admin``, and the readers' mirror of the event stream as
    ``mirror``. Idempotent; every process of the embedded server runs it at start-up."""
    admin = await connect(settings.connect_options(url, "cadre-bootstrap", creds_path(auth_dir, "admin")))
    try:
        js = admin.jetstream(timeout=settings.request_timeout_s)
        await ensure_stream(js, settings.stream())
        await ensure_intake_streams(js, settings.intake())
        await ensure_outputs(OutputObjects(js, settings.outputs_bucket), settings)
    finally:
        await admin.close()
    mirror = await connect(settings.connect_options(url, "cadre-bootstrap", creds_path(auth_dir, "mirror")))
    try:
        await ensure_mirror(mirror, settings)
    finally:
        await mirror.close()


async def ensure_outputs(objects: OutputObjects, settings: Settings) -> None:
    """The object store of outputs stored by reference, with the event stream's storage, replicas and age."""
    spec = settings.stream()
    await objects.ensure(memory=spec.storage == "memory", replicas=spec.replicas, max_age=spec.max_age)


async def ensure_mirror(nc: NATS, settings: Settings) -> None:
    """The READERS account's mirrors (same names, same sequences): of the event stream, and of the
    object store of outputs stored by reference, so a reader resolves them as the actors do."""
    spec = settings.stream()
    js = nc.jetstream(timeout=settings.request_timeout_s)
    await _mirror(js, spec.name, spec, "the event stream")
    await _mirror(js, f"OBJ_{settings.outputs_bucket}", spec, "the outputs' object store")


async def _mirror(js: JetStreamContext, name: str, spec: StreamSpec, what: str) -> None:
    cfg = api.StreamConfig(
        name=name,
        storage=api.StorageType.MEMORY if spec.storage == "memory" else api.StorageType.FILE,
        num_replicas=spec.replicas,
        max_age=spec.max_age,
        max_bytes=spec.max_bytes if name == spec.name else -1,
        allow_direct=True,
        mirror=api.StreamSource(
            name=name,
            external=api.ExternalStream(api=_MIRROR_API, deliver=f"deliver.readers.{name}"),
        ),
    )
    with contextlib.suppress(NotFoundError):
        info = await js.stream_info(name)
        if info.config.mirror is not None:
            return
        raise StreamConfigError(
            f"the readers' account holds a stream {name!r} that is not a mirror of {what}; "
            "delete it (as the mirror user) and start again"
        )
    try:
        await js.add_stream(cfg)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise StreamConfigError(
                f"could not create the readers' mirror of {name!r}: {exc.description} (err_code {exc.err_code})"
            ) from None


def acting_role(settings: Settings, role: str) -> str | None:
    """The role a process really has: that of ``--creds`` when given (None if not a cadre file)."""
    if settings.nats_creds is not None:
        return role_of_creds(settings.nats_creds)
    return role


# --- cadre auth ------------------------------------------------------------------------------------------


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    auth = sub.add_parser("auth", help="NATS credentials: make a deployment's, create its streams")
    what = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    init = what.add_parser("init", help="write every role's .creds and the server's auth.conf into DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    boot = what.add_parser(
        "bootstrap", parents=parents, help="create the streams and the readers' mirror (admin and mirror creds)"
    )
    boot.add_argument("--auth-dir", type=Path, metavar="DIR", required=True, help="what `cadre auth init` wrote")
    add = what.add_parser(
        "add-approver", help="a named approver: its creds file and its key in the keyring (no server restart)"
    )
    add.add_argument("name", help="the name approval events and CADRE_APPROVERS use")
    add.add_argument(
        "--auth-dir", type=Path, metavar="DIR", help="what `cadre auth init` wrote (default: the data dir's)"
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.auth_command == "init":
        identities = ensure_auth(args.dir, settings.auth_names())
        print(f"cadre: credentials of {len(identities)} roles and the server's auth.conf are in {args.dir}")
        print(f"  server:  include {args.dir / 'auth.conf'} in the nats-server config (deploy/nats/node.conf)")
        print(f"  streams: cadre auth bootstrap --auth-dir {args.dir} --nats URL")
        print("  actors:  CADRE_NATS_CREDS=<dir>/<kind>.creds cadre actor <kind>; clients: client.creds")
        return EXIT_OK
    if args.auth_command == "add-approver":
        auth_dir = args.auth_dir if args.auth_dir is not None else settings.auth_dir
        identity = add_approver(auth_dir, settings.auth_names(), args.name)
        print(f"cadre: approver {args.name} ({identity.public_key}) added to {auth_dir / 'keyring.json'}")
        print(f"  give them {identity.creds} (secret): cadre approve WF STEP --creds {identity.creds}")
        print("  a running approvals service reads the keyring again on its next decision")
        return EXIT_OK
    auth_dir = args.auth_dir
    for role in ("admin", "mirror"):
        if not creds_path(auth_dir, role).is_file():
            raise AuthConfigError(
                f"{creds_path(auth_dir, role)} is missing; make the deployment's credentials with "
                f"`cadre auth init {auth_dir}`"
            )
    if settings.nats_url is None:
        raise AuthConfigError("cadre auth bootstrap needs the deployment's server: pass --nats URL (or CADRE_NATS_URL)")
    await bootstrap(settings, settings.nats_url, auth_dir)
    print(f"cadre: stream {settings.stream_name} and its readers' mirror are ready at {settings.nats_url}")
    return EXIT_OK


__all__ = [
    "ROLES",
    "acting_role",
    "bootstrap",
    "creds_for",
    "ensure_mirror",
    "ensure_outputs",
    "local_auth",
    "prepare_embedded",
]
