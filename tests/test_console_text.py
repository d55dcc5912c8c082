"""The console's page shows recorded text as the CLI prints it: its script's ``visible`` (run by node)
escapes exactly what :func:`cadre.safe_text.visible` does."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cadre.safe_text import visible

SCRIPT = Path(__file__).resolve().parent.parent / "cadre" / "static" / "console.js"
CASES = [
    "plain words",
    "clear\x1b[2J and bell\x07",
    "tab\tnewline\ncarriage\r",
    "bidi \u202eevil",
    "zero\u200bwidth",
    "C1 \x85\x9b",
    "no-break\u00a0space",
    "tag \U000e0041",
    "emoji 😀, é, 漢字",
    "del\x7f",
    "line\u2028paragraph\u2029",
    "<script>alert(1)</script> & \\x1b",
]
RUNNER = """
const src = require("fs").readFileSync(process.argv[1], "utf8");
const body = src.slice(src.indexOf("const UNPRINTABLE"), src.indexOf("const when = "));
const visible = new Function(body + "; return visible;")();
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map((c) => [visible(c), visible(c, true)])));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_page_escapes_what_the_cli_escapes() -> None:
    done = subprocess.run(
        ["node", "-e", RUNNER, str(SCRIPT)], input=json.dumps(CASES), capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == [[visible(c), visible(c, newlines=True)] for c in CASES]
