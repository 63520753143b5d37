"""Redis connections: URL to client, pool, timeouts, retries, and error translation.

Every regctl script carries an idempotency token or is naturally idempotent, so a
replay after a lost reply is safe; that is why retries are on for all commands.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

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
CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "regctl_deadline", default=None
)


class _Budget:
    """The policy of both clients' retry loops: one deadline per call (connect, every
    try and every backoff together), instead of (retries + 1) x the socket timeout."""

    _backoff: Any
    _retries: int
    budget_s: float
    # On Cluster, how long one try may take: redis-py's cluster loop asks for a count of
    # tries once per command, then tries that often with no deadline (None elsewhere).
    per_try_s: float | None = None

    def get_retries(self) -> int:
        """The tries after the first (Cluster: those that fit in the call's time left,
        each as long as a socket timeout may make it)."""
        if self.per_try_s is None:
            return self._retries
        deadline = CALL_DEADLINE.get()
        left = self.budget_s if deadline is None else deadline - time.monotonic()
        return max(0, min(self._retries, int(left // self.per_try_s) - 1))

    def _begin(self) -> tuple[float, contextvars.Token[float | None] | None]:
        self._backoff.reset()
        outer = CALL_DEADLINE.get()
        if outer is not None:
            return outer, None
        deadline = time.monotonic() + self.budget_s
        return deadline, CALL_DEADLINE.set(deadline)

    @staticmethod
    def _retryable(error: Exception, is_retryable: Callable[[Exception], bool] | None) -> None:
        """Raises ``error`` when trying again cannot help: refused credentials (which
        redis.asyncio wraps in a ConnectionError, its cause) would be refused again."""
        import redis.exceptions as rex

        refused = (rex.AuthenticationError, rex.AuthorizationError)
        if isinstance(error, refused) or isinstance(error.__cause__, refused):
            raise error
        if is_retryable is not None and not is_retryable(error):
            raise error

    def _pause(self, error: Exception, failures: int, deadline: float) -> float:
        """How long to wait before the next try; raises ``error`` when none is left
        (a try that starts in time may run its socket timeout)."""
        pause = float(self._backoff.compute(failures))
        if failures > self._retries or time.monotonic() + pause >= deadline:
            raise error
        return pause


def deadline_retry(retries: int, budget_s: float) -> Any:
    """redis-py's Retry, bounded by one deadline per call (see ``_Budget``)."""
    from redis.retry import Retry

    class DeadlineRetry(_Budget, Retry):
        def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            deadline, token = self._begin()
            failures = 0
            try:
                while True:
                    try:
                        return do()
                    except self._supported_errors as error:
                        self._retryable(error, is_retryable)
                        failures += 1
                        fail(error, failures) if with_failure_count else fail(error)
                        time.sleep(self._pause(error, failures, deadline))
            finally:
                if token is not None:
                    CALL_DEADLINE.reset(token)

    return _budgeted(DeadlineRetry, retries, budget_s)


def async_deadline_retry(retries: int, budget_s: float) -> Any:
    """``deadline_retry`` for ``redis.asyncio`` clients."""
    import asyncio

    from redis.asyncio.retry import Retry

    class AsyncDeadlineRetry(_Budget, Retry):
        async def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            deadline, token = self._begin()
            failures = 0
            try:
                while True:
                    try:
                        return await do()
                    except self._supported_errors as error:
                        self._retryable(error, is_retryable)
                        failures += 1
                        await (fail(error, failures) if with_failure_count else fail(error))
                        await asyncio.sleep(self._pause(error, failures, deadline))
            finally:
                if token is not None:
                    CALL_DEADLINE.reset(token)

    return _budgeted(AsyncDeadlineRetry, retries, budget_s)


def _budgeted(kind: type, retries: int, budget_s: float) -> Any:
    from redis.backoff import ExponentialWithJitterBackoff

    retry = kind(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries)
    retry.budget_s = budget_s
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


def pool_wait(wait: float | None) -> float | None:
    """How long a call may wait for a free pooled connection: ``wait``
    (REGCTL_POOL_TIMEOUT; None, as long as it takes), and no longer than the call's
    deadline leaves, so a call on a stalled server's busy pool ends with the others."""
    deadline = CALL_DEADLINE.get()
    if deadline is None:
        return wait
    left = max(0.0, deadline - time.monotonic())
    return left if wait is None else min(wait, left)


