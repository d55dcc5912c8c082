"""http.get: GET a URL under one of the allowed prefixes (``ToolConfig.http_allow``).

The allow-list is checked on a normalised URL (scheme and host in lower case, default
port dropped, ``.``/``..`` segments resolved, fragment dropped), which is also the URL
sent, so what was checked is what is fetched. Refused outright, because a server could
read them as another URL than the one checked: user info (``http://allowed@evil/``), a
percent-encoded separator in the path (``%2f``, ``%5c``, also double-encoded ``%252f``),
a dot segment in disguise (``%2e%2e``, ``.%2e``, ``%2e``, ``..;x``), and a caller-set
``Host`` header; so is every redirect that leaves the allow-list. Proxies from the
environment are not used: the deployment decides, here.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

from cadre.actors.tools.base import ToolCall, ToolConfig, ToolError
from cadre.planner.builtin_tools import HttpGetInput, HttpGetOutput

TOOL = "http.get"
_DEFAULT_PORTS = {"http": 80, "https": 443}


_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)


def _check_path(path: str) -> None:
    """ValueError if a server could decode ``path`` into other segments than it shows.

    Checked on the path and on each decoding of it, so ``%252f`` (``%2f`` encoded again) is
    caught too. Plain ``.`` and ``..`` segments are fine: normalisation resolves them.
    """
    seen = path
    for _ in range(4):
        if _ENCODED_SEPARATOR.search(seen):
            raise ValueError(
                "its path has a percent-encoded '/' or '\\' (%2f, %5c), which a server may decode into a separator"
            )
        for seg in seen.split("/"):
            name = seg.split(";", 1)[0]  # "..;x" is ".." to some servers
            if seg not in (".", "..") and urllib.parse.unquote(name) in (".", ".."):
                raise ValueError(
                    f"its path has a disguised dot segment ({seg!r}), which a server may resolve as '.' or '..'"
                )
        decoded = urllib.parse.unquote(seen)
        if decoded == seen:
            return
        seen = decoded
    raise ValueError("its path is percent-encoded more than three times over")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 (disguised dot segments are refused before, by :func:`_check_path`)."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
        elif seg == ".":
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
    _check_path(parts.path)
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


def _check_headers(headers: dict[str, str]) -> None:
    """ToolError ``not_allowed`` for a caller-set ``Host`` (in any case): the URL's host is the one checked."""
    for name in headers:
        if name.strip().lower() == "host":
            raise ToolError(
                TOOL,
                "not_allowed",
                f"header {name!r} is refused: the Host header is taken from the URL the allow-list checked; "
                "a different one could reach another site on the same server",
            )


async def http_get(inputs: HttpGetInput, config: ToolConfig, call: ToolCall) -> HttpGetOutput:
    """GET ``inputs.url`` if the allow-list admits it; the socket timeout is the call's limit."""
    url = _allowed(config, inputs.url)
    _check_headers(inputs.headers)
    return await asyncio.to_thread(_fetch, config, url, inputs, call.timeout_s)
