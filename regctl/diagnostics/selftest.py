"""`selftest`: the original 8-step connection test, run in a throwaway namespace."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from regctl.connection import translated_errors
from regctl.diagnostics.health import health
from regctl.errors import (
    RegctlError,
    StoreUnavailable,
)
from regctl.keys import Keyspace
from regctl.model import Filter, Policy

if TYPE_CHECKING:
    from regctl.store.redis_store import RedisStore


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str


def selftest(
    store: RedisStore, version: str, on_step: Callable[[Step], None] | None = None
) -> list[Step]:
    """The original 8-step connection test, in a throwaway namespace that is always removed.

    Cleanup runs in ``finally``, so an interrupt (Ctrl-C) leaves nothing behind either.
    """
    run = _SelfTest(store, version)
    steps: list[Step] = []
    try:
        for name, action in run.plan():
            started = time.perf_counter()
            try:
                detail, ok = action(), True
            except (RegctlError, AssertionError) as exc:
                detail, ok = getattr(exc, "message", str(exc)), False
            step = Step(name, ok, (time.perf_counter() - started) * 1000, detail)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        _drop_namespace(store, run.scratch_prefix)
    return steps


class _SelfTest:
    """The steps of `selftest`; writes go to a scratch prefix, reads to the real one."""

    def __init__(self, store: RedisStore, version: str) -> None:
        import secrets

        from regctl.manager import RegistrationManager
        from regctl.security import generate_secret
        from regctl.store.redis_store import RedisStore as Store

        self.store = store
        self.version = version
        self.scratch_prefix = store.keyspace.selftest_prefix(secrets.token_hex(4))
        self.scratch = RegistrationManager(
            Store(store.client, prefix=self.scratch_prefix, description=store.description),
            secret=generate_secret(),
            policy=Policy(resend_cooldown_ms=0),
        )
        self.real = RegistrationManager(store, secret=None)
        self.email = f"selftest-{secrets.token_hex(4)}@example.com"
        self.password = generate_secret()
        self.code = ""

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("health", self.health),
            ("list pending", self.list_pending),
            ("create", self.create),
            ("read", self.read),
            ("new code", self.new_code),
            ("verify", self.verify),
            ("purge", self.purge),
            ("stats", self.stats),
        ]

    def health(self) -> str:
        report = health(self.store, self.version)
        facts = report.data["redis"]
        if not facts.get("ping"):
            raise StoreUnavailable(facts.get("error", "no answer"))
        return (
            f"Redis {facts['version']}, {facts['connected_clients']} clients, "
            f"{facts['used_memory_human']}, up {facts['uptime_in_seconds']}s"
        )

    def list_pending(self) -> str:
        shown = sum(1 for _ in self.real.list(limit=5))
        return f"listed {shown} of {self.real.count()} pending"

    def create(self) -> str:
        self.code = self.scratch.add(self.email, "Self", "Test", password=self.password).code
        return "test record created"

    def read(self) -> str:
        reg = self.scratch.get(self.email)
        if reg is None:
            raise AssertionError("the test record is missing")
        return f"read back, expires in {reg.ttl_ms // 1000}s"

    def new_code(self) -> str:
        self.code = self.scratch.resend(self.email).code
        return "code replaced"

    def verify(self) -> str:
        if not self.code:
            raise AssertionError("no code: an earlier step failed")
        bad = f"{(int(self.code) + 1) % 10**6:06d}"
        if self.scratch.verify(self.email, bad).ok:
            raise AssertionError("a wrong code was accepted")
        right = self.scratch.verify(self.email, self.code)
        if not right.ok:
            raise AssertionError(f"the right code gave {right.outcome}")
        return "wrong code refused, right code accepted"

    def purge(self) -> str:
        return f"{self.scratch.purge(Filter()).total} leftovers removed"

    def stats(self) -> str:
        return f"{self.real.count()} pending in {self.store.keyspace.prefix}"


def _drop_namespace(store: RedisStore, prefix: str) -> None:
    """Delete every key of a throwaway namespace (selftest's own, never the real one)."""
    client = store.client
    with translated_errors():
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=Keyspace(prefix).pattern(), count=1000):
            pipe.delete(key)  # one key per command: the keys span many cluster slots
        pipe.execute()
