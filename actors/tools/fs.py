"""fs.read and fs.write: text files confined to the workspace; writes exactly once per step.

Confinement: a path is joined to the workspace and resolved (following every symlink that
exists); the result must lie inside the workspace and outside cadre's marker folder. The
I/O then uses the resolved path, opened one folder at a time from the workspace with
``O_NOFOLLOW`` (``dir_fd``-relative), so a symlink swapped in after the check is refused,
not followed. The opened file itself is checked on its descriptor (``fstat``): it must be
a regular file with one hard link. A second name could lie outside the workspace (a hard
link to ``/etc/passwd`` made inside it reads as a workspace file), so a file with more
than one is refused (``hard_linked``) before a byte is read or written.

Exactly once: a write is keyed by the step id (``ToolCall.idempotency_key``) and recorded in
``<workspace>/.cadre-idempotency/<sha256(key)>.json``, a marker that is only ever replaced
atomically (tmp file, fsync, ``os.replace``, fsync of the folder):

1. a ``done`` marker: the write happened; return its result with ``already_done=True``.
2. no marker: record a ``pending`` marker (the file's size before, the content's sha256 and
   length), write, then record ``done``.
3. a ``pending`` marker (a crash between 2's steps): overwrite is simply redone (replacing a
   file with the same bytes is idempotent). Append checks whether the file is exactly
   ``size_before + length`` bytes ending in the content: then the append had landed and only
   ``done`` is recorded; otherwise the file is cut back to ``size_before`` and appended again.

Undo records (what fs.restore puts back): before its first write a key records what the file held
(``<sha256(key)>.undo.json``): nothing (it did not exist), its content inline (base64) up to
``ToolConfig.undo_inline_max_bytes``, above that by reference (``content_ref``, the bytes kept as
``<sha256(content)>.undone`` beside it, checked against the digest when restored), and above the
hard cap (``ToolConfig.max_output_bytes``) not at all: a ``compensable`` call (its workflow asked for
compensation) is then refused before anything changes (``undo_too_large``), and any other call
writes and records ``too_large``, which fs.restore reports instead of guessing.

One lock file (``flock``) serialises writes to a workspace, across threads and processes,
so a redelivered step running beside the original cannot interleave with it.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from cadre.actors.tools.base import ToolCall, ToolConfig, ToolError
from cadre.planner.builtin_tools import (
    CompensationInput,
    FsReadInput,
    FsReadOutput,
    FsRestoreOutput,
    FsWriteInput,
    FsWriteOutput,
)
from cadre.planner.safety import MARKER_DIR, workspace_path_problem


def resolve_in_workspace(tool: str, workspace: Path, path: str) -> tuple[Path, str]:
    """The resolved absolute path of ``path`` and its workspace-relative POSIX form.

    Raises ToolError ``outside_workspace`` for anything that resolves outside the workspace
    (``..``, absolute paths elsewhere, symlinks leading out), ``reserved_path`` for the
    marker folder, ``not_a_file`` for the workspace itself.
    """
    ws = workspace.resolve()
    if "\x00" in path:
        raise ToolError(tool, "invalid_input", f"path {path!r} contains a NUL character")
    try:
        target = (ws / path).resolve(strict=False)
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ToolError(tool, "invalid_input", f"path {path!r} cannot be resolved: {e}") from e
    if not target.is_relative_to(ws):
        raise ToolError(
            tool,
            "outside_workspace",
            f"path {path!r} is outside the workspace {str(ws)!r} (it resolves to {str(target)!r}); "
            "use a path inside the workspace",
        )
    rel = target.relative_to(ws)
    if rel.parts and rel.parts[0] == MARKER_DIR:
        raise ToolError(tool, "reserved_path", f"path {path!r} is in {MARKER_DIR}/, which cadre keeps for itself")
    if not rel.parts:
        raise ToolError(tool, "not_a_file", f"path {path!r} is the workspace folder itself, not a file")
    problem = workspace_path_problem(path)  # the validator's rule (e.g. absolute paths), on top of the files'
    if problem is not None:
        raise ToolError(tool, *problem)
    return target, rel.as_posix()


def _os_failure(tool: str, rel: str, err: OSError) -> ToolError:
    if isinstance(err, FileNotFoundError):
        return ToolError(tool, "not_found", f"file {rel!r} does not exist in the workspace")
    if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink that was not there when the path was checked
        return _swapped(tool, rel)
    if isinstance(err, IsADirectoryError | NotADirectoryError | FileExistsError):
        return ToolError(tool, "not_a_file", f"path {rel!r} is (or runs through) something that is not a file")
    return ToolError(tool, "io_error", f"{rel!r}: {err.strerror or err}")


def _swapped(tool: str, rel: str) -> ToolError:
    return ToolError(
        tool,
        "outside_workspace",
        f"path {rel!r} became a symbolic link while it was being opened; it is not followed (it may lead "
        "out of the workspace)",
    )


# --- opening beneath the workspace -----------------------------------------------------------


def _open_dir(tool: str, rel: str, workspace: Path, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of the folder ``workspace/parts…``, opened one component at a time without
    following symlinks; ``create`` makes missing folders. The caller closes it."""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(part, fd):
                    raise _swapped(tool, rel) from e
                raise
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


