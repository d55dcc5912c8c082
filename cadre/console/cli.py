"""``cadre ui`` and ``cadre up --ui``: serve the console until a stop signal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable

from cadre.commands import EXIT_OK, _say, _stop_on_signals
from cadre.console.server import Console, console_running
from cadre.settings import Settings


def _lines(console: Console) -> str:
    who = "as an approver" if console.signer is not None else "read-only: no approver key, so no approving from it"
    return f"cadre console: {console.url} ({len(console.index.by_id)} workflows; {who})"


async def serve(settings: Settings, host: str | None, port: int | None) -> int:
    """``cadre ui``: the console of the cadre ``settings`` point at, until SIGINT/SIGTERM."""
    stop = _stop_on_signals()
    async with console_running(settings, host=host, port=port) as console:
        _say(_lines(console))
        _say("  open it in a browser; Ctrl-C to stop")
        await stop.wait()
        print("cadre: console stopping", file=sys.stderr, flush=True)
    return EXIT_OK


def alongside(settings: Settings, port: int | None) -> Callable[[str], contextlib.AbstractAsyncContextManager[str]]:
    """For ``cadre up --ui``: the console, on the server ``cadre up`` runs (given its URL)."""

    @contextlib.asynccontextmanager
    async def run(url: str) -> AsyncIterator[str]:
        async with console_running(settings.model_copy(update={"nats_url": url}), port=port) as console:
            yield "  " + _lines(console)

    return run
