"""Redis URLs: the schemes regctl takes, parsing multi-host URLs, masking credentials.

Pure functions, no I/O: settings validate a URL with them before anything connects.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote

from regctl.errors import ConfigError

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


@dataclass(frozen=True)
class Endpoint:
    """A parsed multi-host URL (Sentinel or Cluster)."""

    scheme: str
    hosts: list[tuple[str, int]]
    username: str | None
    password: str | None
    path: list[str]

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")


def parse_multi(url: str) -> Endpoint:
    """``scheme://[user:pass@]host:port[,host:port...]/path`` (urlsplit cannot do lists)."""
    if "?" in url.rpartition("@")[2]:
        raise ConfigError(
            f"{mask_url(url)}: a Sentinel or Cluster URL takes no ?parameters",
            "put credentials in the URL's user-info or REGCTL_REDIS_PASSWORD",
        )
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts = []
    for item in filter(None, hostlist.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"invalid host:port {item!r} in {mask_url(url)}")
        hosts.append((host.strip("[]"), int(port)))
    if not hosts:
        raise ConfigError(f"no host:port in {mask_url(url)}")
    return Endpoint(
        scheme,
        hosts,
        unquote(user) or None,
        unquote(password) or None,
        [p for p in path.split("/") if p],
    )


# What names a query parameter that carries a secret (redis-py reads ?password=...,
# ?ssl_password=...): any name holding one of these.
_SECRET_PARAMS = ("pass", "pwd", "secret", "token", "auth")


# A host part: host[:port], comma-separated for Sentinel and Cluster (IPv6 in brackets).
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]*)?"
_HOSTS = re.compile(rf"{_HOST}(?:,{_HOST})*")


def _end_of_userinfo(rest: str) -> int:
    """Where the user-info of a URL's part after ``://`` ends (its ``@``), or -1.

    The host part ends at the first ``/``, ``?`` or ``#``; an ``@`` in it ends the
    user-info. Without one, what stands there may be a password's start, cut by an
    unencoded ``/``, ``?`` or ``#``: when it is no host (``:hunter2?x=``), the last
    ``@`` ends the user-info, hidden (and refused) whole; a host's later ``@`` is in
    its query (``?password=se@cret``, ``?password=a?b@c``) unless no ``=`` leads to it."""
    host_end = _end_of_host(rest)
    at = rest.rfind("@", 0, host_end)
    if at >= 0 or host_end == 0:  # (unix:///path: no user-info)
        return at
    later = rest.rfind("@")
    if later < host_end:
        return -1
    if not _HOSTS.fullmatch(rest[:host_end]):
        return later
    query_start = rest.find("?", host_end, later)
    return -1 if query_start >= 0 and "=" in rest[query_start:later] else later


def _end_of_host(text: str) -> int:
    """Where the host part that starts ``text`` ends: its first ``/``, ``?`` or ``#``."""
    return next((i for i, ch in enumerate(text) if ch in "/?#"), len(text))


def _up_to_path(url: str) -> str:
    """``url`` masked, without its path and query (``.../...``): what stands there may be
    a password written in the wrong place, never shown."""
    scheme, _, rest = url.partition("://")
    host_start = _end_of_userinfo(rest) + 1
    return mask_url(f"{scheme}://{rest[: host_start + _end_of_host(rest[host_start:])]}")


def _path_and_query(rest: str, at: int) -> tuple[str, str]:
    """The path (after the host part's ``/``) and the query of a URL's part after
    ``://`` whose user-info ends at ``at``; no fragment."""
    path, _, query = rest[at + 1 :].partition("#")[0].partition("?")
    return path.partition("/")[2], query


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (in its user-info or a query parameter)."""
    rest = url.partition("://")[2]
    at = _end_of_userinfo(rest)
    if at >= 0 and rest[:at].partition(":")[2]:
        return True
    query = _path_and_query(rest, at)[1]
    return any(
        _secret_param(key) and value
        for key, _, value in (pair.partition("=") for pair in query.split("&"))
    )


def mask_url(url: str) -> str:
    """The URL with every credential replaced by ``***`` (safe to print and log).

    It errs on the side of hiding: a password holding an unencoded ``/``, ``?`` or
    ``#`` is hidden whole (see ``_end_of_userinfo``), and the values of password-like
    query parameters are masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = _end_of_userinfo(rest)
    if at >= 0:
        userinfo, after = rest[:at], rest[at + 1 :]
        user, colon, _password = userinfo.partition(":")
        if not colon and any(ch in user for ch in "/?#&="):
            user = "***"  # not a plain user name: hide it all
        rest = f"{user}:***@{after}" if colon else f"{user}@{after}"
    base, question, query = rest.partition("?")
    if question:
        pairs = (pair.partition("=") for pair in query.split("&"))
        # (a bare word, or a name no connection takes, may be a password's tail after
        # an unencoded &: hidden whole)
        query = "&".join(
            f"{key}={'***' if _secret_param(key) else value}"
            if eq and _known(key)
            else key and "***"
            for key, eq, value in pairs
        )
    return f"{scheme}://{base}{question}{query}"