@functools.cache
def _deadline_pool() -> Any:
    """redis-py's blocking pool, waiting for a connection within ``pool_wait``, and
    handing one out and taking it back at half the cost while nothing watches it."""
    from queue import Empty, Full

    from redis.connection import BlockingConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.observability.recorder import is_enabled as telemetry

    class DeadlinePool(BlockingConnectionPool):
        _wait_s: float | None

        @property  # (redis-py reads it at each wait)
        def timeout(self) -> float | None:
            return pool_wait(self._wait_s)

        @timeout.setter
        def timeout(self, value: float | None) -> None:
            self._wait_s = value

        def _watched(self) -> bool:
            return bool(
                telemetry()
                or self._in_maintenance
                or self.cache is not None
                or self.maint_notifications_enabled()  # type: ignore[no-untyped-call]
            )

        def get_connection(self, *args: Any, **options: Any) -> Any:
            # redis-py's own, less what serves no one here: its pool metrics (a dozen
            # calls a checkout, counted only while its OpenTelemetry metrics are on) and
            # the maintenance-window locking (only with maintenance notifications or a
            # client-side cache). About 5 µs of a 10 µs checkout and release, on every
            # command. Where any of those is on, redis-py's own runs, and so does its
            # release: a connection is marked ``_watched`` False only while it is out
            # this way, so each goes back the way it came (counts stay balanced if the
            # metrics start between, or redis-py gives one back that failed to connect).
            if args or self._watched():
                return super().get_connection(*args, **options)  # type: ignore[no-untyped-call]
            self._checkpid()
            try:
                connection = self.pool.get(block=True, timeout=self.timeout)
            except Empty:
                raise RedisConnectionError("No connection available.") from None
            try:
                if connection is None:
                    connection = self.make_connection()  # type: ignore[no-untyped-call]
                connection._watched = False
                # As redis-py's: connected, and nothing unread on it (a reply left by
                # an interrupted call, or the server closed it while it was idle).
                connection.connect()
                try:
                    if connection.can_read():
                        raise RedisConnectionError("Connection has data")
                except (RedisConnectionError, TimeoutError, OSError):
                    connection.disconnect()
                    connection.connect()
                    if connection.can_read():
                        raise RedisConnectionError("Connection not ready") from None
            except BaseException:
                if connection is None:
                    self.pool.put_nowait(None)
                else:
                    self.release(connection)
                raise
            return connection

        def release(self, connection: Any) -> None:
            if getattr(connection, "_watched", True):
                super().release(connection)  # type: ignore[no-untyped-call]
                return
            connection._watched = True
            self._checkpid()
            if not self.owns_connection(connection):  # made before a fork
                connection.disconnect()
                self.pool.put_nowait(None)
                return
            if connection.should_reconnect():
                connection.disconnect()
            with contextlib.suppress(Full):
                self.pool.put_nowait(connection)

        def disconnect_free_connections(self, moving_address_src: str | None = None) -> None:
            # A Cluster client calls this on every node's pool when it reloads the slot
            # map. redis-py's own lists the free connections, then closes them one by
            # one, while another thread may take one of them from the queue (it has
            # its own lock) and be reading a reply from it: "Bad file descriptor" for a
            # call that ran. With the queue held, none is taken until all are closed.
            with self._lock, self.pool.mutex:
                for conn in self.pool.queue:
                    if conn is not None and self._should_update_connection(
                        conn, "connected_address", moving_address_src
                    ):
                        conn.disconnect()

    return DeadlinePool


def _standalone(url: str, settings: Settings) -> Client:
    import redis

    kwargs = _common_kwargs(settings)
    kwargs.update(max_connections=settings.max_connections, timeout=settings.pool_timeout)
    if url.startswith("rediss://"):
        kwargs.update(_tls_kwargs(settings))
    try:
        pool = _deadline_pool().from_url(url, **kwargs)
        # A query parameter no connection takes (?foo=1) fails here, not at the first
        # command (a connection made unconnected: no I/O).
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
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
    from redis.connection import SSLConnection

    kwargs = _common_kwargs(settings)
    kwargs["retry"].per_try_s = max(kwargs["socket_timeout"], kwargs["socket_connect_timeout"])
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
            connection_pool_class=_deadline_pool(),
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
            raise ConfigError("the Sentinel URL's database is not a number")  # (not shown)
        kwargs["db"] = int(rest[0])
    # Asking the sentinels in turn (each one silent, or not speaking TLS) fits in one
    # call's deadline, not one socket timeout per sentinel.
    each_s = settings.call_budget / len(endpoint.hosts)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": min(settings.socket_timeout, each_s),
        "socket_connect_timeout": min(settings.connect_timeout, each_s),
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
            # The connections handed out, each holding a slot its release gives back. (A
            # connection that fails to connect is released by redis-py before it is
            # handed out: its slot is given back once, by get_connection.)
            self._holding: set[int] = set()

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            if not self._slots.acquire(timeout=pool_wait(self._wait_s)):
                import redis.exceptions as rex

                raise rex.ConnectionError("No connection available.")  # -> PoolExhausted
            try:
                connection = super().get_connection(*args, **kwargs)
            except BaseException:
                self._slots.release()
                raise
            self._holding.add(id(connection))
            return connection

        def release(self, connection: Any) -> None:
            try:
                super().release(connection)
            finally:
                if id(connection) in self._holding:
                    self._holding.discard(id(connection))
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


