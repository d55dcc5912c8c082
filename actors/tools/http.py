"""http.get: GET a URL under one of the allowed prefixes (``ToolConfig.http_allow``).

The allow-list is checked on a normalised URL (scheme and host in lower case, default
port dropped, ``.``/``..`` segments resolved, fragment dropped), which is also the URL
sent, so what was checked is what is fetched. Refused outright, because a server could
read them as another URL than the one checked: user info (``http://allowed@evil/``), a
percent-encoded separator in the path (``%2f``, ``%5c``, also double-encoded ``%252f``),
a dot segment in disguise (``%2e%2e``, ``.%2e``, ``%2e``, ``..;x``), and a caller-set
``Host`` header; so is every redirect that leaves the allow-list. The rule itself is
:func:`planner.safety.url_problem`, which the validator checks before anything runs.
Proxies from the environment are not used: the deployment decides, here.
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.error
import urllib.request
from typing import IO, Any

from cadre.actors.tools.base import ToolCall, ToolConfig, ToolError
from cadre.planner.builtin_tools import HttpGetInput, HttpGetOutput
from cadre.planner.safety import host_header_problem, normalise_url, url_problem

TOOL = "http.get"


def _allowed(config: ToolConfig, url: str) -> str:
    """The normalised URL, if it lies under an allowed prefix; else ToolError ``not_allowed``
    (the rule of :func:`planner.safety.url_problem`, which the validator checks too)."""
    why = url_problem(url, config.http_allow)
    if why is not None:
        raise ToolError(TOOL, "not_allowed", why)
    return normalise_url(url)


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the allow-list admits."""

    def __init__(self, config: ToolConfig) -> None:
        self.config = config

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        _allowed(self.config, newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _headers(msg: http.client.HTTPMessage) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in msg.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else str(value)
    return out


def _fetch(config: ToolConfig, url: str, inputs: HttpGetInput, timeout: float | None) -> HttpGetOutput:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _GuardedRedirects(config))
    request = urllib.request.Request(url, headers={"User-Agent": "cadre", **inputs.headers}, method="GET")
    response: Any  # an http.client.HTTPResponse, or the HTTPError that wraps one
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:  # a non-2xx status is an answer, not a failure
        response = e
    except ValueError as e:  # e.g. a header value with a line break
        raise ToolError(TOOL, "invalid_input", f"GET {url} cannot be sent: {e}") from e
    except TimeoutError as e:
        raise ToolError(TOOL, "timeout", f"GET {url} timed out", retryable=True) from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise ToolError(TOOL, "timeout", f"GET {url} timed out", retryable=True) from e
        raise ToolError(TOOL, "http_error", f"GET {url} failed: {e.reason}", retryable=True) from e
    except (OSError, http.client.HTTPException) as e:
        raise ToolError(TOOL, "http_error", f"GET {url} failed: {e!r}", retryable=True) from e
    try:
        with response:
            body = response.read(inputs.max_bytes + 1)
            status = int(response.status)
            headers = _headers(response.headers)
    except (OSError, http.client.HTTPException) as e:
        raise ToolError(TOOL, "http_error", f"GET {url}: reading the body failed: {e!r}", retryable=True) from e
    kept = body[: inputs.max_bytes]
    return HttpGetOutput(
        status=status, headers=headers, body=kept.decode("utf-8", "replace"), truncated=len(body) > len(kept)
    )


def _check_headers(headers: dict[str, str]) -> None:
    """ToolError ``not_allowed`` for a caller-set ``Host`` (in any case): the URL's host is the one checked."""
    for name in headers:
        why = host_header_problem(name)
        if why is not None:
            raise ToolError(TOOL, "not_allowed", why)


async def http_get(inputs: HttpGetInput, config: ToolConfig, call: ToolCall) -> HttpGetOutput:
    """GET ``inputs.url`` if the allow-list admits it; the socket timeout is the call's limit."""
    url = _allowed(config, inputs.url)
    _check_headers(inputs.headers)
    return await asyncio.to_thread(_fetch, config, url, inputs, call.timeout_s)
