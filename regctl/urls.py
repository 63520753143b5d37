"""Redis URLs: the schemes regctl takes, parsing multi-host URLs, masking credentials.

Pure functions, no I/O: settings validate a URL with them before anything connects.
"""

from __future__ import annotations

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


def mask_url(url: str) -> str:
    """The URL with every credential replaced by ``***`` (safe to print and log).

    It errs on the side of hiding: whatever stands between ``://`` and the last
    ``@`` is user-info (a ``/``, ``?`` or ``#`` in a password included), and the
    values of password-like query parameters are masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if not colon and any(ch in user for ch in "/?#&="):
            user = "***"  # not a plain user name: hide it all
        rest = f"{user}:***@{after}" if colon else f"{user}@{after}"
    base, question, query = rest.partition("?")
    if question:
        pairs = (pair.partition("=") for pair in query.split("&"))
        query = "&".join(
            f"{key}={'***' if _secret_param(key) else value}" if eq else key
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
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    if at and not userinfo.startswith("/") and any(ch in userinfo for ch in "/?#"):
        # (a URL parser ends the user-info there: the rest of the password would be
        # taken for a host, a path or a socket, and printed as one)
        raise ConfigError(
            f"the user name or password in {mask_url(url)} holds a /, ? or #: "
            "percent-encode it (%2F, %3F, %23; an @ is %40)"
        )
    if "+" in scheme:
        parse_multi(url)
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
    address = url.partition("://")[2].partition("?")[0]
    end_of_userinfo = address.rfind("@") + 1
    host, _, database = address[end_of_userinfo:].partition("/")
    if scheme != "unix" and database.strip("/") and not database.strip("/").isdigit():
        # (what stands there is not shown: it may be a password written in the wrong place)
        shown = mask_url(f"{scheme}://{address[:end_of_userinfo]}{host}")
        raise ConfigError(f"invalid Redis URL {shown}/...: the database must be a number")


def _secret_param(key: str) -> bool:
    name = unquote(key).casefold()
    return any(word in name for word in _SECRET_PARAMS)
