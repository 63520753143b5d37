"""The manager's one implementation, run on an event loop over ``redis.asyncio``.

The manager is written once, as plain sync code. The async manager runs that code in
a greenlet on the event loop (SQLAlchemy's asyncio bridge, in small): where the code
talks to Redis through an ``Awaited`` client, the greenlet hands the awaitable to the
loop, which awaits it while other tasks run, and resumes the code with its result.
So validation, hashing, retries, deadlines and decoding exist once, and the event
loop waits on sockets, never on a thread. ``offloaded`` work (Argon2id) runs on a
thread and ``pause`` sleeps on the loop when bridged; outside a bridged call both
are plain calls.

Example::

    client = redis.asyncio.Redis(decode_responses=True)
    manager = RegistrationManager(RedisStore(Awaited(client)), secret=s)
    result = await bridged(manager.verify, "alice@example.com", "123456")
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import greenlet

from regctl.connection import CALL_DEADLINE

T = TypeVar("T")


# Idle workers kept per thread (a greenlet runs on the thread that made it): starting a
# greenlet costs ten times more than switching to one.
IDLE_WORKERS = 64
_idle = threading.local()


class _Worker(greenlet.greenlet):  # type: ignore[misc]
    """Runs bridged calls, one at a time; ``driver`` is the loop's greenlet. Its call
    comes in ``job``; it hands the driver (awaitable, deadline, is it Redis I/O) to
    await, and at the end switches with None, the outcome in ``outcome`` (raised?,
    value): an idle worker holds no call's arguments or result (a clear password, a
    clear code)."""

    def __init__(self, driver: greenlet.greenlet) -> None:
        super().__init__(self._serve, driver)
        self.driver = driver
        self.job: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None
        self.outcome: tuple[bool, Any] | None = None

    def _serve(self) -> None:
        while True:
            assert self.job is not None
            fn, args, kwargs = self.job
            self.job = None
            try:
                self.outcome = (False, fn(*args, **kwargs))
            except greenlet.GreenletExit:
                raise  # collected while suspended: end
            except BaseException as exc:  # (handed to the caller as it is)
                self.outcome = (True, exc)
            fn = args = kwargs = None  # type: ignore[assignment]
            self.driver.switch(None)  # (done: the outcome is in self.outcome)


def _bridge() -> _Worker | None:
    current = greenlet.getcurrent()
    return current if isinstance(current, _Worker) else None


class Places(Protocol):
    """A limit on how many Redis awaits run at once, like a connection pool's."""

    def take(self) -> bool:
        """A place at once if one is free (no await); else False and nothing taken."""

    async def enter(self) -> None:
        """A place, waited for."""

    def leave(self) -> None: ...


class Gate(Protocol):
    """What a bridged call's Redis awaits pass through (``GATE``): the places of the
    server that owns ``slot`` (on Cluster: the node; None, a command without a key)."""

    def places(self, slot: int | None) -> Places: ...


# The gate of the bridged calls of this task (the async manager sets it per call).
GATE: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("regctl_gate", default=None)


def await_(awaitable: Awaitable[T], *, io: bool = True, slot: int | None = None) -> T:
    """The result of ``awaitable``, awaited on the loop of the bridged call under way;
    through the ``GATE``'s places for ``slot`` unless it is no Redis I/O (``io`` False)."""
    worker = _bridge()
    if worker is None:
        if isinstance(awaitable, Coroutine):
            awaitable.close()  # never awaited: no "was never awaited" warning later
        raise RuntimeError("an asyncio Redis client is used outside a bridged call")
    # The call's deadline goes along: redis-py's retries on the loop keep within it.
    step = (awaitable, CALL_DEADLINE.get(), io, slot)
    return worker.driver.switch(step)  # type: ignore[no-any-return]


