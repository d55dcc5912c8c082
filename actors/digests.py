"""Short stable digests of JSON values: keys of effects, of tool inputs and of the inference cache."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(value: Any, size: int = 8) -> str:
    """A stable hex digest (``2 * size`` characters) of a JSON value; key order does not matter."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=size).hexdigest()
