"""Random operation sequences on RedisStore and MemoryStore in lockstep (hypothesis).

Same outcomes from both; and after every step on Redis: every per-registration key
has 0 < TTL <= lifetime, no TTL ever grows, and no record has taken more wrong
guesses than the budget since it was created or last unlocked.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from regctl import Filter, MemoryStore, Policy, RedisStore, RegctlError, RegistrationManager
from regctl.keys import digest
from tests.conftest import SECRET, redis_store

POLICY = Policy(
    lifetime_ms=60_000,
    code_lifetime_ms=30_000,
    max_attempts=3,
    resend_cooldown_ms=0,
    max_resends=3,
)
EMAILS = st.sampled_from(["a@x.example", "B@x.example", "c@y.example", "b@X.EXAMPLE"])
# Idempotency tokens: fresh (None), or a few reused across calls, operations and
# identities, so replays and reuse both happen.
TOKENS = st.sampled_from([None, "t1", "t2"])
_prefixes = itertools.count()


def outcome(call):
    """A comparable summary of what a call did: its result or its error class."""
    try:
        return ("ok", call())
    except RegctlError as exc:
        return ("error", type(exc).__name__)


@pytest.mark.slow
def test_redis_and_memory_agree_under_random_operations(redis_proc, pw_hash):
    class Lockstep(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            prefix = f"sm{next(_prefixes)}"
            self.redis = RegistrationManager(
                RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET, policy=POLICY
            )
            self.memory = RegistrationManager(MemoryStore(), secret=SECRET, policy=POLICY)
            self.codes: dict[str, dict[str, str]] = {"redis": {}, "memory": {}}
            self.wrong_since_unlock: dict[str, int] = {}
            self.wrong_calls: set[tuple[str, str, str]] = set()
            self.ttls: dict[str, int] = {}
            self.client = redis_proc.client()
            self.prefix = prefix

        def both(self, action):
            results = [
                outcome(lambda m=m, k=k: action(m, k))
                for m, k in ((self.redis, "redis"), (self.memory, "memory"))
            ]
            assert results[0] == results[1], results
            return results[0]

        @rule(email=EMAILS, token=TOKENS)
        def add(self, email: str, token: str | None) -> None:
            def run(m: RegistrationManager, kind: str) -> tuple[str, int]:
                added = m.add(email, "F", "L", password_hash=pw_hash, token=token)
                self.codes[kind][email.casefold()] = added.code
                return added.registration.email, added.registration.attempts

            status, answer = self.both(run)
            if status == "ok":  # new (0), or a replay handing back the record as it is
                self.wrong_since_unlock[email.casefold()] = answer[1]

        @rule(email=EMAILS, token=TOKENS)
        def resend(self, email: str, token: str | None) -> None:
            def run(m: RegistrationManager, kind: str) -> int:
                resent = m.resend(email, token=token)
                self.codes[kind][email.casefold()] = resent.code
                return resent.registration.resend_count

            self.both(run)

        @rule(email=EMAILS, right=st.booleans(), token=TOKENS)
        def verify_code(self, email: str, right: bool, token: str | None) -> None:
            self.verify(email, right, token)

        def verify(self, email: str, right: bool, token: str | None) -> None:
            guesses: dict[str, str] = {}

            def run(m: RegistrationManager, kind: str) -> tuple[str, int]:
                code = self.codes[kind].get(email.casefold(), "000000")
                if not right:
                    code = f"{(int(code) + 1) % 10**6:06d}"
                guesses[kind] = code
                result = m.verify(email, code, token=token)
                return result.outcome.value, result.attempts_left

            (_, (value, _left)) = self.both(run)
            call = (email.casefold(), token or "", guesses["redis"])
            if value == "invalid_code" and (token is None or call not in self.wrong_calls):
                key = email.casefold()
                self.wrong_since_unlock[key] = self.wrong_since_unlock.get(key, 0) + 1
                self.wrong_calls.add(call)

        @rule(email=EMAILS, token=TOKENS)
        def guess_wrong(self, email: str, token: str | None) -> None:  # runs of wrong guesses
            self.verify(email, right=False, token=token)

        @rule(email=EMAILS)
        def unlock(self, email: str) -> None:
            if self.both(lambda m, _k: m.unlock(email)) == ("ok", True):
                self.wrong_since_unlock[email.casefold()] = 0

        @rule(email=EMAILS, token=TOKENS)
        def delete(self, email: str, token: str | None) -> None:
            self.both(lambda m, _k: m.delete(email, token=token))

        @rule(domain=st.sampled_from([None, "x.example", "y.example"]))
        def purge(self, domain: str | None) -> None:
            selection = Filter(domain=domain) if domain else None
            self.both(lambda m, _k: (r := m.purge(selection)).matched + r.expired)

        @invariant()
        def same_records(self) -> None:
            def view(m: RegistrationManager) -> list[tuple[str, int, int, bool]]:
                return sorted((r.identity, r.attempts, r.resend_count, r.locked) for r in m.list())

            assert view(self.redis) == view(self.memory)

        @invariant()
        def ttls_bounded_and_never_growing(self) -> None:
            for r in self.redis.list():
                key = redis_store(self.redis).keyspace.record(digest(r.identity))
                ttl = self.client.pttl(key)
                assert 0 < ttl <= POLICY.lifetime_ms
                identity_created = f"{r.identity}:{r.created_at}"
                assert ttl <= self.ttls.get(identity_created, ttl)
                self.ttls[identity_created] = ttl

        @invariant()
        def guesses_within_budget(self) -> None:
            assert all(n <= POLICY.max_attempts for n in self.wrong_since_unlock.values())

    run_state_machine_as_test(
        Lockstep,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