def async_twin(client: Client) -> Any:
    """A ``redis.asyncio`` client for the servers of the sync ``client``: the same
    topology, credentials, TLS, timeouts, pool size and pool wait, and retries within
    the same budget. On Sentinel it shares the sync client's failover watcher."""
    from redis.cluster import RedisCluster
    from redis.sentinel import SentinelConnectionPool

    if isinstance(client, RedisCluster):
        return _async_cluster(client)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return _async_sentinel(client, pool)
    return _async_standalone(pool)


def check_decoding(client: Any) -> None:
    """Refuse a client (sync or asyncio, any topology) that hands back bytes: every
    reply regctl reads is text, and bytes would read as another secret's codes."""
    nodes = getattr(client, "nodes_manager", None)
    pool = nodes if nodes is not None else getattr(client, "connection_pool", None)
    made_with = getattr(pool, "connection_kwargs", None)
    if isinstance(made_with, dict) and not made_with.get("decode_responses"):
        raise ConfigError(
            "the Redis client hands back bytes, and regctl reads text",
            "make it with decode_responses=True: "
            'redis.Redis.from_url("redis://…", decode_responses=True)',
        )


def pool_limits(client: Client) -> tuple[int, float | None]:
    """How many connections the sync ``client`` may open (per node on Cluster), and how
    long a call waits for a free one (None: as long as it takes)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
        return int(kwargs.get("max_connections") or 2**31), kwargs.get("timeout", 0.0)
    pool = client.connection_pool
    # (a pool that does not wait, redis-py's default one, fails at once)
    return int(pool.max_connections), getattr(pool, "_wait_s", getattr(pool, "timeout", 0.0))


@functools.cache
def _quick_async_pool() -> Any:
    """redis.asyncio's blocking pool, handing out a free connection (or room for one)
    without its lock, its timer and its metrics while nothing waits and nothing watches:
    about 10 µs of a 24 µs checkout and release, on every command. (Taking and giving
    back make no await before they are done: on one event loop no other task can come
    between.) A call that must wait, and every call while redis-py's metrics or its
    maintenance handling are on, goes redis-py's way."""
    from redis.asyncio.connection import BlockingConnectionPool
    from redis.event import AsyncAfterConnectionReleasedEvent
    from redis.observability.recorder import is_enabled as telemetry

    class QuickPool(BlockingConnectionPool):
        def _watched(self) -> bool:
            return bool(
                telemetry() or self._in_maintenance or self.maint_notifications_enabled()  # type: ignore[no-untyped-call]
            )

        async def get_connection(self, *args: Any, **options: Any) -> Any:
            # (``_watched`` False only while out this way, as DeadlinePool's)
            if (
                args
                or self._condition._waiters  # (tasks waiting for a connection)
                or self._condition.locked()  # (queued behind them, never ahead)
                or not self.can_get_connection()
                or self._watched()
            ):
                return await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]
            connection = self.get_available_connection()  # type: ignore[no-untyped-call]
            connection._watched = False
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection

        async def release(self, connection: Any) -> None:
            if getattr(connection, "_watched", True):
                await super().release(connection)
                return
            connection._watched = True
            self._in_use_connections.remove(connection)
            if connection.should_reconnect():
                await connection.disconnect()
            self._available_connections.append(connection)
            event = AsyncAfterConnectionReleasedEvent(connection)  # type: ignore[no-untyped-call]
            await cast(Any, self._event_dispatcher).dispatch_async(event)
            if self._condition._waiters:  # (one waits for it: woken, redis-py's way)
                async with self._condition:
                    self._condition.notify()

    return QuickPool


