"""Stores of pending registrations: the protocol and its two implementations."""

from regctl.store.base import Counts, NewRegistration, Store
from regctl.store.memory import MemoryStore
from regctl.store.redis_store import RedisStore

__all__ = ["Counts", "MemoryStore", "NewRegistration", "RedisStore", "Store"]
