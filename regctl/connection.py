"""Redis connections: URL to client, pool, timeouts, retries, and error translation.

Every regctl script carries an idempotency token or is naturally idempotent, so a
replay after a lost reply is safe; that is why retries are on for all commands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from regctl.errors import (
    ConfigError,
    PermissionDenied,
    PoolExhausted,
    RegctlError,
    StoreFull,
    StoreUnavailable,
    first_line,
)

if TYPE_CHECKING:
    import redis

    from regctl.settings import Settings

SCHEMES = ("redis", "rediss", "unix")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print and log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str, settings: Settings) -> redis.Redis:
    """A client for ``url`` with a blocking pool, timeouts and bounded retries."""
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported Redis URL scheme {scheme!r} in {mask_url(url)}",
            "use redis://, rediss:// or unix://",
        )
    kwargs: dict[str, object] = {
        "max_connections": settings.max_connections,
        "timeout": settings.pool_timeout,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "health_check_interval": settings.health_check_interval,
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), settings.retries),
        "decode_responses": True,
        "client_name": "regctl",
    }
    password = settings.redis_password_value()
    if password is not None:
        kwargs["password"] = password
    try:
        pool = redis.BlockingConnectionPool.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
    return redis.Redis(connection_pool=pool)


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turn redis-py exceptions into the regctl error tree."""
    import redis.exceptions as rex

    try:
        yield
    except RegctlError:
        raise
    except (rex.AuthenticationError, rex.AuthorizationError) as exc:
        raise PermissionDenied(
            f"Redis refused the credentials: {first_line(exc)}",
            "check the username and password in the Redis URL or REGCTL_REDIS_PASSWORD",
        ) from None
    except rex.NoPermissionError as exc:
        raise PermissionDenied(
            f"Redis denied a command: {first_line(exc)}",
            "grant the regctl user the commands and keys listed in the README (ACL)",
        ) from None
    except rex.OutOfMemoryError:
        raise _store_full() from None
    except (rex.ReadOnlyError, rex.ClusterDownError, rex.TryAgainError) as exc:
        raise StoreUnavailable(f"Redis cannot serve writes now: {first_line(exc)}") from None
    except rex.ResponseError as exc:
        text = str(exc)
        # Errors raised inside a script arrive as plain ResponseError with the code inside.
        if "OOM command not allowed" in text:
            raise _store_full() from None
        if "NOPERM" in text:
            raise PermissionDenied(f"Redis denied a command: {first_line(exc)}") from None
        if text.startswith(("BUSY", "READONLY")):
            raise StoreUnavailable(f"Redis cannot serve writes now: {first_line(exc)}") from None
        raise
    except rex.ConnectionError as exc:
        if "No connection available" in str(exc):
            raise PoolExhausted(
                "every pooled Redis connection stayed busy past the pool timeout",
                "raise REGCTL_MAX_CONNECTIONS or REGCTL_POOL_TIMEOUT",
            ) from None
        raise StoreUnavailable(
            f"Redis is unavailable: {first_line(exc)}",
            "check that the server is running and the URL is right",
        ) from None
    except rex.TimeoutError as exc:
        raise StoreUnavailable(
            f"Redis timed out: {first_line(exc)}",
            "the server is stalled or overloaded; see `regctl health`",
        ) from None


def _store_full() -> StoreFull:
    return StoreFull(
        "Redis is out of memory and refused the write; nothing was stored",
        "raise maxmemory or purge expired registrations",
    )
