"""The async manager behind the sync manager's face, so the contract suite runs on both.

Every operation the async manager has is awaited on an event loop of its own (in a
thread); everything else (the store, the policy, list, purge) is the sync manager's.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from regctl import AsyncRegistrationManager, RegistrationManager

AWAITED = (
    "add",
    "get",
    "resend",
    "verify",
    "unlock",
    "delete",
    "count",
    "stats",
    "health",
    "client_limits",
    "reset_limits",
)


class Awaited:
    def __init__(self, manager: RegistrationManager) -> None:
        self.__dict__["_async"] = AsyncRegistrationManager(manager)
        self.__dict__["_loop"] = loop = asyncio.new_event_loop()
        self.__dict__["_thread"] = threading.Thread(target=loop.run_forever, daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        if name in AWAITED:
            method = getattr(self._async, name)

            def awaited(*args: Any, **kwargs: Any) -> Any:
                future = asyncio.run_coroutine_threadsafe(method(*args, **kwargs), self._loop)
                return future.result(timeout=120)

            return awaited
        return getattr(self._async.sync, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # (each event loop's manager copies the sync one's settings when it is made)
        setattr(self._async.sync, name, value)
        for state in self._async._loops.values():
            setattr(state.manager, name, value)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result(timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
