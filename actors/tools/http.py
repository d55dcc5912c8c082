"""http.get: GET a URL under one of the allowed prefixes (``ToolConfig.http_allow``).

The allow-list is checked on a normalised URL (scheme and host in lower case, default
port dropped, ``.``/``..`` segments resolved, fragment dropped), which is also the URL
sent, so what was checked is what is fetched. URLs with user info
(``http://allowed@evil/``) are refused outright, and so is every redirect that leaves the
allow-list. Proxies from the environment are not used: the deployment decides, here.
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

from actors.tools.base import ToolCall, ToolConfig, ToolError
from planner.builtin_tools import HttpGetInput, HttpGetOutput

TOOL = "http.get"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, also for percent-encoded dots (``%2e%2e``), which some servers decode."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        plain = urllib.parse.unquote(seg)
        if plain == "..":
            if len(out) > 1:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
        elif plain == ".":
            if i == len(segments) - 1:
                out.append("")
        else:
            out.append(seg)
    joined = "/".join(out)
    return joined if joined.startswith("/") else "/" + joined


def normalise_url(url: str) -> str:
    """The canonical form of an http(s) URL; ValueError says what is wrong with it."""
    if any(c.isspace() or ord(c) < 0x20 or c == "\\" for c in url):
        raise ValueError("it contains whitespace, control characters or backslashes")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"scheme {parts.scheme!r} is not http or https")
    if "@" in parts.netloc:
        raise ValueError("it carries user info ('user@host'); put credentials in headers instead")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("it has no host")
    port = parts.port  # ValueError for a port that is not a number
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(parts.path or "/")
    return urllib.parse.urlunsplit((scheme, netloc, path, parts.query, ""))


def _allowed(config: ToolConfig, url: str) -> str:
    """The normalised URL, if it lies under an allowed prefix; else ToolError ``not_allowed``."""
    allow = ", ".join(repr(p) for p in config.http_allow) or "(empty)"
    try:
        norm = normalise_url(url)
    except ValueError as e:
        raise ToolError(TOOL, "not_allowed", f"URL {url!r} is refused: {e}") from e
    for prefix in config.http_allow:
        try:
            norm_prefix = normalise_url(prefix)
        except ValueError:
            continue  # a malformed setting allows nothing (cadre/settings.py validates it)
        if norm.startswith(norm_prefix):
            return norm
    raise ToolError(
        TOOL,
        "not_allowed",
        f"URL {url!r} is not under an allowed prefix; allowed: {allow}; "
        "add its prefix to the CADRE_HTTP_ALLOW setting to allow it",
    )


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


async def http_get(inputs: HttpGetInput, config: ToolConfig, call: ToolCall) -> HttpGetOutput:
    """GET ``inputs.url`` if the allow-list admits it; the socket timeout is the call's limit."""
    url = _allowed(config, inputs.url)
    return await asyncio.to_thread(_fetch, config, url, inputs, call.timeout_s)
