"""Safety rules: one pure check per tool over its inputs, shared by the validator and the tool.

A tool declares its rule on its spec (:attr:`planner.catalog.ToolSpec.rule`); the same rule
serves three places: the validator at plan time (on the literal inputs; a value that is a
reference is left for later), the validator's step check on the fully resolved inputs
(:func:`planner.validation.check_step`), and the ToolBox at run time, as the last line before
the implementation runs. A rule returns :class:`Violation` values (a code, a message, a fix and
the location in the inputs) and does no I/O: what it needs from the deployment (the HTTP
allow-list) comes in a :class:`SafetyContext`.

The built-in rules:

- :func:`workspace_path_problem`, fs.read / fs.write: a relative path that stays in the
  workspace once normalised (no NUL, not absolute, no ``..`` above the top, not cadre's marker
  folder, not the workspace itself). Symlinks depend on the files, so the tool resolves them at
  run time on top of this rule.
- :func:`sql_problem`, sql.query: read-only as SQLite itself decides it. The statement is
  compiled (``EXPLAIN``, so it is never run) on a scratch in-memory database under an
  authorizer that allows reading only; tables and columns the statement names are made up as
  empty stand-ins, so the verdict needs no database and is the same on every machine (a
  replay's). Refused: anything but one SELECT (writes, ATTACH, PRAGMA, VACUUM, transactions,
  several statements), and the functions that reach outside SQL (``load_extension`` …).
- :func:`url_problem`, http.get: the URL normalised (scheme and host in lower case, IDNA host,
  default port dropped, dot segments resolved) under an allowed prefix on a segment boundary;
  refused: user info, a percent-encoded separator or dot segment in the path, a ``%`` in the
  host, and a caller-set ``Host`` header.
- :func:`template_problems`, text.render: a template that parses, whose placeholders name
  values by key only (no positional ``{0}``, no ``__dunder__`` segment), with known
  conversions and bounded, non-nested format specs.
"""

from __future__ import annotations

import functools
import posixpath
import re
import sqlite3
import string
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from cadre.planner.refs import Loc, format_location, is_ref

__all__ = [
    "MARKER_DIR",
    "MAX_FORMAT_WIDTH",
    "SafetyContext",
    "SafetyRule",
    "Violation",
    "fs_rule",
    "http_rule",
    "normalise_url",
    "sql_problem",
    "sql_rule",
    "statement_kind",
    "template_problems",
    "text_rule",
    "url_problem",
    "workspace_path_problem",
]

MARKER_DIR = ".cadre-idempotency"
MAX_FORMAT_WIDTH = 1000  # a format spec such as {x:>99999999} must not blow up the output


@dataclass(frozen=True, slots=True)
class Violation:
    """One refused input: ``code`` as the tool would raise it (``outside_workspace``, ``write_refused``,
    ``not_allowed``, ``invalid_template``, ``invalid_input``), ``loc`` where in the inputs."""

    code: str
    message: str
    fix: str
    loc: Loc = ()

    @property
    def where(self) -> str:
        return format_location("inputs", self.loc)


@dataclass(frozen=True, slots=True)
class SafetyContext:
    """What the rules need from the deployment: ``http_allow``, the URL prefixes http.get may fetch
    (None: not known here, so only the URL's form is checked, not its prefix)."""

    http_allow: tuple[str, ...] | None = None


SafetyRule = Callable[[Mapping[str, Any], SafetyContext], list[Violation]]
"""A tool's rule: its inputs (references left as they are) and the deployment's context in,
what it refuses out (empty: nothing)."""


