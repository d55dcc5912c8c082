"""Run a bench with nats-py's own client in every connection cadre makes: the "before" side of an A/B.

    .venv/bin/python bench/with_nats_py_client.py bench/pipeline.py --runs 1 --workflows 300

``cadre.bus.connection.connect`` normally builds ``cadre.bus.nats_client.Client`` (cheaper header
parsing and writing, appends through the reply mux of ``bus/pubacks.py``); here it builds
``nats.aio.client.Client``, whose appends go through ``Client.request``, as before round 8.
Everything else is the bench as it is.
"""

from __future__ import annotations

import runpy
import sys

from nats.aio.client import Client

import cadre.bus.connection

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cadre.bus.connection._new_client = Client  # type: ignore[assignment]
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