@contextmanager
def _dir_fd(tool: str, rel: str, workspace: Path, parts: Sequence[str], *, create: bool) -> Iterator[int]:
    fd = _open_dir(tool, rel, workspace, parts, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def _check_file(tool: str, rel: str, fd: int) -> os.stat_result:
    """The opened file's status, if it is a regular file with a single name; else ToolError."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ToolError(tool, "not_a_file", f"path {rel!r} is (or runs through) something that is not a file")
    if st.st_nlink > 1:
        raise ToolError(
            tool,
            "hard_linked",
            f"file {rel!r} has {st.st_nlink} hard links; {tool} refuses a file with more than one name, "
            "since another name may lie outside the workspace",
        )
    return st


def _open_file(tool: str, rel: str, dir_fd: int, name: str, flags: int, mode: int = 0o666) -> int:
    """``name`` in ``dir_fd`` opened with ``flags`` (never following a symlink) and checked by
    :func:`_check_file`; the caller closes it."""
    fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        _check_file(tool, rel, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the tools -------------------------------------------------------------------------------


async def fs_read(inputs: FsReadInput, config: ToolConfig, call: ToolCall) -> FsReadOutput:
    """Read at most ``max_bytes`` of a workspace file as UTF-8 text."""
    _, rel = resolve_in_workspace("fs.read", config.workspace, inputs.path)
    *folders, name = rel.split("/")

    def read() -> FsReadOutput:
        try:
            with _dir_fd("fs.read", rel, config.workspace.resolve(), folders, create=False) as dfd:
                # O_NONBLOCK: opening a FIFO must not hang; _check_file refuses it right after.
                fd = _open_file("fs.read", rel, dfd, name, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    data = _read_all(fd, inputs.max_bytes + 1)
                finally:
                    os.close(fd)
        except OSError as e:
            raise _os_failure("fs.read", rel, e) from e
        kept = data[: inputs.max_bytes]
        return FsReadOutput(
            path=rel, content=kept.decode("utf-8", "replace"), bytes=len(kept), truncated=len(data) > len(kept)
        )

    return await asyncio.to_thread(read)


async def fs_write(inputs: FsWriteInput, config: ToolConfig, call: ToolCall) -> FsWriteOutput:
    """Write or append a workspace file, exactly once per ``call.idempotency_key``."""
    _, rel = resolve_in_workspace("fs.write", config.workspace, inputs.path)
    writer = _Writer(config.workspace.resolve(), rel, inputs, call.idempotency_key)
    writer.undo_inline, writer.undo_cap, writer.compensable = (
        config.undo_inline_max_bytes,
        config.max_output_bytes,
        call.compensable,
    )
    return await asyncio.to_thread(writer.run)


# --- the exactly-once writer ----------------------------------------------------------------


def _replace_atomically(dir_fd: int, name: str, tmp: str, data: bytes) -> None:
    """``name`` in ``dir_fd`` replaced by ``data``: written to ``tmp`` (created afresh, never
    through a symlink), fsynced, renamed over ``name``, and the folder fsynced."""
    with suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # a leftover of a crash (a symlink is removed, not followed)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


@contextmanager
def _locked(dir_fd: int, name: str) -> Iterator[None]:
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class _Writer:
    """One fs.write call: the marker protocol of the module docstring, run in a worker thread.

    ``markers_fd`` and ``dir_fd`` (the marker folder, the target's folder) are set while it runs;
    every file operation goes through them.
    """

    tool = "fs.write"

    def __init__(self, workspace: Path, rel: str, inputs: FsWriteInput, key: str) -> None:
        self.workspace = workspace
        self.rel = rel
        *self.folders, self.name = rel.split("/")
        self.mode = inputs.mode
        self.data = inputs.content.encode("utf-8")
        self.key = key
        key_hash = hashlib.sha256(key.encode("utf-8")).hexdigest()
        self.marker = workspace / MARKER_DIR / f"{key_hash}.json"
        self.tmp = f".{self.name}.{key_hash[:16]}.cadre-tmp"
        self.markers_fd = -1
        self.dir_fd = -1
        self.undo_inline = 256 * 1024  # the undo record's bounds (module docstring)
        self.undo_cap: int | None = None
        self.compensable = False
        # What this key promises to write; a second call with the same key must promise the same.
        self.intent = {
            "path": rel,
            "mode": self.mode,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "length": len(self.data),
        }

    def run(self) -> FsWriteOutput:
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
            with _dir_fd(self.tool, MARKER_DIR, self.workspace, (MARKER_DIR,), create=True) as mfd:
                self.markers_fd = mfd
                with _locked(mfd, ".lock"):
                    return self._run_locked()
        except OSError as e:
            raise _os_failure(self.tool, self.rel, e) from e

    def _run_locked(self) -> FsWriteOutput:
        marker = self._load_marker()
        if marker is not None:
            if marker.get("intent") != self.intent:
                raise ToolError(
                    self.tool,
                    "idempotency_conflict",
                    f"idempotency key {self.key!r} already wrote {marker.get('intent')}; "
                    f"this call asks for {self.intent}; a step id must name one write",
                )
            if marker["state"] == "done":
                return FsWriteOutput(path=self.rel, bytes_written=int(marker["bytes_written"]), already_done=True)
        with _dir_fd(self.tool, self.rel, self.workspace, self.folders, create=True) as dfd:
            self.dir_fd = dfd
            if self.mode == "overwrite":
                return self._overwrite(marker)
            return self._append(marker)

    # The steps ---------------------------------------------------------------------------

    def _open_existing(self, flags: int) -> int | None:
        """The target opened and checked (a regular file with one name), or None if it does not exist."""
        try:
            return _open_file(self.tool, self.rel, self.dir_fd, self.name, flags)
        except FileNotFoundError:
            return None

    def _overwrite(self, marker: dict[str, Any] | None) -> FsWriteOutput:
        existing = self._open_existing(os.O_RDONLY | os.O_NONBLOCK)  # refused here if hard-linked
        try:
            if marker is None:
                self._save_undo(existing)
        finally:
            if existing is not None:
                os.close(existing)
        if marker is None:
            self._save_marker("pending", size_before=None)
        # A rename replaces the name, never writes through it: a link planted after the check is cut, not written.
        _replace_atomically(self.dir_fd, self.name, self.tmp, self.data)
        self._save_marker("done", size_before=None)
        return FsWriteOutput(path=self.rel, bytes_written=len(self.data), already_done=False)

    def _append(self, marker: dict[str, Any] | None) -> FsWriteOutput:
        fd = self._open_existing(os.O_RDWR | os.O_APPEND)  # refused here if hard-linked, before any write
        try:
            size = 0 if fd is None else os.fstat(fd).st_size
            if marker is None:
                self._save_undo(fd)
                size_before = size
                self._save_marker("pending", size_before=size_before)
            else:
                size_before = int(marker["size_before"])
                if fd is not None and self._append_landed(fd, size, size_before):
                    self._save_marker("done", size_before=size_before)
                    return FsWriteOutput(path=self.rel, bytes_written=len(self.data), already_done=True)
                self._cut_back(fd, size, size_before)
            created = fd is None
            if fd is None:  # checked again on the new descriptor: a name planted meanwhile is refused
                fd = _open_file(self.tool, self.rel, self.dir_fd, self.name, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            _write_all(fd, self.data)
            os.fsync(fd)
            if created:
                os.fsync(self.dir_fd)
        finally:
            if fd is not None:
                os.close(fd)
        self._save_marker("done", size_before=size_before)
        return FsWriteOutput(path=self.rel, bytes_written=len(self.data), already_done=False)

    def _append_landed(self, fd: int, size: int, size_before: int) -> bool:
        if size != size_before + len(self.data):
            return False
        return os.pread(fd, len(self.data), size_before) == self.data

    def _cut_back(self, fd: int | None, size: int, size_before: int) -> None:
        if size < size_before:
            raise ToolError(
                self.tool,
                "file_changed",
                f"file {self.rel!r} shrank to {size} bytes below the {size_before} it had before this step's "
                "interrupted append; it was changed outside cadre, so the append cannot be repaired safely",
            )
        if fd is not None and size > size_before:  # a partial (or foreign) tail after an interrupted append
            os.ftruncate(fd, size_before)

    # What the write replaces (for fs.restore) -------------------------------------------

    def _save_undo(self, fd: int | None) -> None:
        """Record what the file holds before this key's write (or that it does not exist), once,
        before the write starts: ``<markers>/<sha256(key)>.undo.json``, which fs.restore reads."""
        name = self.marker.name.removesuffix(".json") + ".undo.json"
        with suppress(FileNotFoundError):
            os.stat(name, dir_fd=self.markers_fd, follow_symlinks=False)
            return  # recorded by an earlier, interrupted run of this key: the file has not changed since
        body: dict[str, Any] = {"v": 1, "key": self.key, "path": self.rel, "existed": fd is not None}
        if fd is not None:
            self._keep_replaced(fd, body)
        _replace_atomically(self.markers_fd, name, name + ".tmp", json.dumps(body, sort_keys=True).encode())

    def _keep_replaced(self, fd: int, body: dict[str, Any]) -> None:
        """Put what the file holds into the undo record ``body``, within the bounds (module docstring)."""
        size = os.fstat(fd).st_size
        if self.undo_cap is not None and size > self.undo_cap:
            if self.compensable:
                raise ToolError(
                    self.tool,
                    "undo_too_large",
                    f"file {self.rel!r} holds {size} bytes, above the {self.undo_cap}-byte cap on what a "
                    "compensation may put back; the workflow compensates when it fails, so this write, which "
                    "could not be undone, is refused before anything changed (write another file, or raise "
                    "tool_output_max_bytes)",
                )
            body["too_large"] = size  # written, but what it replaced cannot be put back
        elif size > self.undo_inline:
            content = os.pread(fd, size, 0)
            digest = hashlib.sha256(content).hexdigest()
            _replace_atomically(self.markers_fd, f"{digest}.undone", f"{digest}.undone.tmp", content)
            body["content_ref"], body["bytes"] = f"sha256:{digest}", size
        else:
            body["content_b64"] = base64.b64encode(os.pread(fd, size, 0)).decode()

    # The marker --------------------------------------------------------------------------

    def _load_marker(self) -> dict[str, Any] | None:
        try:
            fd = os.open(self.marker.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.markers_fd)
        except FileNotFoundError:
            return None
        try:
            raw = _read_all(fd, 1 << 20)
        finally:
            os.close(fd)
        try:
            marker = json.loads(raw)
        except ValueError as e:
            raise ToolError(self.tool, "corrupt_marker", f"idempotency marker {str(self.marker)!r} is not JSON") from e
        if not isinstance(marker, dict) or marker.get("state") not in ("pending", "done"):
            raise ToolError(self.tool, "corrupt_marker", f"idempotency marker {str(self.marker)!r} is not a marker")
        return marker

    def _save_marker(self, state: str, *, size_before: int | None) -> None:
        body: dict[str, Any] = {"v": 1, "key": self.key, "state": state, "intent": self.intent}
        body["size_before"] = size_before
        if state == "done":
            body["bytes_written"] = len(self.data)
        name = self.marker.name
        _replace_atomically(self.markers_fd, name, name + ".tmp", json.dumps(body, sort_keys=True).encode())


# --- fs.restore: undo one fs.write ----------------------------------------------------------


async def fs_restore(inputs: CompensationInput, config: ToolConfig, call: ToolCall) -> FsRestoreOutput:
    """Put back what the fs.write of ``inputs.key`` replaced, exactly once per ``call.idempotency_key``."""
    restorer = _Restorer(config.workspace.resolve(), inputs.key, call.idempotency_key)
    return await asyncio.to_thread(restorer.run)


class _Restorer:
    """One fs.restore call: reads the write's undo record, puts the file back (an atomic replace, or
    an unlink of a file the write created) and records a ``done`` marker under its own key, all under
    the workspace's write lock. A rerun after a crash before the marker redoes the same restore
    (idempotent: compensations run one after another, so nothing changed the file meanwhile); after
    it, returns ``already_done``."""

    tool = "fs.restore"

    def __init__(self, workspace: Path, write_key: str, key: str) -> None:
        self.workspace = workspace
        self.write_key = write_key
        self.key = key
        self.undo = hashlib.sha256(write_key.encode("utf-8")).hexdigest() + ".undo.json"
        self.marker = hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json"

    def run(self) -> FsRestoreOutput:
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
            with (
                _dir_fd(self.tool, MARKER_DIR, self.workspace, (MARKER_DIR,), create=True) as mfd,
                _locked(mfd, ".lock"),
            ):
                return self._run_locked(mfd)
        except OSError as e:
            raise _os_failure(self.tool, self.write_key, e) from e

    def _read_json(self, mfd: int, name: str) -> dict[str, Any] | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=mfd)
        except FileNotFoundError:
            return None
        try:
            raw = _read_all(fd, 1 << 31)
        finally:
            os.close(fd)
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ToolError(self.tool, "corrupt_marker", f"{name} in {MARKER_DIR}/ is not JSON") from e
        if not isinstance(body, dict):
            raise ToolError(self.tool, "corrupt_marker", f"{name} in {MARKER_DIR}/ is not a record")
        return body

    def _content(self, mfd: int, undo: dict[str, Any]) -> bytes:
        """What the write replaced: inline, or by reference (checked against its digest)."""
        if "too_large" in undo:
            raise ToolError(
                self.tool,
                "undo_too_large",
                f"the write {self.write_key!r} replaced {undo['too_large']} bytes, above the cap on what a "
                "compensation may put back, so they were not recorded and cannot be restored",
            )
        ref = undo.get("content_ref")
        if not isinstance(ref, str):
            return base64.b64decode(str(undo.get("content_b64", "")))
        digest = ref.removeprefix("sha256:")
        try:
            fd = os.open(f"{digest}.undone", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=mfd)
        except FileNotFoundError:
            raise ToolError(
                self.tool, "corrupt_marker", f"the content {ref} the undo record names is missing"
            ) from None
        try:
            data = _read_all(fd, int(undo.get("bytes", 0)) + 1)
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ToolError(self.tool, "corrupt_marker", f"the content kept as {ref} does not match its digest")
        return data

    def _run_locked(self, mfd: int) -> FsRestoreOutput:
        done = self._read_json(mfd, self.marker)
        if done is not None:
            return FsRestoreOutput(path=str(done["path"]), restored=done["restored"], already_done=True)
        undo = self._read_json(mfd, self.undo)
        if undo is None:
            raise ToolError(
                self.tool,
                "nothing_to_undo",
                f"no record of what the write {self.write_key!r} replaced (it did not run, or ran before cadre "
                "recorded what fs.write replaces)",
            )
        _, rel = resolve_in_workspace(self.tool, self.workspace, str(undo["path"]))  # confined again
        *folders, name = rel.split("/")
        restored: Literal["content", "removed"]
        with _dir_fd(self.tool, rel, self.workspace, folders, create=True) as dfd:
            if undo.get("existed"):
                data = self._content(mfd, undo)
                tmp = f".{name}.{self.marker[:16]}.cadre-tmp"
                _replace_atomically(dfd, name, tmp, data)
                restored = "content"
            else:
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
                os.fsync(dfd)
                restored = "removed"
        body = {"v": 1, "key": self.key, "state": "done", "path": rel, "restored": restored}
        _replace_atomically(mfd, self.marker, self.marker + ".tmp", json.dumps(body, sort_keys=True).encode())
        return FsRestoreOutput(path=rel, restored=restored, already_done=False)