def _literal(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a string the rule can judge now (a reference is judged once resolved)."""
    return isinstance(value, str) and not is_ref(value)


# -- fs.read / fs.write ----------------------------------------------------------------------


def workspace_path_problem(path: str) -> tuple[str, str] | None:
    """``(code, message)`` when ``path`` cannot name a file inside the workspace, else None."""
    if "\x00" in path:
        return "invalid_input", f"path {path!r} contains a NUL character"
    if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", path):
        return "outside_workspace", f"path {path!r} is outside the workspace: it is absolute"
    norm = posixpath.normpath(path) if path else "."
    if norm == ".." or norm.startswith("../"):
        return "outside_workspace", f"path {path!r} is outside the workspace: it leads above the workspace folder"
    if norm == ".":
        return "not_a_file", f"path {path!r} is the workspace folder itself, not a file"
    if norm.split("/", 1)[0] == MARKER_DIR:
        return "reserved_path", f"path {path!r} is in {MARKER_DIR}/, which cadre keeps for itself"
    return None


def fs_rule(inputs: Mapping[str, Any], ctx: SafetyContext) -> list[Violation]:
    """The rule of fs.read and fs.write: ``path`` stays inside the workspace."""
    path = inputs.get("path")
    if not _literal(path):
        return []
    problem = workspace_path_problem(path)
    if problem is None:
        return []
    return [
        Violation(problem[0], problem[1], "use a path relative to the workspace, such as 'reports/q1.md'", ("path",))
    ]


# -- sql.query -------------------------------------------------------------------------------

_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
# Functions that reach outside SQL when an extension or a shell provides them.
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "sqlar_uncompress"})
_ACTION_NAMES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").replace("_", " ")
    for name in dir(sqlite3)
    if name.startswith("SQLITE_")
    and name.removeprefix("SQLITE_")
    in {
        "CREATE_INDEX",
        "CREATE_TABLE",
        "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW",
        "CREATE_TRIGGER",
        "CREATE_VIEW",
        "DELETE",
        "DROP_INDEX",
        "DROP_TABLE",
        "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE",
        "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW",
        "DROP_TRIGGER",
        "DROP_VIEW",
        "INSERT",
        "PRAGMA",
        "TRANSACTION",
        "UPDATE",
        "ATTACH",
        "DETACH",
        "ALTER_TABLE",
        "REINDEX",
        "ANALYZE",
        "CREATE_VTABLE",
        "DROP_VTABLE",
        "SAVEPOINT",
    }
}
_COMMENT = re.compile(r"--[^\n]*|/\*.*?(?:\*/|$)", re.S)
_SCHEMA_OBJECTS = {"TABLE", "VIEW", "INDEX", "TRIGGER"}
_STRING = re.compile(r"'(?:[^']|'')*'")
_IDENT = re.compile(r'"((?:[^"]|"")*)"|`([^`]*)`|\[([^\]]*)\]|([A-Za-z_][A-Za-z0-9_$]*)')
_MAX_ROUNDS = 200


def statement_kind(sql: str) -> str | None:
    """The kind a statement announces by its leading keywords (``"DROP TABLE"``, ``"INSERT"``), if any.

    For messages only: the authorizer decides. For CREATE and DROP SQLite's first authorizer
    call is a write to ``sqlite_master``, which names the statement badly.
    """
    words: list[str] = re.findall(r"[A-Za-z_]+", _COMMENT.sub(" ", sql)[:300])
    if not words:
        return None
    first = words[0].upper()
    if first in ("CREATE", "DROP", "ALTER"):
        head = [first]
        for w in words[1:5]:
            head.append(w.upper())
            if w.upper() in _SCHEMA_OBJECTS:
                break
        return " ".join(head)
    if first in ("WITH", "SELECT", "VALUES", "PRAGMA", "EXPLAIN"):
        return None  # the authorizer's action says more (e.g. INSERT on 'orders', PRAGMA writable_schema)
    return first


class ReadGuard:
    """An authorizer that allows reading only; remembers the first action it denied and whether
    the statement began as a SELECT. ``pragmas``: PRAGMAs it also allows (sql.schema's)."""

    def __init__(self, pragmas: frozenset[str] = frozenset()) -> None:
        self.pragmas = pragmas
        self.denied: str | None = None
        self.first: int | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        if self.first is None:
            self.first = action
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
            self.denied = self.denied or f"function {arg2}()"
            return sqlite3.SQLITE_DENY
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 in self.pragmas:
            return sqlite3.SQLITE_OK
        if self.denied is None:
            kind = _ACTION_NAMES.get(action, f"action {action}")
            if action == sqlite3.SQLITE_PRAGMA:
                self.denied = f"PRAGMA {arg1}"
            elif arg1:
                self.denied = f"{kind} on {arg1!r}"
            else:
                self.denied = kind
        return sqlite3.SQLITE_DENY


def _identifiers(sql: str) -> list[str]:
    """Every name the statement could use as a column (string literals and comments left out)."""
    text = _STRING.sub(" ", _COMMENT.sub(" ", sql))
    names: dict[str, None] = {}
    for m in _IDENT.finditer(text):
        name = m[1].replace('""', '"') if m[1] is not None else (m[2] or m[3] or m[4] or "")
        if name:
            names.setdefault(name)
    return list(names)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _compile(sql: str, stubs: Mapping[str, Sequence[str]]) -> tuple[ReadGuard, BaseException | None]:
    """Compile ``sql`` (never run it) on a scratch database holding ``stubs``; the guard and the error."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for table, columns in stubs.items():
            conn.execute(f"CREATE TABLE {_quote(table)} ({', '.join(_quote(c) for c in columns) or 'x'})")
        guard = ReadGuard()
        conn.set_authorizer(guard)
        try:
            conn.execute("EXPLAIN " + sql)  # EXPLAIN compiles the statement and lists its program
        except (sqlite3.Error, sqlite3.Warning) as e:
            return guard, e
        return guard, None
    finally:
        conn.close()


def sql_problem(sql: str) -> tuple[str, str] | None:
    """``(code, message)`` when ``sql`` is not one read-only statement, as SQLite decides it; else None.

    ``write_refused`` for a statement that would write (or attach, set a pragma, load an
    extension…), ``sql_error`` for one SQLite cannot compile. Cached: plans repeat statements.
    """
    return _sql_problem(sql)


@functools.lru_cache(maxsize=1024)
def _sql_problem(sql: str) -> tuple[str, str] | None:
    if "\x00" in sql:
        return "sql_error", "SQLite refused the statement: it contains a NUL character"
    names = _identifiers(sql)
    tables: list[str] = []  # stand-ins, in the order SQLite asked for them
    owner: dict[str, int] = {}  # a name that was ambiguous: the one stand-in that has it (an index in tables)
    for _ in range(_MAX_ROUNDS):
        stubs = {t: [n for n in names if owner.get(n, i) == i] for i, t in enumerate(tables)}
        guard, err = _compile(sql, stubs)
        if guard.denied is not None:
            return "write_refused", f"sql.query is read-only: {statement_kind(sql) or guard.denied} is refused"
        message = str(err) if err is not None else ""
        if m := re.fullmatch(r"no such table: (?:main\.)?(.+)", message):
            if "." in m[1] or m[1] in tables:
                return "sql_error", f"SQLite refused the statement: {message}"
            tables.append(m[1])
            continue
        if m := re.fullmatch(r"ambiguous column name: (?:.*\.)?(.+)", message):
            if m[1] in owner or m[1] not in names:
                return "sql_error", f"SQLite refused the statement: {message}"
            owner[m[1]] = 0  # only the first stand-in has it; the next one if a qualified use needs it elsewhere
            continue
        if (m := re.fullmatch(r"no such column: (?:.*\.)?(.+)", message)) and m[1] in owner:
            owner[m[1]] += 1
            if owner[m[1]] < len(tables):
                continue
            return "sql_error", f"SQLite refused the statement: {message}"
        if err is not None and not message.startswith("Incorrect number of bindings"):
            kind = statement_kind(sql)  # a statement that parses but is no SELECT is refused as such
            syntax = message.startswith(("near ", "incomplete input", "unrecognized token"))
            if kind is not None and not syntax:
                return "write_refused", f"sql.query is read-only: {kind} is refused"
            return "sql_error", f"SQLite refused the statement: {message}"
        if guard.first != sqlite3.SQLITE_SELECT:
            kind = statement_kind(sql) or "a statement that is not a SELECT"
            return "write_refused", f"sql.query is read-only: {kind} is refused"
        return None
    return "sql_error", "SQLite refused the statement: it could not be checked (too many names to resolve)"


def sql_rule(inputs: Mapping[str, Any], ctx: SafetyContext) -> list[Violation]:
    """The rule of sql.query: ``sql`` is one read-only statement."""
    sql = inputs.get("sql")
    if not _literal(sql):
        return []
    problem = sql_problem(sql)
    if problem is None:
        return []
    return [Violation(problem[0], problem[1], "send one SELECT statement (WITH … SELECT allowed)", ("sql",))]


# -- http.get --------------------------------------------------------------------------------

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


def _host(raw: str) -> str:
    """The host in lower case, IDNA-encoded, without a trailing dot; ValueError for a disguised one."""
    if "%" in raw:
        raise ValueError("its host is percent-encoded, which a resolver may read as another host")
    host = raw.lower().rstrip(".")
    if not host:
        raise ValueError("it has no host")
    if ":" in host:  # an IPv6 literal
        return f"[{host}]"
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise ValueError(f"its host {raw!r} is not a valid international domain name") from e
    if not re.fullmatch(r"[a-z0-9._-]+", host):
        raise ValueError(f"its host {raw!r} has characters a host name cannot have")
    return host


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
    host = _host(parts.hostname or "")
    port = parts.port  # ValueError for a port that is not a number or out of range
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    _check_path(parts.path)
    path = _remove_dot_segments(parts.path or "/")
    return urllib.parse.urlunsplit((scheme, netloc, path, parts.query, ""))


def _under(norm: str, prefix: str) -> bool:
    """Whether ``norm`` lies under ``prefix`` on a boundary (``/api`` does not admit ``/api-evil``)."""
    if not norm.startswith(prefix):
        return False
    rest = norm[len(prefix) :]
    return not rest or prefix.endswith(("/", "?", "&", "=")) or rest[0] in "/?"


def url_problem(url: str, allow: Sequence[str] | None) -> str | None:
    """Why ``url`` may not be fetched under the prefixes ``allow``, or None when it may (``allow``
    None: only the URL's form is checked)."""
    try:
        norm = normalise_url(url)
    except ValueError as e:
        return f"URL {url!r} is refused: {e}"
    if allow is None:
        return None
    for prefix in allow:
        try:
            norm_prefix = normalise_url(prefix)
        except ValueError:
            continue  # a malformed setting allows nothing (cadre/settings.py validates it)
        if _under(norm, norm_prefix):
            return None
    shown = ", ".join(repr(p) for p in allow) or "(empty)"
    return (
        f"URL {url!r} is not under an allowed prefix; allowed: {shown}; "
        "add its prefix to the CADRE_HTTP_ALLOW setting to allow it"
    )


def host_header_problem(name: str) -> str | None:
    """Why a request header named ``name`` may not be set by the caller, or None."""
    if name.strip().lower() == "host":
        return (
            f"header {name!r} is refused: the Host header is taken from the URL the allow-list checked; "
            "a different one could reach another site on the same server"
        )
    return None


def http_rule(inputs: Mapping[str, Any], ctx: SafetyContext) -> list[Violation]:
    """The rule of http.get: the URL is under the allow-list, and no caller-set ``Host`` header."""
    found: list[Violation] = []
    url = inputs.get("url")
    if _literal(url) and (why := url_problem(url, ctx.http_allow)) is not None:
        found.append(Violation("not_allowed", why, "fetch a URL under one of the allowed prefixes", ("url",)))
    headers = inputs.get("headers")
    if isinstance(headers, Mapping):
        for name in headers:
            if (why := host_header_problem(str(name))) is not None:
                found.append(Violation("not_allowed", why, "leave the Host header out", ("headers", str(name))))
    return found


# -- text.render -----------------------------------------------------------------------------

_FIRST = re.compile(r"[^.\[]*")
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]+)\]")
CONVERSIONS = frozenset({"s", "r", "a", "t", "j"})


