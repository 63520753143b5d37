"""The manager for asyncio code (FastAPI, Starlette, aiohttp): ``await`` every call.

``AsyncRegistrationManager`` has the sync manager's operations, results and errors,
because it runs the sync manager's own code on the event loop over ``redis.asyncio``
(see ``regctl.bridge``): the loop waits on Redis's sockets as it does for any asyncio
client, and there is one implementation of validation, hashing, scripts, retries,
deadlines and decoding. The Argon2id hash runs on a thread, never on the loop.

Its client is the asyncio twin of the sync manager's (``connection.async_twin``):
the same servers, topology (standalone, Sentinel, Cluster), credentials, TLS,
timeouts, pool size and retry budget. Whole-store work (``count``, ``stats``) runs
the sync manager on a thread.

A task cancelled while its call waits on Redis (a client that went away) leaves its
outcome unknown, as a lost reply does: a retry with the same ``token=`` is answered
as the first was.

Example::

    manager = AsyncRegistrationManager.from_settings(conceal_pending=True)
    added = await manager.add(email, first, last, password=password)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from regctl.bridge import GATE, Awaited, Gate, bridged
from regctl.connection import pool_exhausted, pool_wait
from regctl.errors import ConfigError, StoreUnavailable
from regctl.manager import RegistrationManager

if TYPE_CHECKING:
    from regctl.diagnostics.health import Health, Thresholds
    from regctl.model import Added, PendingRegistration, Resent, VerifyResult
    from regctl.reports import Stats
    from regctl.settings import Settings

T = TypeVar("T")
P = ParamSpec("P")


class _Pool:
    """At most as many Redis awaits at once as the sync pool has connections, each
    waiting as long as the sync pool lets a call wait: redis.asyncio's Sentinel and
    Cluster pools would fail a call at once instead. (A ``bridge.Gate``, the same places
    for every slot: a call holds no place while it hashes a password.) A place is taken
    without an await when one is free (every call's path); the waiting calls are served
    in turn."""

    def __init__(self, connections: int, wait: float | None) -> None:
        self.free = connections
        self.wait = wait
        self.waiting: deque[asyncio.Future[None]] = deque()

    def places(self, slot: int | None) -> _Pool:
        return self

    def take(self) -> bool:
        if self.free:  # (none is free while a call waits: leave hands places on)
            self.free -= 1
            return True
        return False

    async def enter(self) -> None:
        if self.take():
            return
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        self.waiting.append(turn)
        expired = False

        def expire() -> None:
            nonlocal expired
            if not turn.done():
                expired = True
                turn.cancel()

        # (not asyncio.wait_for: on Python 3.11 it can return a place to a task cancelled
        # just after it was handed one, and the cancellation is lost)
        wait = pool_wait(self.wait)  # (within the call's deadline, which the bridge set)
        timer = None if wait is None else loop.call_later(wait, expire)
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed a place as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(turn)
            if expired and not (task is not None and task.cancelling() > cancelling):
                raise pool_exhausted() from None
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def leave(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():  # (one given up is cancelled: skipped)
                turn.set_result(None)  # the place goes to it, as it is
                return
        self.free += 1


class _NodePlaces:
    """On Cluster, a ``_Pool`` per node, as the sync client has a pool per node: the
    calls held up by a stalled node wait on its places only, and the other nodes' calls
    go on. A call of one key (a script, the layout and secret checks, a client's
    limits, the audit) is counted against the node that owns its slot when it starts
    (redirected while a slot moves, it runs on the other node, counted where it
    started); a command without one (a pipeline, learning the slot map) against places
    of their own, shared by all nodes."""

    def __init__(self, client: Any, connections: int, wait: float | None) -> None:
        self._slots = client.nodes_manager
        self._connections, self._wait = connections, wait
        self._nodes: dict[str, _Pool] = {}
        self._keyless = _Pool(connections, wait)

    def places(self, slot: int | None) -> _Pool:
        if slot is None:
            return self._keyless
        try:
            node = self._slots.get_node_from_slot(slot).name
        except (KeyError, _slot_not_covered()):  # (no slot map yet: redis-py learns it)
            return self._keyless
        pool = self._nodes.get(node)
        if pool is None:
            pool = self._nodes[node] = _Pool(self._connections, self._wait)
        return pool


def _slot_not_covered() -> type[Exception]:
    from redis.exceptions import SlotNotCoveredError

    return SlotNotCoveredError


class _OnLoop:
    """The manager as one event loop runs it: asyncio clients and futures belong to
    the loop that made them, so each loop (each thread with its own loop) has its own
    twin of the sync client, made on its first call and closed when the loop shuts
    down (``asyncio.run`` does that before it closes the loop)."""

    def __init__(
        self, manager: RegistrationManager, pool: Gate | None, *, cluster: bool = False
    ) -> None:
        self.manager = manager
        self.pool = pool
        self.calls = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # A fresh redis.asyncio cluster client sends concurrent calls all to one node,
        # and its handling of the MOVED replies closes connections other calls are
        # using: it learns the slots first (``_start``), once.
        self.ready = asyncio.Lock() if cluster else None
        self.ending = False  # closing or closed: no more calls on this loop
        self.closed = False  # the twin's connections are closed
        self.keeper: AsyncGenerator[None] | None = None
        self.closing: asyncio.Future[None] | None = None  # (held: a task is weakly kept)

    def enter(self) -> None:
        self.calls += 1
        self.idle.clear()

    def leave(self) -> None:
        self.calls -= 1
        if not self.calls:
            self.idle.set()

    async def close(self, sync: RegistrationManager) -> None:
        """Once the calls under way are done (the in-memory store has nothing to close);
        later calls on this loop are refused. Cancelled while it waits (a shutdown), it
        closes at once rather than not at all; one cut short even so (the loop's end
        cancels every task) is done again when the loop closes its keeper."""
        self.ending = True
        if self.closed:
            return
        try:
            await self.idle.wait()
        finally:
            await self.shut(sync)

    def close_soon(self, sync: RegistrationManager) -> None:
        """``close`` as a task of this loop (asked from another loop)."""
        self.closing = asyncio.ensure_future(self.close(sync))

    async def shut(self, sync: RegistrationManager) -> None:
        """Close the twin's connections now (again after the last call under way at a
        cancelled close: it may have given one back to the pool)."""
        if self.manager is not sync:
            await asyncio.shield(bridged(self.manager.close))
        self.closed = True


def _start(manager: RegistrationManager) -> None:
    from regctl.connection import translated_errors

    with translated_errors():
        manager.store.client.initialize()  # type: ignore[attr-defined]


class AsyncRegistrationManager:
    """``RegistrationManager``'s operations, awaited; ``sync`` is the manager itself
    (for whole-store work such as ``list`` or ``purge``, run it with
    ``asyncio.to_thread``). One manager serves every event loop that uses it."""

    def __init__(self, manager: RegistrationManager) -> None:
        from regctl.store.redis_store import RedisStore

        self.sync = manager
        store = manager.store
        self._redis = store if isinstance(store, RedisStore) else None
        if self._redis is not None and self._redis.is_cluster and self._redis.scripts.wait_replicas:
            raise ConfigError(
                "the async manager cannot wait for replicas on Redis Cluster "
                "(REGCTL_WAIT_REPLICAS)",
                "unset REGCTL_WAIT_REPLICAS, or use the sync manager on a thread",
            )
        self._loops: dict[asyncio.AbstractEventLoop, _OnLoop] = {}
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        embedded: bool = False,
        audit_as: str | None = None,
        conceal_pending: bool = False,
    ) -> AsyncRegistrationManager:
        """As ``RegistrationManager.from_settings`` (it fails here, at start-up, on bad
        settings)."""
        return cls(
            RegistrationManager.from_settings(
                settings, embedded=embedded, audit_as=audit_as, conceal_pending=conceal_pending
            )
        )

    async def _joined(self, loop: asyncio.AbstractEventLoop) -> _OnLoop:
        """The manager on ``loop``, on its first call there."""
        # Loops closed since: dropped (one closed without shutting down its async
        # generators leaves its connections to the garbage collector). (A snapshot:
        # other threads' loops come and go meanwhile.)
        for closed in [other for other in list(self._loops) if other.is_closed()]:
            self._loops.pop(closed, None)
        state = self._loops[loop] = self._twin()
        state.keeper = self._kept(loop, state)
        await anext(state.keeper)
        return state

    async def _kept(self, loop: asyncio.AbstractEventLoop, state: _OnLoop) -> AsyncGenerator[None]:
        """Waits for the loop's end: a loop shutting down closes the async generators
        still open (``loop.shutdown_asyncgens``), and this closes the loop's twin then."""
        try:
            yield
        finally:  # (the entry stays, ending, so a later call here is refused, not reopened)
            with contextlib.suppress(Exception):  # (the loop is ending: nobody to tell)
                await state.close(self.sync)

    def _twin(self) -> _OnLoop:
        """This loop's manager: over an asyncio twin of the sync client (the in-memory
        store has no I/O to wait on: its calls run as they are)."""
        if self._redis is None:
            return _OnLoop(self.sync, None)
        from regctl.connection import async_twin, pool_limits

        client = async_twin(self._redis.client)
        twin = self._redis.twin(Awaited(client))
        limits = pool_limits(self._redis.client)
        cluster = self._redis.is_cluster
        pool = _NodePlaces(client, *limits) if cluster else _Pool(*limits)
        return _OnLoop(self.sync.on(twin), pool, cluster=cluster)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise StoreUnavailable("this manager was closed (aclose)", "make a new one")

    async def _call(
        self,
        operation: Callable[Concatenate[RegistrationManager, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        self._refuse_if_closed()
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop) or await self._joined(loop)
        if state.ending:
            raise StoreUnavailable(
                "this event loop is shutting down: its Redis connections are closed",
                "make the call before the loop's shutdown",
            )
        state.enter()
        gate = GATE.set(state.pool)
        try:
            if state.ready is not None:
                async with state.ready:
                    if state.ready is not None:
                        await bridged(_start, state.manager)
                        state.ready = None
            self._refuse_if_closed()  # (closed while this call waited its turn)
            return await bridged(operation, state.manager, *args, **kwargs)
        finally:
            GATE.reset(gate)
            state.leave()
            if state.ending and not state.calls:
                await state.shut(self.sync)

    async def add(
        self,
        email: str,
        first_name: str,
        last_name: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        token: str | None = None,
        client: str | None = None,
    ) -> Added:
        """See ``RegistrationManager.add``."""
        return await self._call(
            RegistrationManager.add,
            email,
            first_name,
            last_name,
            password=password,
            password_hash=password_hash,
            token=token,
            client=client,
        )

    async def get(self, email: str) -> PendingRegistration | None:
        """See ``RegistrationManager.get``."""
        return await self._call(RegistrationManager.get, email)

    async def resend(
        self, email: str, *, token: str | None = None, client: str | None = None
    ) -> Resent:
        """See ``RegistrationManager.resend``."""
        return await self._call(RegistrationManager.resend, email, token=token, client=client)

    async def verify(self, email: str, code: str, *, token: str | None = None) -> VerifyResult:
        """See ``RegistrationManager.verify``."""
        return await self._call(RegistrationManager.verify, email, code, token=token)

    async def unlock(self, email: str) -> bool:
        """See ``RegistrationManager.unlock``."""
        return await self._call(RegistrationManager.unlock, email)

    async def delete(self, email: str, *, token: str | None = None) -> bool:
        """See ``RegistrationManager.delete``."""
        return await self._call(RegistrationManager.delete, email, token=token)

    async def count(self) -> int:
        """See ``RegistrationManager.count``."""
        return await self._in_thread(self.sync.count)

    async def stats(self, top: int = 5) -> Stats:
        """See ``RegistrationManager.stats``."""
        return await self._in_thread(self.sync.stats, top)

    async def client_limits(self, client: str) -> dict[str, tuple[int, int, int]]:
        """See ``RegistrationManager.client_limits``."""
        return await self._call(RegistrationManager.client_limits, client)

    async def reset_limits(self, client: str) -> bool:
        """See ``RegistrationManager.reset_limits``."""
        return await self._call(RegistrationManager.reset_limits, client)

    async def health(self, timeout: float = 2.0, thresholds: Thresholds | None = None) -> Health:
        """See ``RegistrationManager.health``: within ``timeout`` even while Redis stalls
        and every connection waits on it (the checks run on a thread of their own,
        with the sync manager's client; the event loop waits for them)."""
        self._refuse_if_closed()
        return await self.sync.health_probe.acheck(timeout, thresholds)

    async def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        self._refuse_if_closed()
        return await asyncio.to_thread(work, *args)

    async def aclose(self) -> None:
        """Close the connections once the calls under way are done; later calls raise
        StoreUnavailable. Another running loop's connections are closed on that loop."""
        self._closed = True
        here = asyncio.get_running_loop()
        for loop, state in list(self._loops.items()):
            assert state.keeper is not None
            if loop is here:  # (the keeper's end closes the loop's twin)
                await state.keeper.aclose()
            elif loop.is_running():  # (its keeper, kept here, is the loop's end's to close)
                # The close is made on its loop, when it runs there: a loop that ends
                # first (its keeper's end closes the twin) drops no unawaited coroutine.
                with contextlib.suppress(RuntimeError):  # (closed since: nothing to do)
                    loop.call_soon_threadsafe(state.close_soon, self.sync)
            # (a closed loop's connections are left to the garbage collector)
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRegistrationManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
