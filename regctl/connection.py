"""Redis connections: URL to client, pool, timeouts, retries, and error translation.

Every regctl script carries an idempotency token or is naturally idempotent, so a
replay after a lost reply is safe; that is why retries are on for all commands.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from regctl.errors import (
    ConfigError,
    DamagedRecord,
    NotServing,
    PermissionDenied,
    PoolExhausted,
    RegctlError,
    StoreFull,
    StoreTimeout,
    StoreUnavailable,
    first_line,
)
from regctl.urls import Endpoint, check_url, mask_url, parse_multi

if TYPE_CHECKING:
    from regctl.settings import Settings

SCRIPT_DENIED = "Redis denied a command run inside a regctl script"

Client = Any  # redis.Redis or redis.cluster.RedisCluster: the same command API


# When the Redis command under way must be done (time.monotonic()); set by the
# outermost retry loop, so a connect retried inside a command shares its deadline.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "regctl_deadline", default=None
)


def deadline_retry(retries: int, budget_s: float) -> Any:
    """redis-py's Retry, bounded by one deadline per call: connect, every try and every
    backoff together stay within ``budget_s`` (a try that starts in time may run its
    socket timeout), instead of (retries + 1) x the socket timeout."""
    import time

    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    class DeadlineRetry(Retry):
        def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            outer = _DEADLINE.get()
            deadline = outer if outer is not None else time.monotonic() + budget_s
            token = _DEADLINE.set(deadline) if outer is None else None
            self._backoff.reset()  # type: ignore[no-untyped-call]
            failures = 0
            try:
                while True:
                    try:
                        return do()
                    except self._supported_errors as error:
                        if is_retryable is not None and not is_retryable(error):
                            raise
                        failures += 1
                        fail(error, failures) if with_failure_count else fail(error)
                        pause = self._backoff.compute(failures)
                        if failures > self._retries or time.monotonic() + pause >= deadline:
                            raise
                        time.sleep(pause)
            finally:
                if token is not None:
                    _DEADLINE.reset(token)

    retry = DeadlineRetry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries)
    retry.budget_s = budget_s  # type: ignore[attr-defined]
    return retry


def _common_kwargs(settings: Settings) -> dict[str, Any]:
    budget = settings.call_budget
    kwargs: dict[str, Any] = {
        "socket_timeout": min(settings.socket_timeout, budget),
        "socket_connect_timeout": min(settings.connect_timeout, budget),
        "health_check_interval": settings.health_check_interval,
        "retry": deadline_retry(settings.retries, budget),
        "decode_responses": True,
        "encoding_errors": "replace",  # bytes others wrote that are not UTF-8: shown as �
        "client_name": "regctl",
    }
    password = settings.redis_password_value()
    if password is not None:
        kwargs["password"] = password
    return kwargs


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if settings.tls_ca_file is not None:
        kwargs["ssl_ca_certs"] = str(settings.tls_ca_file)
    if settings.tls_cert_file is not None:
        kwargs["ssl_certfile"] = str(settings.tls_cert_file)
    if settings.tls_key_file is not None:
        kwargs["ssl_keyfile"] = str(settings.tls_key_file)
    return kwargs


def connect(url: str, settings: Settings) -> Client:
    """A client for ``url``: standalone (blocking pool), Sentinel or Cluster.

    A ``redis://`` URL that points at a cluster node is detected and served by
    the cluster client.
    """
    check_url(url)
    scheme = url.partition("://")[0]
    if scheme.endswith("+sentinel"):
        return _sentinel(parse_multi(url), settings)
    if scheme.endswith("+cluster"):
        return _cluster(parse_multi(url), settings)
    client = _standalone(url, settings)
    if scheme != "unix" and _is_cluster_node(client):
        client.close()
        netloc = url.partition("://")[2].partition("/")[0]
        return _cluster(parse_multi(f"{scheme}+cluster://{netloc}"), settings)
    return client


def _standalone(url: str, settings: Settings) -> Client:
    import redis

    kwargs = _common_kwargs(settings)
    kwargs.update(max_connections=settings.max_connections, timeout=settings.pool_timeout)
    if url.startswith("rediss://"):
        kwargs.update(_tls_kwargs(settings))
    try:
        pool = redis.BlockingConnectionPool.from_url(url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
    return redis.Redis(connection_pool=pool)


def _is_cluster_node(client: Client) -> bool:
    """One INFO round trip; an unreachable server is left for the first command to report."""
    import redis.exceptions as rex

    try:
        with translated_errors():
            return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except StoreTimeout:
        raise  # stalled: the next command would only wait as long again
    except (StoreUnavailable, PermissionDenied, rex.ResponseError):
        return False


def _cluster(endpoint: Endpoint, settings: Settings) -> Client:
    from redis.cluster import ClusterNode, RedisCluster
    from redis.connection import BlockingConnectionPool, SSLConnection

    kwargs = _common_kwargs(settings)
    if endpoint.password is not None:
        kwargs["password"] = endpoint.password
    if endpoint.username is not None:
        kwargs["username"] = endpoint.username
    if endpoint.tls:
        kwargs.update(connection_class=SSLConnection, **_tls_kwargs(settings))
    (host, port), *others = endpoint.hosts
    with translated_errors():
        # redis-py builds each node's pool itself and honours connection_pool_class only
        # for a client made from a URL: the first host is given as one (credentials and
        # TLS travel in kwargs), so node pools wait up to REGCTL_POOL_TIMEOUT for a free
        # connection, as the standalone pool does, instead of failing at once.
        return RedisCluster(
            url=f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}",
            startup_nodes=[ClusterNode(h, p) for h, p in others],  # type: ignore[no-untyped-call]
            connection_pool_class=BlockingConnectionPool,
            max_connections=settings.max_connections,
            timeout=settings.pool_timeout,
            **kwargs,
        )


def _sentinel(endpoint: Endpoint, settings: Settings) -> Client:
    from redis.sentinel import Sentinel

    if not endpoint.path:
        raise ConfigError("a Sentinel URL needs the service name: redis+sentinel://h:p/mymaster")
    service, *rest = endpoint.path
    kwargs = _common_kwargs(settings)
    if endpoint.password is not None:
        kwargs["password"] = endpoint.password
    if endpoint.username is not None:
        kwargs["username"] = endpoint.username
    if rest:
        if not rest[0].isdigit():
            raise ConfigError(f"invalid database number {rest[0]!r} in the Sentinel URL")
        kwargs["db"] = int(rest[0])
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "retry": kwargs["retry"],  # else redis-py's own: 10 s of backoff per sentinel
    }
    if settings.sentinel_username:
        sentinel_kwargs["username"] = settings.sentinel_username
    sentinel_password = settings.sentinel_password_value()
    if sentinel_password is not None:
        sentinel_kwargs["password"] = sentinel_password
    if endpoint.tls:
        kwargs.update(ssl=True, **_tls_kwargs(settings))
        sentinel_kwargs.update(ssl=True, **_tls_kwargs(settings))
    sentinel = Sentinel(endpoint.hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        service,
        connection_pool_class=_waiting_sentinel_pool(),
        max_connections=settings.max_connections,
        pool_timeout=settings.pool_timeout,
    )
    watcher = SwitchWatcher(sentinel, service, client.connection_pool)
    watcher.start()
    _WATCHERS[client.connection_pool] = watcher
    return client


def _waiting_sentinel_pool() -> type:
    """redis-py's Sentinel pool fails at once when every connection is busy; this one
    waits up to REGCTL_POOL_TIMEOUT for one to come back, as the standalone pool does."""
    from redis.sentinel import SentinelConnectionPool

    class WaitingSentinelPool(SentinelConnectionPool):
        def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
            self._wait_s = kwargs.pop("pool_timeout")
            super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
            self._slots = threading.BoundedSemaphore(self.max_connections)

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            if not self._slots.acquire(timeout=self._wait_s):
                import redis.exceptions as rex

                raise rex.ConnectionError("No connection available.")  # -> PoolExhausted
            try:
                return super().get_connection(*args, **kwargs)
            except BaseException:
                self._slots.release()
                raise

        def release(self, connection: Any) -> None:
            try:
                super().release(connection)
            finally:
                with contextlib.suppress(ValueError):  # released twice: no extra slot
                    self._slots.release()

    return WaitingSentinelPool


# Sentinel events about a failover of a service (published by the sentinel running it)
# and how long writes wait on each: from the replica's selection (before it is
# promoted) to the switch's announcement, writes to the old master would be lost.
_FAILOVER_BEGINS = ("+selected-slave", "+failover-state-send-slaveof-noone")
_FAILOVER_ENDS = (
    "+switch-master",
    "-failover-abort-not-elected",
    "-failover-abort-slave-timeout",
    "-failover-abort-no-good-slave",
    "-failover-abort-master-is-back",
)
# The longest a write waits for a switch that was begun (a failover that neither ends
# nor aborts in this time is not happening any more).
FAILOVER_PAUSE_S = 10.0


class SwitchWatcher:
    """Follows one service's failovers as its sentinels announce them, one listener
    thread per sentinel (only the one running a failover announces its start).

    From the replica's selection until the switch, writes wait (``failing_over``):
    the old master would take them and lose them when it turns replica. On the switch
    the pool learns the new master at once (idle connections to the old one are
    closed, busy ones when they come back) and the announcing sentinel is asked first
    from then on. Without this, pooled connections would keep writing to the demoted
    master for about ten seconds, and every one of those writes would be lost."""

    def __init__(self, sentinel: Any, service: str, pool: Any) -> None:
        self.sentinel, self.service, self.pool = sentinel, service, pool
        self.stopped = threading.Event()
        self._paused_until = 0.0
        self.switches = 0  # how many switches it has applied (diagnostics, tests)
        self._threads = [
            threading.Thread(
                target=self._follow, args=(s,), name=f"regctl-sentinel-{service}", daemon=True
            )
            for s in sentinel.sentinels
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def failing_over(self) -> bool:
        import time

        return time.monotonic() < self._paused_until

    def _follow(self, sentinel: Any) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):  # the sentinel is away: listen again soon
                self._listen(sentinel)
            self.stopped.wait(0.5)

    def _listen(self, sentinel: Any) -> None:
        import time

        pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(*_FAILOVER_BEGINS, *_FAILOVER_ENDS)
            while not self.stopped.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is None or self._service_of(message) != self.service:
                    continue
                channel = _text(message["channel"])
                if channel in _FAILOVER_BEGINS:
                    self._paused_until = time.monotonic() + FAILOVER_PAUSE_S
                    continue
                if channel == "+switch-master":
                    self._switched(sentinel)
                self._paused_until = 0.0
        finally:
            pubsub.close()

    @staticmethod
    def _service_of(message: dict[str, Any]) -> str:
        """+switch-master: "<service> <old ip> <port> <new ip> <port>"; the others:
        "<kind> <name> <ip> <port> @ <service> <ip> <port>"."""
        text = _text(message["data"])
        return text.partition(" @ ")[2].split(" ")[0] if " @ " in text else text.split(" ")[0]

    def _switched(self, announcer: Any) -> None:
        order = self.sentinel.sentinels
        with contextlib.suppress(ValueError):
            order.insert(0, order.pop(order.index(announcer)))
        with contextlib.suppress(Exception):  # no master named yet: the next call asks
            self.pool.get_master_address()
        self.switches += 1

    def stop(self) -> None:
        self.stopped.set()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# The watcher of each Sentinel pool, stopped when its store is closed.
_WATCHERS: weakref.WeakKeyDictionary[Any, SwitchWatcher] = weakref.WeakKeyDictionary()


def _watcher(client: Client) -> SwitchWatcher | None:
    pool = getattr(client, "connection_pool", None)  # (a cluster client has none)
    return None if pool is None else _WATCHERS.get(pool)


def failing_over(client: Client) -> bool:
    """Whether a Sentinel failover of ``client``'s service is under way (writes wait)."""
    watcher = _watcher(client)
    return watcher is not None and watcher.failing_over