def template_problems(template: str, names: Sequence[str] | None) -> list[str]:
    """What makes ``template`` unsafe or unfillable (empty: nothing); ``names``: the value names
    it may use (None: not known yet, e.g. the values are a reference)."""
    try:
        fields = [f for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError as e:
        return [f"invalid template: {e}"]
    problems: list[str] = []
    for _, field, spec, conversion in fields:
        assert field is not None
        first = _FIRST.match(field)
        name = first.group() if first else ""
        if name == "" or name.isdigit():
            shown = field or "0"  # str.format numbers a bare {} as {0}
            problems.append(
                f"invalid template: positional placeholder {{{shown}}}: name a value instead, like {{title}}"
            )
            continue
        rest, pos = [name], len(name)
        while pos < len(field):
            step = _STEP.match(field, pos)
            if step is None:
                problems.append(f"invalid template: cannot read {{{field}}} after {field[:pos]!r}")
                break
            rest.append(step[1] or step[2])
            pos = step.end()
        if any(part.startswith("__") for part in rest):
            problems.append(f"invalid template: {{{field}}} names a '__' attribute; placeholders look up keys only")
        if names is not None and name not in names:
            have = ", ".join(sorted(names)) or "(none)"
            problems.append(f"invalid template: missing key {name!r} in {{{field}}}; the values are: {have}")
        if conversion is not None and conversion not in CONVERSIONS:
            problems.append(
                f"invalid template: unknown conversion !{conversion}; use !t (table), !j (JSON), !s, !r or !a"
            )
        if spec and "{" in spec:
            problems.append(f"invalid template: format spec {spec!r} of {{{field}}} holds a placeholder")
        elif spec and any(int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", spec)):
            problems.append(f"invalid template: format spec {spec!r} is wider than {MAX_FORMAT_WIDTH}")
    return problems


def text_rule(inputs: Mapping[str, Any], ctx: SafetyContext) -> list[Violation]:
    """The rule of text.render: the template only looks up the values it is given."""
    template = inputs.get("template")
    if not _literal(template):
        return []
    values = inputs.get("values", {})
    names = list(values) if isinstance(values, Mapping) else None
    fix = "use {name}, {a.b} or {rows[0]} placeholders over the given values; write {{ and }} for braces"
    return [Violation("invalid_template", p, fix, ("template",)) for p in template_problems(template, names)]
