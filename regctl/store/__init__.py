"""Stores of pending registrations: the protocol and its two implementations."""

from typing import TYPE_CHECKING

from regctl.store.base import Counts, NewRegistration, Store
from regctl.store.memory import MemoryStore
from regctl.store.redis_store import RedisStore

if TYPE_CHECKING:
    # mypy checks here that both stores implement the whole protocol, signatures too.
    _STORES: tuple[type[Store], ...] = (MemoryStore, RedisStore)

__all__ = ["Counts", "MemoryStore", "NewRegistration", "RedisStore", "Store"]