def _async_standalone(pool: Any) -> Any:
    import redis
    import redis.asyncio as aioredis
    from redis.asyncio import connection as aio

    classes = {
        redis.Connection: aio.Connection,
        redis.UnixDomainSocketConnection: aio.UnixDomainSocketConnection,
        redis.SSLConnection: aio.SSLConnection,
    }
    kind = classes.get(pool.connection_class)
    if kind is None:
        raise ConfigError(
            f"the async manager cannot open {pool.connection_class.__name__} connections",
            "build the client with redis.Redis.from_url or regctl's settings",
        )
    kind = quick_writes(kind)
    kwargs = _async_kwargs(pool.connection_kwargs, kind)
    twin: aio.ConnectionPool
    if isinstance(pool, redis.BlockingConnectionPool):
        kwargs["timeout"] = pool.timeout
        twin = _quick_async_pool()(
            connection_class=kind, max_connections=pool.max_connections, **kwargs
        )
    else:
        twin = aio.ConnectionPool(
            connection_class=kind, max_connections=pool.max_connections, **kwargs
        )
    return aioredis.Redis(connection_pool=twin)


def _async_cluster(client: Any) -> Any:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    nodes = client.nodes_manager
    kwargs = dict(nodes.connection_kwargs)
    kwargs.pop("max_connections", None)
    if kwargs.pop("connection_class", None) is not None and kwargs.get("ssl_cert_reqs"):
        kwargs["ssl"] = True  # a TLS cluster: the sync client names its SSLConnection class
    kwargs = _async_kwargs({**kwargs, "retry": client.retry}, RedisCluster)
    with translated_errors():
        twin = _closing_cluster()(
            startup_nodes=[ClusterNode(n.host, n.port) for n in nodes.startup_nodes.values()],
            # The async manager's places are the limit (``aio._NodePlaces``: the pool
            # size per node, charged to the node that owns a call's slot, and as many
            # for commands without a key). A call redirected during a slot move or after a
            # failover runs on another node than it was charged to, so redis-py's own
            # per-node limit, which fails a call at once, is lifted: never the one hit.
            max_connections=2**31,
            **kwargs,
        )
    # (redis.asyncio's cluster client takes no connection class: the nodes it learns
    # are made with these arguments, at its first command)
    made = twin.nodes_manager.connection_kwargs
    made["connection_class"] = _kept_while_in_use(quick_writes(made["connection_class"]))
    return twin


@functools.cache
def _closing_cluster() -> Any:
    """redis.asyncio's Cluster client, whose ``aclose`` closes its nodes' connections
    also after a node failed a call: it closes nothing while it means to learn the
    slot map again (it left every connection open, and a warning each)."""
    from redis.asyncio.cluster import RedisCluster

    class ClosingCluster(RedisCluster):
        async def aclose(self) -> None:
            await super().aclose()
            await self.nodes_manager.aclose()  # (again, when it did: nothing is left)
            await self.nodes_manager.aclose("startup_nodes")

    return ClosingCluster


@functools.cache
def _kept_while_in_use(kind: type) -> Any:
    """``kind`` for a redis.asyncio Cluster node, whose idle connections are closed
    from outside (``ClusterNode.disconnect_free_connections``, after any node error).
    It lists them, then closes them in tasks of their own, and a call may take one in
    between and send on it: closed under the call's read, a write that ran was reported
    as failed ("may or may not have happened"). As regctl's sync pool does, a connection
    taken is not closed under its call: the close waits for the call's end.

    A call holds its connection from its first write until its node asks whether to
    close it (``should_reconnect``, once the replies are read, on every path)."""
    import asyncio

    class KeptWhileInUse(kind):  # type: ignore[misc]
        caller: asyncio.Task[Any] | None = None

        async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
            self.caller = asyncio.current_task()
            await super().send_packed_command(*args, **kwargs)

        def should_reconnect(self) -> bool:
            if self.caller is asyncio.current_task():
                self.caller = None  # (its node takes it back)
            return bool(super().should_reconnect())

        async def disconnect(self, nowait: bool = False, **kwargs: Any) -> None:
            caller = self.caller
            if caller is not None and caller.done():
                caller = None  # (a call that ended without giving it back holds nothing)
            if caller is not None and caller is not asyncio.current_task():
                self.mark_for_reconnect()  # (its node closes it when the call is over)
                return
            # One no call holds is closed at once: while a close waited for the socket
            # to end, a call could take the connection, connect it anew and send, and
            # the close's end dropped the new socket under the call's read.
            await super().disconnect(nowait=nowait or caller is None, **kwargs)

    KeptWhileInUse.__name__ = KeptWhileInUse.__qualname__ = f"Kept{kind.__name__}"
    return KeptWhileInUse


