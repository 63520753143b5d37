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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from regctl.bridge import Awaited, bridged
from regctl.connection import pool_exhausted
from regctl.errors import ConfigError, StoreUnavailable
from regctl.manager import RegistrationManager

if TYPE_CHECKING:
    from regctl.diagnostics.health import Health, Thresholds
    from regctl.model import Added, PendingRegistration, Resent, VerifyResult
    from regctl.reports import Stats
    from regctl.settings import Settings

T = TypeVar("T")


class AsyncRegistrationManager:
    """``RegistrationManager``'s operations, awaited; ``sync`` is the manager itself
    (for whole-store work such as ``list`` or ``purge``, run it with
    ``asyncio.to_thread``)."""

    def __init__(self, manager: RegistrationManager) -> None:
        from regctl.store.redis_store import RedisStore

        self.sync = manager
        store = manager.store
        # At most as many calls at once as the sync pool has connections (per node on
        # Cluster), each waiting as long as the sync pool lets a call wait: redis.asyncio's
        # Sentinel and Cluster pools would fail a call at once instead.
        self._slots: asyncio.Semaphore | None = None
        self._pool_wait: float | None = None
        if isinstance(store, RedisStore):
            from regctl.connection import async_twin, pool_limits

            connections, self._pool_wait = pool_limits(store.client)
            self._slots = asyncio.Semaphore(connections)

            if store.is_cluster and store.scripts.wait_replicas:
                raise ConfigError(
                    "the async manager cannot wait for replicas on Redis Cluster "
                    "(REGCTL_WAIT_REPLICAS)",
                    "unset REGCTL_WAIT_REPLICAS, or use the sync manager on a thread",
                )
            self._manager = manager.on(store.twin(Awaited(async_twin(store.client))))
        else:  # the in-memory store: no I/O to wait on
            self._manager = manager
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

    async def _call(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreUnavailable("this manager was closed (aclose)", "make a new one")
        slots = self._slots
        if slots is None:
            return await bridged(work, *args, **kwargs)
        if slots.locked():
            try:
                await asyncio.wait_for(slots.acquire(), self._pool_wait)
            except TimeoutError:
                raise pool_exhausted() from None
        else:
            await slots.acquire()
        try:
            return await bridged(work, *args, **kwargs)
        finally:
            slots.release()

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
            self._manager.add,
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
        return await self._call(self._manager.get, email)

    async def resend(
        self, email: str, *, token: str | None = None, client: str | None = None
    ) -> Resent:
        """See ``RegistrationManager.resend``."""
        return await self._call(self._manager.resend, email, token=token, client=client)

    async def verify(self, email: str, code: str, *, token: str | None = None) -> VerifyResult:
        """See ``RegistrationManager.verify``."""
        return await self._call(self._manager.verify, email, code, token=token)

    async def unlock(self, email: str) -> bool:
        """See ``RegistrationManager.unlock``."""
        return await self._call(self._manager.unlock, email)

    async def delete(self, email: str, *, token: str | None = None) -> bool:
        """See ``RegistrationManager.delete``."""
        return await self._call(self._manager.delete, email, token=token)

    async def count(self) -> int:
        """See ``RegistrationManager.count``."""
        return await self._in_thread(self.sync.count)

    async def stats(self, top: int = 5) -> Stats:
        """See ``RegistrationManager.stats``."""
        return await self._in_thread(self.sync.stats, top)

    async def client_limits(self, client: str) -> dict[str, tuple[int, int, int]]:
        """See ``RegistrationManager.client_limits``."""
        return await self._call(self._manager.client_limits, client)

    async def reset_limits(self, client: str) -> bool:
        """See ``RegistrationManager.reset_limits``."""
        return await self._call(self._manager.reset_limits, client)

    async def health(self, timeout: float = 2.0, thresholds: Thresholds | None = None) -> Health:
        """See ``RegistrationManager.health``: within ``timeout`` even while Redis stalls
        and every connection waits on it (the checks run on a thread of their own,
        with the sync manager's client; the event loop waits for them)."""
        if self._closed:
            raise StoreUnavailable("this manager was closed (aclose)", "make a new one")
        return await self.sync.health_probe.acheck(timeout, thresholds)

    async def _in_thread(self, work: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("this manager was closed (aclose)", "make a new one")
        return await asyncio.to_thread(work, *args)

    async def aclose(self) -> None:
        """Close the connections; later calls raise StoreUnavailable."""
        self._closed = True
        if self._manager is not self.sync:
            await bridged(self._manager.close)
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRegistrationManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
