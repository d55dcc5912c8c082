"""Short stable digests of JSON values: keys of effects, of tool inputs and of the inference cache."""

from __future__ import annotations

from cadre.bus.effects import digest

__all__ = ["digest"]
