from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regctl import MemoryStore, Policy, RedisStore, RegistrationManager
from tests.servers import RedisProcess

SECRET = "test-secret-0123456789abcdef"
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server shared by the session; tests isolate by key prefix."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server of this test alone (for whole-keyspace assertions)."""
    proc = RedisProcess(tmp_path / "redis").start()
    yield proc
    proc.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}"


@pytest.fixture(params=["redis", "memory"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeManager = Callable[..., RegistrationManager]


@pytest.fixture
def make_manager(store_kind: str, redis_proc: RedisProcess, prefix: str) -> Iterator[MakeManager]:
    """Build managers over the parametrised store kind with a given policy."""
    opened: list[RegistrationManager] = []

    def make(policy: Policy | None = None) -> RegistrationManager:
        store: RedisStore | MemoryStore
        if store_kind == "redis":
            store = RedisStore(redis_proc.client(), prefix=prefix)
        else:
            store = MemoryStore()
        manager = RegistrationManager(store, secret=SECRET, policy=policy or Policy())
        opened.append(manager)
        return manager

    yield make
    for manager in opened:
        manager.close()


@pytest.fixture
def manager(make_manager: MakeManager) -> RegistrationManager:
    return make_manager()


@pytest.fixture(scope="session")
def pw_hash() -> str:
    """One real Argon2id hash, so tests need not pay for hashing on every add."""
    from regctl.security import hash_password

    return hash_password("correct horse battery")