def stop_watching(client: Client) -> None:
    """Stop the Sentinel switch watcher of ``client``, if it has one."""
    watcher = _watcher(client)
    if watcher is not None:
        watcher.stop()


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turn redis-py exceptions into the regctl error tree."""
    import redis.exceptions as rex

    try:
        yield
    except RegctlError:
        raise
    except (rex.AuthenticationError, rex.AuthorizationError) as exc:
        text = first_line(exc)
        if text.startswith(("HELLO must be called", "Authentication required")):
            raise PermissionDenied(
                "Redis requires a password, and none was given",
                "put it in the Redis URL (redis://:PASSWORD@host) or REGCTL_REDIS_PASSWORD",
            ) from None
        raise PermissionDenied(
            f"Redis refused the credentials: {text.rstrip('.')}",
            "check the username and password in the Redis URL or REGCTL_REDIS_PASSWORD",
        ) from None
    except rex.NoPermissionError as exc:
        text = first_line(exc).partition(" script: ")[0]  # drop the script's sha and line
        if text.startswith("the Redis user may not run"):  # a script's own check, nothing done
            raise PermissionDenied(
                f"{text}; nothing was changed",
                "grant it in the user's ACL (the README lists every command regctl needs)",
            ) from None
        raise PermissionDenied(
            f"Redis denied a command: {text}",
            "grant the regctl user the commands and keys listed in the README (ACL)",
        ) from None
    except rex.OutOfMemoryError:
        raise _store_full() from None
    except (
        rex.ReadOnlyError,
        rex.ClusterDownError,
        rex.TryAgainError,
        rex.MovedError,
        rex.AskError,
        rex.ClusterError,  # redis-py's redirections ran out (TTL exhausted)
    ) as exc:
        raise _cannot_serve(exc) from None
    except rex.NoScriptError:  # reloaded and resent several times: it keeps vanishing
        raise StoreUnavailable(
            "Redis kept losing regctl's scripts (SCRIPT FLUSH in a loop, or failovers)",
            "find what flushes the script cache; nothing of this call was run",
        ) from None
    except rex.ResponseError as exc:
        # (a pipeline's reply says "Command # 3 (HGETALL k) of pipeline caused error: …")
        text = str(exc).rpartition("of pipeline caused error: ")[2]
        # Errors raised inside a script arrive as plain ResponseError with the code inside.
        if "OOM command not allowed" in text:
            raise _store_full() from None
        if "can't run this command or subcommand" in text:
            raise PermissionDenied(SCRIPT_DENIED, "run `regctl doctor` to name it") from None
        if "NOPERM" in text:
            raise PermissionDenied(f"Redis denied a command: {first_line(exc)}") from None
        if text.startswith("WRONGTYPE"):
            raise DamagedRecord(
                "a key under regctl's prefix holds another kind of value than regctl "
                "writes there (WRONGTYPE)",
                "`regctl doctor` names it; something else writes under this prefix",
            ) from None
        if text.startswith(_NOT_SERVING) or "WAIT cannot be used with replica" in text:
            raise _cannot_serve(exc) from None
        raise
    except rex.ConnectionError as exc:
        from redis.sentinel import MasterNotFoundError

        if isinstance(exc, MasterNotFoundError):  # its message lists every client's repr
            service = str(exc).split("'")[1] if str(exc).count("'") >= 2 else "the service"
            raise StoreUnavailable(
                f"Redis is unavailable: no sentinel named a master for {service!r}",
                "check that the sentinels run and the service name in the URL is right",
            ) from None
        if "No connection available" in str(exc) or isinstance(exc, rex.MaxConnectionsError):
            raise PoolExhausted(
                "every pooled Redis connection stayed busy past the pool timeout",
                "raise REGCTL_MAX_CONNECTIONS or REGCTL_POOL_TIMEOUT",
            ) from None
        raise StoreUnavailable(
            f"Redis is unavailable: {first_line(exc)}",
            "check that the server is running and the URL is right",
        ) from None
    except rex.RedisClusterException as exc:  # no node of the cluster answered
        raise StoreUnavailable(
            f"Redis is unavailable: no node of the cluster answered ({first_line(exc)})",
            "check that the nodes run and the host:port list in the URL",
        ) from None
    except rex.InvalidResponse:
        raise StoreUnavailable(
            "the server does not answer in the Redis protocol",
            "check the host and port in the Redis URL",
        ) from None
    except rex.TimeoutError as exc:
        raise StoreTimeout(
            f"Redis timed out: {first_line(exc)}",
            "the server is stalled or overloaded; see `regctl health`",
        ) from None


# Error replies that mean "not here, not now" (a script's inner error arrives as text).
_NOT_SERVING = ("BUSY", "READONLY", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK ")


def _cannot_serve(exc: BaseException) -> NotServing:
    return NotServing(
        f"Redis cannot serve this call now: {first_line(exc)}",
        "a failover or a slot migration is under way, or too few replicas are up; "
        "nothing was changed: try again",
    )


@contextlib.contextmanager
def call_deadline(budget_s: float) -> Iterator[float]:
    """The deadline of the call under way (monotonic), set here if none is: every
    retry inside it, redis-py's and regctl's own, shares it."""
    import time

    outer = _DEADLINE.get()
    if outer is not None:
        yield outer
        return
    deadline = time.monotonic() + budget_s
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def _store_full() -> StoreFull:
    return StoreFull(
        "Redis is out of memory and refused the write; nothing was stored",
        "raise maxmemory or purge expired registrations",
    )