async def bridged(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on this event loop, its Redis awaits awaited here.

    A cancelled task cancels the await under way; the CancelledError unwinds ``fn``
    as any exception would."""
    idle: list[_Worker] = _idle.__dict__.setdefault("workers", [])
    driver = greenlet.getcurrent()
    worker = idle.pop() if idle and idle[-1].driver is driver else _Worker(driver)
    worker.gr_context = contextvars.copy_context()  # the caller's context goes along
    worker.job = (fn, args, kwargs)
    step = worker.switch()
    while step is not None:  # an awaitable, the call's deadline, whether I/O, its slot
        awaitable, deadline, io, slot = step
        token = CALL_DEADLINE.set(deadline)
        try:
            gate = GATE.get() if io else None
            places = None if gate is None else gate.places(slot)
            if places is not None and not places.take():
                await _entered(places, awaitable)
            try:
                result = await awaitable
            finally:
                if places is not None:
                    places.leave()
        except BaseException as exc:  # (the traceback goes along: redis-py's frames)
            step = worker.throw(type(exc), exc, exc.__traceback__)
        else:
            step = worker.switch(result)
        finally:
            CALL_DEADLINE.reset(token)
    assert worker.outcome is not None
    raised, value = worker.outcome
    worker.outcome = None
    worker.gr_context = None  # (an idle worker keeps no caller's context either)
    if len(idle) < IDLE_WORKERS:
        idle.append(worker)
    if raised:
        raise value
    return value  # type: ignore[no-any-return]


async def _entered(places: Places, awaitable: Awaitable[Any]) -> None:
    """A place of ``places``, waited for; a call that gets none (none freed in time,
    cancelled) closes its awaitable, never to be awaited (no warning about it)."""
    try:
        await places.enter()
    except BaseException:
        if isinstance(awaitable, Coroutine):
            awaitable.close()
        raise


def offloaded(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``; in a bridged call, on a thread, so CPU-bound work (Argon2id)
    never holds the event loop."""
    if _bridge() is None:
        return fn(*args)
    import asyncio

    return await_(asyncio.to_thread(fn, *args), io=False)


def pause(seconds: float) -> None:
    """Sleep; in a bridged call, on the loop (other tasks run meanwhile)."""
    if _bridge() is None:
        time.sleep(seconds)
        return
    import asyncio

    await_(asyncio.sleep(seconds), io=False)


def settled(result: Any, slot: int | None = None) -> Any:
    """``result``, awaited first if it is a coroutine (an asyncio client's method) for a
    key in ``slot``."""
    return await_(result, slot=slot) if isinstance(result, Coroutine) else result


class Awaited:
    """A ``redis.asyncio`` client (or pipeline) with the sync client's face, for the
    manager's code in a bridged call: each coroutine a method returns is awaited.

    On Cluster, a script call (or another command of one key) waits for a place of the
    node that owns its key's slot, so calls held up by one stalled node leave the other
    nodes' places free."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        if not callable(attr):
            return attr

        if name in _KEYED and _is_async_cluster(self.target):

            def call(*args: Any, **kwargs: Any) -> Any:
                # (EVALSHA: sha, numkeys, keys...; the others: their key first)
                key = (args[2] if int(args[1]) else None) if name == "evalsha" else args[0]
                return settled(attr(*args, **kwargs), None if key is None else _slot(key))

        else:

            def call(*args: Any, **kwargs: Any) -> Any:
                return settled(attr(*args, **kwargs))

        setattr(self, name, call)  # found once; later lookups skip __getattr__
        return call

    def register_script(self, source: str) -> Any:
        """A sync ``Script`` on this client: it calls EVALSHA (awaited) and reloads the
        script on NOSCRIPT, as it does for a sync client."""
        from redis.commands.core import Script

        return Script(self, source)  # type: ignore[arg-type]

    def close(self) -> None:
        await_(self.target.aclose())

    def pipeline(self, transaction: bool = True) -> Awaited:
        return Awaited(self.target.pipeline(transaction=transaction))


# The commands of one key (its name first, or EVALSHA's first key) the manager sends a
# Cluster client: each goes to the node that owns the key's slot.
_KEYED = frozenset({"evalsha", "hget", "hset", "hsetnx", "delete", "xadd", "xrevrange"})


def _is_async_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _slot(key: str | bytes) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode() if isinstance(key, str) else key)
