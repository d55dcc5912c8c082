"""The red-team corpus (tests/redteam/) on a real system, a sample of it: bench/redteam.py runs it all."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("redteam", ROOT / "bench" / "redteam.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redteam"] = module
    spec.loader.exec_module(module)
    return module


async def test_redteam_corpus_sample(nats_url: str, tmp_path: Path) -> None:
    """A sample of the corpus on a real system: every bad plan refused before any tool, every good one done."""
    redteam = _bench()
    rows = redteam.sample(redteam.load_corpus(), 60)
    result = await redteam.measure(rows, nats_url, tmp_path)
    assert result["misses"] == []
    assert result["bad_refused_share"] == 1.0
    assert result["good_passed_share"] == 1.0