def check_url(url: str) -> None:
    """Raise ConfigError unless ``url`` is a Redis URL regctl can use (no I/O)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(
            "the Redis URL must start with one of " + ", ".join(f"{s}://" for s in SCHEMES)
        )
    rest = url.partition("://")[2]
    at = _end_of_userinfo(rest)
    if at >= 0 and any(ch in rest[:at] for ch in "/?#"):
        # (a URL parser ends the user-info there: the rest of the password would be
        # taken for a host, a path or a socket, and printed as one)
        raise ConfigError(
            f"the user name or password in {mask_url(url)} holds a /, ? or #: "
            "percent-encode it (%2F, %3F, %23; an @ is %40)"
        )
    database, query = _path_and_query(rest, at)
    for pair in filter(None, query.split("&")):
        # (redis-py would drop a bare word unsaid, and refuse an unknown name naming it:
        # either may be a password's tail after an unencoded &, never shown)
        name, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(
                f"invalid Redis URL {mask_url(url)}: a query parameter without a value "
                "(write name=value; an & in a password is %26)"
            )
        if not _known(name):
            close = difflib.get_close_matches(unquote(name), _connection_params(), n=1)
            raise ConfigError(
                f"invalid Redis URL {mask_url(url)}: a query parameter no connection takes "
                f"(shown as ***{'; did you mean ' + close[0] + '?' if close else ''})",
                "an & in a password is %26",
            )
        _check_param(unquote(name), unquote(value), url)
    if "+" in scheme:
        path = parse_multi(url).path
        # (not shown: what stands there may be a password written in the wrong place)
        if "sentinel" in scheme and not (len(path) == 1 or (len(path) == 2 and path[1].isdigit())):
            raise ConfigError(
                f"invalid Redis URL {_up_to_path(url)}/...: "
                "a Sentinel URL's path is /service or /service/db (a number)"
            )
        if "cluster" in scheme and path not in ([], ["0"]):
            raise ConfigError(
                f"invalid Redis URL {_up_to_path(url)}/...: "
                "a Cluster URL takes no path but /0 (a cluster has one database)"
            )
        return
    from redis.connection import parse_url

    try:
        parsed = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        # redis-py's words may quote part of a password: only for a URL without one.
        detail = str(exc) if mask_url(url) == url else "check its form"
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {detail}") from None
    if scheme == "unix" and not parsed.get("path"):
        raise ConfigError(f"the unix:// URL {mask_url(url)} names no socket path")
    database = unquote(database).strip("/")  # (%30 is 0, as redis-py reads it)
    if scheme != "unix" and database and not database.isdigit():
        raise ConfigError(
            f"invalid Redis URL {_up_to_path(url)}/...: the database must be a number"
        )


def _check_param(name: str, value: str, url: str) -> None:
    """What redis-py only finds wrong at the first command (an unexpected error there)."""
    import codecs

    if name == "protocol" and value not in ("2", "3"):
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: the protocol is 2 or 3")
    if name == "encoding":
        try:
            codecs.lookup(value)
        except LookupError:
            raise ConfigError(
                f"invalid Redis URL {mask_url(url)}: no text encoding is named {value!r}"
            ) from None


def _known(name: str) -> bool:
    return unquote(name) in _connection_params()


@functools.cache
def _connection_params() -> frozenset[str]:
    """The query parameters a redis-py connection or its pool takes (``db``,
    ``socket_timeout``, ``password``...): redis-py passes any other on, and refuses it."""
    import inspect

    from redis import connection

    names = set(connection.URL_QUERY_ARGUMENT_PARSERS)
    for made in (
        connection.ConnectionPool,
        connection.AbstractConnection,
        connection.Connection,
        connection.SSLConnection,
        connection.UnixDomainSocketConnection,
    ):
        names.update(inspect.signature(made.__init__).parameters)
    return frozenset(names - {"self", "kwargs", "connection_class", "connection_kwargs"})


def _secret_param(key: str) -> bool:
    name = unquote(key).casefold()
    return any(word in name for word in _SECRET_PARAMS)