def _async_sentinel(client: Any, pool: Any) -> Any:
    import redis
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import (
        Sentinel,
        SentinelManagedConnection,
        SentinelManagedSSLConnection,
    )

    manager = pool.sentinel_manager
    hosts = [_host_port(s) for s in manager.sentinels]
    tls = issubclass(pool.connection_class, redis.SSLConnection)
    kind = quick_writes(SentinelManagedSSLConnection if tls else SentinelManagedConnection)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        # (a sentinel is asked through a client of its own: ssl=True and the TLS files)
        sentinel_kwargs=_async_kwargs(manager.sentinel_kwargs, aioredis.Redis),
        **_async_kwargs(manager.connection_kwargs, kind),
    )
    twin = sentinel.master_for(
        pool.service_name,
        connection_pool_class=_switching_async_pool(),
        connection_class=kind,
        max_connections=pool.max_connections,
    )
    watcher = watcher_of(client)
    if watcher is not None:  # it pauses the twin's writes too; the twin follows its switches
        _WATCHERS[twin.connection_pool] = watcher
        twin.connection_pool.follow(watcher)
    return twin


@functools.cache
def quick_writes(kind: type) -> Any:
    """``kind``, a redis.asyncio connection class, sending a command the socket takes
    whole without the ``asyncio.wait_for`` round redis-py gives every write when a
    socket timeout is set (a task and a timer: about a fifth of a call on a unix
    socket). Only a write that leaves bytes buffered waits, redis-py's way, within
    the timeout."""
    import redis.exceptions as rex

    class QuickWrites(kind):  # type: ignore[misc]
        async def send_packed_command(
            self, command: str | bytes | list[bytes], check_health: bool = True
        ) -> None:
            if self.is_connected and self._writer.transport.is_closing():
                # Lost while idle (a reset from the network): Python 3.12 raises on a
                # write to it, and nothing was sent yet, so a new connection is safe.
                await self.disconnect(nowait=True)
            if self.is_connected and check_health:
                await self.check_health()  # (it may reconnect, or drop the connection)
            if not self.is_connected:  # connect, redis-py's way
                await super().send_packed_command(command, check_health=False)
                return
            if isinstance(command, str):
                command = command.encode()
            if isinstance(command, bytes):
                command = [command]
            writer = self._writer
            try:
                writer.writelines(command)
            except Exception as exc:  # (part may be sent: the connection is done)
                await self.disconnect(nowait=True)
                raise rex.ConnectionError(f"Error while writing to socket: {exc}") from exc
            if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
                # (nothing more to write: its drain waits out the rest, or reports
                # the failure, as it does after writing)
                await super().send_packed_command([], check_health=False)

    QuickWrites.__name__ = QuickWrites.__qualname__ = f"Quick{kind.__name__}"
    return QuickWrites


@functools.cache
def _switching_async_pool() -> Any:
    """redis.asyncio's Sentinel pool, following the sync client's ``SwitchWatcher``.

    After a switch the watcher saw, no connection is handed out before the pool has
    asked the sentinels for the new master (the announcing one first: the others may
    still name the old one) and closed its idle connections to the old one; and a
    connection busy at the switch is closed when it comes back (redis.asyncio takes it
    back as it is). Else later calls would write to the old master, which takes writes
    until it turns replica and loses them then: a registration verified twice."""
    import asyncio

    from redis.asyncio.sentinel import SentinelConnectionPool

    class SwitchingSentinelPool(SentinelConnectionPool):
        watcher: SwitchWatcher | None = None
        switches_seen = 0

        def follow(self, watcher: SwitchWatcher) -> None:
            self.watcher, self.switches_seen = watcher, watcher.switches
            self._switching = asyncio.Lock()

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            watcher = self.watcher
            if watcher is not None and self.switches_seen != watcher.switches:
                async with self._switching:  # (one task asks; the others wait for it)
                    seen = watcher.switches
                    if self.switches_seen != seen:
                        self._ask_first(watcher.announcer)
                        await self.get_master_address()  # type: ignore[no-untyped-call]
                        self.switches_seen = seen
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

        def _ask_first(self, address: tuple[str, int] | None) -> None:
            order = self.sentinel_manager.sentinels
            for sentinel in list(order):
                if _host_port(sentinel) == address:
                    order.remove(sentinel)
                    order.insert(0, sentinel)

        async def release(self, connection: Any) -> None:
            # (its owns_connection cannot be used: it calls one its base lacks)
            master = self.master_address
            if self.is_master and master and (connection.host, connection.port) != master:
                await connection.disconnect()  # to a master it no longer is
            await super().release(connection)

    return SwitchingSentinelPool


