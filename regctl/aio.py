"""The manager for asyncio code (FastAPI, Starlette, aiohttp): ``await`` every call.

``AsyncRegistrationManager`` has the sync manager's operations, results and errors,
because it runs the sync manager's own code: each call goes to a thread of the
manager's pool (as Motor runs PyMongo), so the event loop never waits on Redis,
on a stalled server or on the Argon2id hash, and there is one implementation of
validation, hashing, scripts, deadlines and decoding. The pool is as large as the
connection pool, so calls wait for a connection, never for a thread, and a stall
holds at most that many threads until each call's deadline ends it.

A task cancelled while its call runs (a client that went away) does not stop the
call: its outcome is as if the reply were lost, and a retry with the same
``token=`` is answered as the first was.

Example::

    manager = AsyncRegistrationManager.from_settings(conceal_pending=True)
    added = await manager.add(email, first, last, password=password)
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from regctl.errors import StoreUnavailable
from regctl.manager import RegistrationManager

if TYPE_CHECKING:
    from regctl.diagnostics.health import Health, Thresholds
    from regctl.model import Added, PendingRegistration, Resent, VerifyResult
    from regctl.reports import Stats
    from regctl.settings import Settings

T = TypeVar("T")

# Threads when the manager is built from a store, not from settings (whose pool size,
# REGCTL_MAX_CONNECTIONS, it follows then).
DEFAULT_THREADS = 50


class AsyncRegistrationManager:
    """``RegistrationManager``'s operations, awaited; ``sync`` is the manager itself
    (for whole-store work such as ``list`` or ``purge``, run it with
    ``asyncio.to_thread``)."""

    def __init__(self, manager: RegistrationManager, *, threads: int = DEFAULT_THREADS) -> None:
        self.sync = manager
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="regctl-async")
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
        settings), with one thread per pooled connection."""
        from regctl.settings import load_settings

        settings = settings or load_settings().settings
        manager = RegistrationManager.from_settings(
            settings, embedded=embedded, audit_as=audit_as, conceal_pending=conceal_pending
        )
        return cls(manager, threads=settings.max_connections)

    async def _call(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreUnavailable("this manager was closed (aclose)", "make a new one")
        # The caller's context goes along (the deadline of an outer call, log context).
        context = contextvars.copy_context()
        call = functools.partial(context.run, work, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

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
            self.sync.add,
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
        return await self._call(self.sync.get, email)

    async def resend(
        self, email: str, *, token: str | None = None, client: str | None = None
    ) -> Resent:
        """See ``RegistrationManager.resend``."""
        return await self._call(self.sync.resend, email, token=token, client=client)

    async def verify(self, email: str, code: str, *, token: str | None = None) -> VerifyResult:
        """See ``RegistrationManager.verify``."""
        return await self._call(self.sync.verify, email, code, token=token)

    async def unlock(self, email: str) -> bool:
        """See ``RegistrationManager.unlock``."""
        return await self._call(self.sync.unlock, email)

    async def delete(self, email: str, *, token: str | None = None) -> bool:
        """See ``RegistrationManager.delete``."""
        return await self._call(self.sync.delete, email, token=token)

    async def count(self) -> int:
        """See ``RegistrationManager.count``."""
        return await self._call(self.sync.count)

    async def stats(self, top: int = 5) -> Stats:
        """See ``RegistrationManager.stats``."""
        return await self._call(self.sync.stats, top)

    async def client_limits(self, client: str) -> dict[str, tuple[int, int, int]]:
        """See ``RegistrationManager.client_limits``."""
        return await self._call(self.sync.client_limits, client)

    async def reset_limits(self, client: str) -> bool:
        """See ``RegistrationManager.reset_limits``."""
        return await self._call(self.sync.reset_limits, client)

    async def health(self, timeout: float = 2.0, thresholds: Thresholds | None = None) -> Health:
        """See ``RegistrationManager.health``: within ``timeout`` even while Redis stalls
        and every thread of the pool waits on it (the checks run on a thread of
        their own; the event loop waits for them)."""
        if self._closed:
            raise StoreUnavailable("this manager was closed (aclose)", "make a new one")
        return await self.sync.health_probe.acheck(timeout, thresholds)

    async def aclose(self) -> None:
        """Close the connections; calls still running finish first, later ones raise
        StoreUnavailable."""
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _close(self) -> None:
        self._threads.shutdown(wait=True)
        self.sync.close()

    async def __aenter__(self) -> AsyncRegistrationManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
