"""fs.read and fs.write: text files confined to the workspace; writes exactly once per step.

Confinement: a path is joined to the workspace and resolved (following every symlink that
exists); the result must lie inside the workspace and outside cadre's marker folder. The
I/O then uses the resolved path.

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

One lock file (``flock``) serialises writes to a workspace, across threads and processes,
so a redelivered step running beside the original cannot interleave with it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors.tools.base import ToolCall, ToolConfig, ToolError
from planner.builtin_tools import FsReadInput, FsReadOutput, FsWriteInput, FsWriteOutput

MARKER_DIR = ".cadre-idempotency"


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
    return target, rel.as_posix()


def _os_failure(tool: str, rel: str, err: OSError) -> ToolError:
    if isinstance(err, FileNotFoundError):
        return ToolError(tool, "not_found", f"file {rel!r} does not exist in the workspace")
    if isinstance(err, IsADirectoryError | NotADirectoryError | FileExistsError):
        return ToolError(tool, "not_a_file", f"path {rel!r} is (or runs through) something that is not a file")
    return ToolError(tool, "io_error", f"{rel!r}: {err.strerror or err}")


async def fs_read(inputs: FsReadInput, config: ToolConfig, call: ToolCall) -> FsReadOutput:
    """Read at most ``max_bytes`` of a workspace file as UTF-8 text."""
    target, rel = resolve_in_workspace("fs.read", config.workspace, inputs.path)

    def read() -> FsReadOutput:
        try:
            with target.open("rb") as f:
                data = f.read(inputs.max_bytes + 1)
        except OSError as e:
            raise _os_failure("fs.read", rel, e) from e
        kept = data[: inputs.max_bytes]
        return FsReadOutput(
            path=rel, content=kept.decode("utf-8", "replace"), bytes=len(kept), truncated=len(data) > len(kept)
        )

    return await asyncio.to_thread(read)


async def fs_write(inputs: FsWriteInput, config: ToolConfig, call: ToolCall) -> FsWriteOutput:
    """Write or append a workspace file, exactly once per ``call.idempotency_key``."""
    target, rel = resolve_in_workspace("fs.write", config.workspace, inputs.path)
    writer = _Writer(config.workspace.resolve(), target, rel, inputs, call.idempotency_key)
    return await asyncio.to_thread(writer.run)


# --- the exactly-once writer ----------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(path: Path, tmp: Path, data: bytes) -> None:
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class _Writer:
    """One fs.write call: the marker protocol of the module docstring, run in a worker thread."""

    tool = "fs.write"

    def __init__(self, workspace: Path, target: Path, rel: str, inputs: FsWriteInput, key: str) -> None:
        self.target = target
        self.rel = rel
        self.mode = inputs.mode
        self.data = inputs.content.encode("utf-8")
        self.key = key
        key_hash = hashlib.sha256(key.encode("utf-8")).hexdigest()
        self.markers = workspace / MARKER_DIR
        self.marker = self.markers / f"{key_hash}.json"
        self.tmp = target.with_name(f".{target.name}.{key_hash[:16]}.cadre-tmp")
        # What this key promises to write; a second call with the same key must promise the same.
        self.intent = {
            "path": rel,
            "mode": self.mode,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "length": len(self.data),
        }

    def run(self) -> FsWriteOutput:
        try:
            self.markers.mkdir(parents=True, exist_ok=True)
            with _locked(self.markers / ".lock"):
                return self._run_locked()
        except OSError as e:
            raise _os_failure(self.tool, self.rel, e) from e

    def _run_locked(self) -> FsWriteOutput:
        marker = self._load_marker()
        if marker is None:
            size_before = self._size() if self.mode == "append" else None
            self._save_marker("pending", size_before=size_before)
            self._apply()
        else:
            if marker.get("intent") != self.intent:
                raise ToolError(
                    self.tool,
                    "idempotency_conflict",
                    f"idempotency key {self.key!r} already wrote {marker.get('intent')}; "
                    f"this call asks for {self.intent}; a step id must name one write",
                )
            if marker["state"] == "done":
                return FsWriteOutput(path=self.rel, bytes_written=int(marker["bytes_written"]), already_done=True)
            if self.mode == "append":
                size_before = int(marker["size_before"])
                if self._append_landed(size_before):
                    self._save_marker("done", size_before=size_before)
                    return FsWriteOutput(path=self.rel, bytes_written=len(self.data), already_done=True)
                self._cut_back(size_before)
            else:
                size_before = None
            self._apply()
        self._save_marker("done", size_before=size_before)
        return FsWriteOutput(path=self.rel, bytes_written=len(self.data), already_done=False)

    # The steps ---------------------------------------------------------------------------

    def _apply(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.mode == "overwrite":
            _replace_atomically(self.target, self.tmp, self.data)
            return
        existed = self.target.exists()
        with self.target.open("ab") as f:
            f.write(self.data)
            f.flush()
            os.fsync(f.fileno())
        if not existed:
            _fsync_dir(self.target.parent)

    def _size(self) -> int:
        try:
            return self.target.stat().st_size
        except FileNotFoundError:
            return 0

    def _append_landed(self, size_before: int) -> bool:
        if self._size() != size_before + len(self.data):
            return False
        with self.target.open("rb") as f:
            f.seek(size_before)
            return f.read() == self.data

    def _cut_back(self, size_before: int) -> None:
        size = self._size()
        if size < size_before:
            raise ToolError(
                self.tool,
                "file_changed",
                f"file {self.rel!r} shrank to {size} bytes below the {size_before} it had before this step's "
                "interrupted append; it was changed outside cadre, so the append cannot be repaired safely",
            )
        if size > size_before:  # a partial (or foreign) tail after an interrupted append
            os.truncate(self.target, size_before)

    # The marker --------------------------------------------------------------------------

    def _load_marker(self) -> dict[str, Any] | None:
        try:
            raw = self.marker.read_bytes()
        except FileNotFoundError:
            return None
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
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        _replace_atomically(self.marker, tmp, json.dumps(body, sort_keys=True).encode())
