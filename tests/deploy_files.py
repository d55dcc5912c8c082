"""Reading deploy/'s files in tests."""

from __future__ import annotations

from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """A systemd / compose env file: KEY=VALUE lines, `#` comment lines (no comment after a value)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        assert key.isidentifier(), f"{path.name}: not a variable name: {line!r}"
        assert "#" not in value, f"{path.name}: a comment after a value is part of the value: {line!r}"
        env[key] = value
    return env