def _host_port(client: Any) -> tuple[str, int]:
    """Where a (sentinel's) client connects, sync or asyncio."""
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("host"), kwargs.get("port")


def _async_kwargs(kwargs: dict[str, Any], kind: Any) -> dict[str, Any]:
    """A sync client's connection arguments as ``kind`` (an asyncio class) takes them:
    the retry budget in its asyncio form, and the arguments only the sync side knows
    left out."""
    import inspect

    accepted = {
        name
        for cls in kind.__mro__
        if "__init__" in cls.__dict__
        for name in inspect.signature(cls.__init__).parameters
    }
    twin = {k: v for k, v in kwargs.items() if k in accepted and k != "retry"}
    retry = kwargs.get("retry")
    if retry is not None:
        from redis.asyncio.retry import Retry

        budget = getattr(retry, "budget_s", None)
        if budget is None:
            twin["retry"] = Retry(retry._backoff, retry._retries)
        else:
            twin["retry"] = async_deadline_retry(retry._retries, budget)
            twin["retry"].per_try_s = retry.per_try_s
    return twin


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
        self.announcer: tuple[str, int] | None = None  # the last switch's sentinel
        self._threads = [
            threading.Thread(
                target=self._follow,
                args=(s, _listener(s)),
                name=f"regctl-sentinel-{service}",
                daemon=True,
            )
            for s in sentinel.sentinels
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def failing_over(self) -> bool:
        return time.monotonic() < self._paused_until

    def _follow(self, sentinel: Any, listener: Any) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):  # the sentinel is away: listen again soon
                self._listen(sentinel, listener)
            self.stopped.wait(0.5)
        listener.close()

    def _listen(self, sentinel: Any, listener: Any) -> None:
        pubsub = listener.pubsub(ignore_subscribe_messages=True)
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
        self.announcer = _host_port(announcer)
        with contextlib.suppress(Exception):  # no master named yet: the next call asks
            self.pool.get_master_address()
        self.switches += 1

    def stop(self) -> None:
        self.stopped.set()


def no_retries() -> Any:
    """redis-py's Retry that tries once: for a client whose caller asks again itself,
    or must not ask twice."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def _listener(sentinel: Any) -> Any:
    """A client of ``sentinel``'s own for the watcher, which tries each connect once
    (it listens again itself): with the shared client's retries, a watcher stopped
    while its sentinels were away lived on in their backoff for a call's deadline."""
    import redis

    pool = sentinel.connection_pool
    once = {**pool.connection_kwargs, "retry": no_retries()}
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **once)
    )


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# The watcher of each Sentinel pool, stopped when its store is closed.
_WATCHERS: weakref.WeakKeyDictionary[Any, SwitchWatcher] = weakref.WeakKeyDictionary()


def watcher_of(client: Client) -> SwitchWatcher | None:
    """The failover watcher of a Sentinel ``client`` (None for other clients)."""
    pool = getattr(client, "connection_pool", None)  # (a cluster client has none)
    return None if pool is None else _WATCHERS.get(pool)


# One EVALSHA: (sha, keys, args) -> the reply.
ScriptSender = Callable[[str, Sequence[str], Sequence[Any]], Any]


def script_sender(client: Client) -> ScriptSender:
    """How one script call is sent on ``client``.

    On a plain pooled client, sync or the async manager's asyncio twin, straight to a
    connection of its pool, under the connection's own retry policy (the call's
    deadline): what redis-py's ``execute_command`` does, without its generic dispatch
    (parsing the command's name, response callbacks, per-command telemetry), which
    cost about 20 µs a call on a 2-core machine, a fifth of a round trip
    (docs/performance.md). Any other client sends it its own way: Cluster, a client of
    one dedicated connection, and one whose ``execute_command`` someone hooked (a
    subclass, a patch of the class or of the client: tracing, as Sentry's does), or
    while redis-py's own OpenTelemetry metrics are on (asked at each call: they may
    be switched on later), which its dispatch records."""
    import redis
    import redis.asyncio as aioredis
    import redis.exceptions as rex
    from redis.observability.recorder import is_enabled as telemetry

    from regctl.bridge import Awaited, settled

    def evalsha(sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return client.evalsha(sha, len(keys), *keys, *args)

    if _plain(client, redis.Redis):

        def send(sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            if telemetry():
                return evalsha(sha, keys, args)
            pool = client.connection_pool
            conn: Any = pool.get_connection()
            try:

                def once() -> Any:
                    conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return conn.read_response()

                # (a failed try's connection is closed; the next try connects again)
                return conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
            except BaseException as exc:
                # Interrupted between sending and reading (Ctrl-C): its reply may be on
                # its way, and the next call on this connection would read it as its own.
                if not isinstance(exc, rex.ResponseError):
                    conn.disconnect()
                raise
            finally:
                pool.release(conn)

        return send
    target: Any = client.target if isinstance(client, Awaited) else None
    if _plain(target, aioredis.Redis):
        # (no await between the send and the read: a cancellation lands in one of
        # them, and each closes the connection on it)

        async def sent(sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            pool = target.connection_pool
            conn: Any = await pool.get_connection()
            try:

                async def once() -> Any:
                    await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return await conn.read_response()

                return await conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
            finally:
                await pool.release(conn)

        return lambda sha, keys, args: (
            evalsha(sha, keys, args) if telemetry() else settled(sent(sha, keys, args))
        )
    return evalsha


def _plain(client: Any, kind: Any) -> bool:
    """Whether ``client`` is a ``kind`` (redis-py's sync or asyncio client) that sends
    each command on a connection of its pool with redis-py's own ``execute_command``:
    not overridden, nor replaced on the class or on the client."""
    import sys

    own = kind.execute_command
    code = getattr(own, "__code__", None)
    return (
        isinstance(client, kind)
        and getattr(client, "connection", None) is None
        and getattr(client.execute_command, "__func__", None) is own
        and code is not None
        and code.co_filename == getattr(sys.modules[kind.__module__], "__file__", None)
    )


def is_cluster(client: Client) -> bool:
    """Whether ``client`` is a cluster client, sync or asyncio (behind ``Awaited``)."""
    from redis.cluster import RedisCluster

    target = getattr(client, "target", client)
    if isinstance(target, RedisCluster):
        return True
    if not type(target).__module__.startswith("redis.asyncio"):
        return False  # (a sync client: redis.asyncio is not imported for it)
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    return isinstance(target, AsyncRedisCluster)


def stop_watching(client: Client) -> None:
    """Stop the Sentinel switch watcher of ``client``, if it has one of its own (an
    asyncio twin's is its sync client's: one event loop ending stops nothing)."""
    watcher = watcher_of(client)
    if watcher is not None and watcher.pool is getattr(client, "connection_pool", None):
        watcher.stop()


class translated_errors:  # (named as the function it was: a context manager)
    """Turn redis-py exceptions into the regctl error tree (a class, not a generator:
    it is on every call's path)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, RegctlError):
            mapped = translated(exc)
            if mapped is not exc:
                raise mapped from None


def translated(error: Exception) -> Exception:
    """The regctl error for a redis-py error (``error`` itself when none fits)."""
    import redis.exceptions as rex

    try:
        raise error
    except RegctlError:
        return error
    except (rex.AuthenticationError, rex.AuthorizationError) as exc:
        text = first_line(exc)
        if text.startswith(("HELLO must be called", "Authentication required")):
            return PermissionDenied(
                "Redis requires a password, and none was given",
                "put it in the Redis URL (redis://:PASSWORD@host) or REGCTL_REDIS_PASSWORD",
            )
        return PermissionDenied(
            f"Redis refused the credentials: {text.rstrip('.')}",
            "check the username and password in the Redis URL or REGCTL_REDIS_PASSWORD",
        )
    except rex.NoPermissionError as exc:
        text = first_line(exc).partition(" script: ")[0]  # drop the script's sha and line
        if text.startswith("the Redis user may not run"):  # a script's own check, nothing done
            return PermissionDenied(
                f"{text}; nothing was changed",
                "grant it in the user's ACL (the README lists every command regctl needs)",
            )
        return PermissionDenied(
            f"Redis denied a command: {text}",
            "grant the regctl user the commands and keys listed in the README (ACL)",
        )
    except rex.OutOfMemoryError:
        return _store_full()
    except (
        rex.ReadOnlyError,
        rex.ClusterDownError,
        rex.TryAgainError,
        rex.MovedError,
        rex.AskError,
        rex.ClusterError,  # redis-py's redirections ran out (TTL exhausted)
    ) as exc:
        return _cannot_serve(exc)
    except rex.NoScriptError:  # reloaded and resent several times: it keeps vanishing
        return StoreUnavailable(
            "Redis kept losing regctl's scripts (SCRIPT FLUSH in a loop, or failovers)",
            "find what flushes the script cache; nothing of this call was run",
        )
    except rex.ResponseError as exc:
        # (a pipeline's reply says "Command # 3 (HGETALL k) of pipeline caused error: …")
        text = str(exc).rpartition("of pipeline caused error: ")[2]
        # Errors raised inside a script arrive as plain ResponseError with the code inside.
        if "OOM command not allowed" in text:
            return _store_full()
        if "can't run this command or subcommand" in text:
            return PermissionDenied(SCRIPT_DENIED, "run `regctl doctor` to name it")
        if "NOPERM" in text:
            return PermissionDenied(f"Redis denied a command: {first_line(exc)}")
        if "WRONGTYPE" in text:  # (Redis 6 puts the script's name and line before it)
            return DamagedRecord(
                "a key under regctl's prefix holds another kind of value than regctl "
                "writes there (WRONGTYPE)",
                "`regctl doctor` names it; something else writes under this prefix",
            )
        if text.startswith(_NOT_SERVING) or "WAIT cannot be used with replica" in text:
            return _cannot_serve(exc)
        return exc
    except rex.ConnectionError as exc:
        from redis.sentinel import MasterNotFoundError

        cause = exc.__cause__  # (redis.asyncio wraps a refused AUTH or a timeout so)
        if isinstance(cause, rex.RedisError) and cause is not exc:
            return translated(cause)

        if isinstance(exc, MasterNotFoundError):  # its message lists every client's repr
            service = str(exc).split("'")[1] if str(exc).count("'") >= 2 else "the service"
            return StoreUnavailable(
                f"Redis is unavailable: no sentinel named a master for {service!r}",
                "check that the sentinels run and the service name in the URL is right",
            )
        if "No connection available" in str(exc) or isinstance(exc, rex.MaxConnectionsError):
            return pool_exhausted()
        return StoreUnavailable(
            f"Redis is unavailable: {first_line(exc)}",
            "check that the server is running and the URL is right",
        )
    except rex.RedisClusterException as exc:  # no node of the cluster answered
        return StoreUnavailable(
            f"Redis is unavailable: no node of the cluster answered ({first_line(exc)})",
            "check that the nodes run and the host:port list in the URL",
        )
    except rex.InvalidResponse:
        return StoreUnavailable(
            "the server does not answer in the Redis protocol",
            "check the host and port in the Redis URL",
        )
    except rex.TimeoutError as exc:
        return StoreTimeout(
            f"Redis timed out: {first_line(exc)}",
            "the server is stalled or overloaded; see `regctl health`",
        )
    except Exception:  # not redis-py's: as it is
        return error


# Error replies that mean "not here, not now" (a script's inner error arrives as text).
_NOT_SERVING = ("BUSY", "READONLY", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK ")


def _cannot_serve(exc: BaseException) -> NotServing:
    said = first_line(exc)
    if said == "TTL exhausted.":  # (redis-py's words for it)
        said = "the Cluster kept redirecting the call (a slot on the move)"
    return NotServing(
        f"Redis cannot serve this call now: {said}",
        "a failover or a slot migration is under way, or too few replicas are up; "
        "nothing was changed: try again",
    )


class call_deadline:  # (named as the function it was: a context manager)
    """The deadline of the call under way (monotonic), set here if none is: every
    retry inside it, redis-py's and regctl's own, shares it."""

    __slots__ = ("budget_s", "token")

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> float:
        outer = CALL_DEADLINE.get()
        if outer is not None:
            return outer
        deadline = time.monotonic() + self.budget_s
        self.token = CALL_DEADLINE.set(deadline)
        return deadline

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            CALL_DEADLINE.reset(self.token)


class one_command(call_deadline):
    """``translated_errors`` within a call's one deadline (set here unless a call under
    way set one): for a command sent outside a script (the layout, the secret's
    fingerprint, the audit), so a wait for a pooled connection keeps within it too."""

    __slots__ = ()

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        translated_errors().__exit__(*exc)


def pool_exhausted() -> PoolExhausted:
    return PoolExhausted(
        "every pooled Redis connection stayed busy as long as this call could wait "
        "(the pool timeout, within the call's deadline)",
        "raise REGCTL_MAX_CONNECTIONS, or REGCTL_POOL_TIMEOUT and REGCTL_TIMEOUT",
    )


def _store_full() -> StoreFull:
    return StoreFull(
        "Redis is out of memory and refused the write; nothing was stored",
        "raise maxmemory or purge expired registrations",
    )
