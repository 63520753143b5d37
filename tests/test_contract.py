"""The contract every store keeps: run against RedisStore and MemoryStore alike."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from regctl import (
    Added,
    AlreadyExists,
    ConfigError,
    CooldownActive,
    Filter,
    InvalidInput,
    LockHeld,
    MemoryStore,
    NotFound,
    Policy,
    RateLimited,
    RegistrationLocked,
    RegistrationManager,
    ResendLimitReached,
    SortKey,
    VerifyOutcome,
)
from regctl.keys import Keyspace, digest
from regctl.reports import Tally
from regctl.security import verify_password
from regctl.store.base import Lease
from tests.conftest import SECRET, MakeManager

EMAIL = "Alice.Liddell@Example.COM"


def add(manager: RegistrationManager, pw_hash: str, email: str = EMAIL) -> str:
    return manager.add(email, "Alice", "Liddell", password_hash=pw_hash).code


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


# --- add and get ------------------------------------------------------------


def test_add_returns_a_code_of_the_policy_length(manager: RegistrationManager, pw_hash: str):
    added = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash)
    assert len(added.code) == 6
    assert added.code.isascii()
    assert added.code.isdigit()


def test_add_sets_lifetime_from_server_time(manager: RegistrationManager, pw_hash: str):
    reg = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash).registration
    assert reg.expires_at - reg.created_at == manager.policy.lifetime_ms
    assert reg.code_expires_at - reg.created_at == manager.policy.code_lifetime_ms
    assert reg.attempts == 0
    assert reg.resend_count == 0
    assert not reg.locked


def test_add_and_its_replay_return_the_record_as_stored(manager: RegistrationManager, pw_hash: str):
    added = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-once")
    replayed = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-once")
    stored = manager.get(EMAIL)
    assert stored is not None
    assert replayed.code == added.code
    records = (added.registration, replayed.registration, stored)
    assert len({replace(r, observed_at=0) for r in records}) == 1
    assert len({r.code_hash for r in records}) == 1  # (a field equality leaves out)


def test_add_keeps_the_address_as_given_and_finds_it_case_insensitively(
    manager: RegistrationManager, pw_hash: str
):
    add(manager, pw_hash)
    reg = manager.get("alice.liddell@example.com")
    assert reg is not None
    assert reg.email == "Alice.Liddell@example.com"  # the domain is normalized
    assert reg.first_name == "Alice"


def test_add_refuses_a_pending_address_in_any_case(manager: RegistrationManager, pw_hash: str):
    add(manager, pw_hash)
    with pytest.raises(AlreadyExists):
        add(manager, pw_hash, EMAIL.upper())


@pytest.mark.parametrize(
    ("first", "other"),
    [
        ("victim@straße.de", "victim@strasse.de"),  # (two domains: xn--strae-oqa.de is one)
        ("ſam@example.com", "sam@example.com"),  # (the long s)
        ("ΟΔΟΣ@example.com", "οδοσ@example.com"),  # (whether a server folds them is its own)
    ],
)
def test_addresses_that_differ_beyond_ascii_case_are_two_registrations(
    manager: RegistrationManager, pw_hash: str, first: str, other: str
):
    mine = manager.add(first, "Mallory", "M", password_hash=pw_hash)
    theirs = manager.add(other, "Victor", "V", password_hash=pw_hash)
    assert mine.registration.identity != theirs.registration.identity
    assert manager.verify(first, mine.code).ok
    local, _, domain = other.rpartition("@")
    pending = manager.get(f"{local}@{domain.upper()}")  # (the first's verify took its own)
    assert pending is not None
    assert pending.first_name == "Victor"
    assert manager.get(first) is None


def test_add_hashes_the_password_with_argon2id(manager: RegistrationManager):
    manager.add(EMAIL, "Alice", "Liddell", password="correct horse battery")
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(reg.password_hash, "correct horse battery")
    assert "correct horse" not in repr(reg)


def test_add_accepts_a_strong_prehashed_password(manager: RegistrationManager, pw_hash: str):
    add(manager, pw_hash)
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.password_hash == pw_hash


@pytest.mark.parametrize(
    "phc",
    [
        "not-a-hash",
        "$argon2i$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
        "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
    ],
)
def test_add_rejects_weak_or_foreign_password_hashes(manager: RegistrationManager, phc: str):
    with pytest.raises(InvalidInput):
        manager.add(EMAIL, "Alice", "Liddell", password_hash=phc)
    assert manager.get(EMAIL) is None


@pytest.mark.parametrize(
    ("email", "first", "last", "password"),
    [
        ("not-an-email", "A", "B", "long enough"),
        ("a@b", "A", "B", "long enough"),
        ("x" * 250 + "@example.com", "A", "B", "long enough"),
        ("a{b}*@example.com\n", "A", "B", "long enough"),
        ("ok@example.com", "", "B", "long enough"),
        ("ok@example.com", "A" * 101, "B", "long enough"),
        ("ok@example.com", "A\x00", "B", "long enough"),
        ("ok@example.com", "A\u202e", "B", "long enough"),
        ("ok@example.com", "A", "B\nC", "long enough"),
        ("ok@example.com", "A", "B", "short"),
        ("ok@example.com", "A", "B", "x" * 129),
    ],
)
def test_add_rejects_invalid_input_and_stores_nothing(
    manager: RegistrationManager, email: str, first: str, last: str, password: str
):
    with pytest.raises(InvalidInput):
        manager.add(email, first, last, password=password)
    assert manager.count() == 0


def test_get_of_an_unknown_address_is_none(manager: RegistrationManager):
    assert manager.get("nobody@example.com") is None


# --- verify -----------------------------------------------------------------


def test_verify_with_the_right_code_consumes_and_returns_the_record(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    result = manager.verify(EMAIL, code)
    assert result.outcome is VerifyOutcome.VERIFIED
    assert result.registration is not None
    assert result.registration.email == "Alice.Liddell@example.com"
    assert result.registration.password_hash == pw_hash
    assert manager.get(EMAIL) is None
    assert manager.count() == 0


def test_a_verified_registration_is_pending_no_more(manager: RegistrationManager, pw_hash: str):
    code = add(manager, pw_hash)
    first = manager.verify(EMAIL, code, token="call-1")
    replayed = manager.verify(EMAIL, code, token="call-1")
    for result in (first, replayed):
        assert result.registration is not None
        assert result.registration.status() == "verified"
        assert result.registration.public_dict()["status"] == "verified"
    other = replace(first, outcome=VerifyOutcome.INVALID_CODE)
    assert other.registration is not None
    assert other.registration.status() == "pending"


def test_verify_twice_finds_nothing_the_second_time(manager: RegistrationManager, pw_hash: str):
    code = add(manager, pw_hash)
    assert manager.verify(EMAIL, code).ok
    assert manager.verify(EMAIL, code).outcome is VerifyOutcome.NOT_FOUND


def test_verify_of_an_unknown_address_is_not_found(manager: RegistrationManager):
    assert manager.verify("nobody@example.com", "123456").outcome is VerifyOutcome.NOT_FOUND


def test_wrong_code_counts_down_attempts(manager: RegistrationManager, pw_hash: str):
    code = add(manager, pw_hash)
    lefts = [manager.verify(EMAIL, wrong(code)).attempts_left for _ in range(3)]
    assert lefts == [4, 3, 2]
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.attempts == 3


def test_last_wrong_code_locks_and_right_code_no_longer_works(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    outcomes = [manager.verify(EMAIL, wrong(code)).outcome for _ in range(5)]
    assert outcomes == [VerifyOutcome.INVALID_CODE] * 5
    assert manager.verify(EMAIL, code).outcome is VerifyOutcome.LOCKED
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.locked


@pytest.mark.parametrize(
    "bad",
    [
        "12345",
        "1234567",
        "１２３４５６",
        "١٢٣٤٥٦",
        "12 456",
        "123456\n",
        "+12345",
        "-12345",
        "",
        "abcdef",
    ],
)
def test_malformed_codes_are_rejected_without_costing_an_attempt(
    manager: RegistrationManager, pw_hash: str, bad: str
):
    add(manager, pw_hash)
    with pytest.raises(InvalidInput):
        manager.verify(EMAIL, bad)
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.attempts == 0


def test_expired_code_is_refused_without_costing_an_attempt(
    make_manager: MakeManager, pw_hash: str
):
    manager = make_manager(Policy(code_lifetime_ms=1000))
    code = add(manager, pw_hash)
    time.sleep(1.1)
    result = manager.verify(EMAIL, code)
    assert result.outcome is VerifyOutcome.CODE_EXPIRED
    assert result.attempts_left == 5
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.attempts == 0


def test_replay_of_the_same_verify_call_gets_the_same_answer(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    first = manager.verify(EMAIL, code, token="call-1")
    again = manager.verify(EMAIL, code, token="call-1")
    other = manager.verify(EMAIL, code, token="call-2")
    assert first.ok
    assert again.ok
    assert first.registration is not None
    assert again.registration is not None
    assert again.registration.email == first.registration.email
    assert other.outcome is VerifyOutcome.NOT_FOUND


def test_fifty_concurrent_right_codes_verify_exactly_once(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    barrier = threading.Barrier(50)

    def attempt(_: int) -> VerifyOutcome:
        barrier.wait()
        return manager.verify(EMAIL, code).outcome

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count(VerifyOutcome.VERIFIED) == 1
    assert outcomes.count(VerifyOutcome.NOT_FOUND) == 49


def test_concurrent_wrong_codes_never_exceed_the_attempt_budget(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    bad = wrong(code)
    barrier = threading.Barrier(40)

    def attempt(_: int) -> VerifyOutcome:
        barrier.wait()
        return manager.verify(EMAIL, bad).outcome

    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(attempt, range(40)))
    assert outcomes.count(VerifyOutcome.INVALID_CODE) == 5
    assert outcomes.count(VerifyOutcome.LOCKED) == 35


# --- resend -----------------------------------------------------------------


def test_resend_gives_a_new_code_and_kills_the_old_one(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(resend_cooldown_ms=0))
    old = add(manager, pw_hash)
    new = manager.resend(EMAIL).code
    while new == old:  # one chance in a million
        new = manager.resend(EMAIL).code
    assert manager.verify(EMAIL, old).outcome is VerifyOutcome.INVALID_CODE
    assert manager.verify(EMAIL, new).ok


def test_resend_keeps_attempts_and_lifetime(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(resend_cooldown_ms=0))
    code = add(manager, pw_hash)
    manager.verify(EMAIL, wrong(code))
    before = manager.get(EMAIL)
    after = manager.resend(EMAIL).registration
    assert before is not None
    assert after.attempts == 1
    assert after.expires_at == before.expires_at
    assert after.resend_count == 1


def test_resend_inside_the_cooldown_is_refused_with_the_wait(
    manager: RegistrationManager, pw_hash: str
):
    add(manager, pw_hash)
    with pytest.raises(CooldownActive) as caught:
        manager.resend(EMAIL)
    assert 55_000 < caught.value.retry_after_ms <= 60_000


def test_resend_stops_at_the_cap(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(resend_cooldown_ms=0, max_resends=2))
    add(manager, pw_hash)
    manager.resend(EMAIL)
    manager.resend(EMAIL)
    with pytest.raises(ResendLimitReached):
        manager.resend(EMAIL)


def test_resend_of_a_locked_record_is_refused(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(resend_cooldown_ms=0, max_attempts=1))
    code = add(manager, pw_hash)
    manager.verify(EMAIL, wrong(code))
    with pytest.raises(RegistrationLocked):
        manager.resend(EMAIL)


def test_resend_of_an_unknown_address_is_not_found(manager: RegistrationManager):
    with pytest.raises(NotFound):
        manager.resend("nobody@example.com")


def test_replayed_resend_counts_once(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(resend_cooldown_ms=0))
    add(manager, pw_hash)
    manager.resend(EMAIL, token="r1")
    again = manager.resend(EMAIL, token="r1")
    assert again.registration.resend_count == 1


def test_concurrent_resends_inside_the_cooldown_send_one_code(
    manager: RegistrationManager, pw_hash: str
):
    add(manager, pw_hash)
    policy = Policy(resend_cooldown_ms=0)
    fresh = RegistrationManager(manager.store, secret="test-secret-0123456789abcdef", policy=policy)
    fresh.resend(EMAIL)  # last_sent is now; with the default cooldown, only waits remain
    barrier = threading.Barrier(20)

    def attempt(_: int) -> str:
        barrier.wait()
        try:
            manager.resend(EMAIL)
        except CooldownActive:
            return "cooldown"
        return "sent"

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    assert results.count("sent") == 0
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.resend_count == 1


# --- unlock, delete -----------------------------------------------------------


def test_unlock_restores_the_attempt_budget(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(max_attempts=2))
    code = add(manager, pw_hash)
    manager.verify(EMAIL, wrong(code))
    manager.verify(EMAIL, wrong(code))
    assert manager.unlock(EMAIL)
    reg = manager.get(EMAIL)
    assert reg is not None
    assert not reg.locked
    assert reg.attempts == 0
    assert manager.verify(EMAIL, code).ok


def test_unlock_and_delete_of_unknown_addresses_report_false(manager: RegistrationManager):
    assert not manager.unlock("nobody@example.com")
    assert not manager.delete("nobody@example.com")


def test_delete_removes_the_registration(manager: RegistrationManager, pw_hash: str):
    add(manager, pw_hash)
    assert manager.delete(EMAIL)
    assert manager.get(EMAIL) is None
    assert manager.count() == 0


# --- list, count, stats ---------------------------------------------------------


def _populate(manager: RegistrationManager, pw_hash: str, n: int, domain: str) -> list[str]:
    emails = [f"user{i}@{domain}" for i in range(n)]
    for email in emails:
        manager.add(email, "U", "Ser", password_hash=pw_hash)
    return emails


def test_list_streams_every_record_in_expiry_order(manager: RegistrationManager, pw_hash: str):
    _populate(manager, pw_hash, 30, "a.example")
    rows = list(manager.list())
    assert len(rows) == 30
    assert [r.expires_at for r in rows] == sorted(r.expires_at for r in rows)


def test_list_filters_by_domain_and_limit(manager: RegistrationManager, pw_hash: str):
    _populate(manager, pw_hash, 5, "a.example")
    _populate(manager, pw_hash, 3, "b.example")
    rows = list(manager.list(Filter(domain="b.example")))
    assert sorted(r.email for r in rows) == [f"user{i}@b.example" for i in range(3)]
    assert len(list(manager.list(limit=4))) == 4


def test_a_domain_filter_matches_its_ascii_form_too(manager: RegistrationManager, pw_hash: str):
    manager.add("Victim@Straße.DE", "V", "I", password_hash=pw_hash)
    manager.add("ann@strasse.de", "A", "N", password_hash=pw_hash)
    for domain in ("straße.de", "xn--strae-oqa.de", "XN--STRAE-OQA.DE"):  # (as mail logs show it)
        assert [r.email for r in manager.list(Filter(domain=domain))] == ["Victim@straße.de"]
    assert manager.purge(Filter(domain="xn--strae-oqa.de"), dry_run=True).matched == 1


@pytest.mark.parametrize("domain", ["*", "a..b", "exa mple.com", "localhost"])
def test_a_domain_no_address_can_have_is_refused(domain: str):
    with pytest.raises(InvalidInput, match="invalid domain"):
        Filter(domain=domain)


def test_list_filters_by_lock_state(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(max_attempts=1))
    code = add(manager, pw_hash)
    _populate(manager, pw_hash, 2, "a.example")
    manager.verify(EMAIL, wrong(code))
    assert [r.email for r in manager.list(Filter(locked=True))] == ["Alice.Liddell@example.com"]
    assert len(list(manager.list(Filter(locked=False)))) == 2


def test_list_filters_by_age(manager: RegistrationManager, pw_hash: str):
    _populate(manager, pw_hash, 2, "old.example")
    # Until the store's own clock makes them a second old: the one added next is listed
    # long before it is that old, however busy the machine.
    deadline = time.monotonic() + 60
    while len(list(manager.list(Filter(older_than_ms=1000)))) < 2:
        assert time.monotonic() < deadline, "the first records never grew a second old"
        time.sleep(0.05)
    _populate(manager, pw_hash, 1, "new.example")
    old = list(manager.list(Filter(older_than_ms=1000)))
    new = list(manager.list(Filter(newer_than_ms=1000)))
    assert {r.domain for r in old} == {"old.example"}
    assert {r.domain for r in new} == {"new.example"}


def test_list_sorts_newest_first(manager: RegistrationManager, pw_hash: str):
    for i in range(3):
        manager.add(f"n{i}@example.com", "N", "N", password_hash=pw_hash)
        time.sleep(0.005)
    rows = list(manager.list(sort=SortKey.NEWEST, limit=2))
    assert [r.email for r in rows] == ["n2@example.com", "n1@example.com"]


def test_count_and_stats_agree_with_the_records(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(max_attempts=1))
    code = add(manager, pw_hash)
    _populate(manager, pw_hash, 4, "a.example")
    manager.verify(EMAIL, wrong(code))
    stats = manager.stats()
    assert manager.count() == 5
    assert stats.total == 5
    assert stats.locked == 1
    assert stats.expiring_within_hour == 0
    assert stats.top_domains[0] == ("a.example", 4)


def test_stats_counts_on_the_server_what_the_records_say(
    manager: RegistrationManager, pw_hash: str, monkeypatch: pytest.MonkeyPatch
):
    """The tally a store makes where the records are (a script per page on Redis)
    agrees with one made from the records themselves, across pages of a bucket."""
    monkeypatch.setattr("regctl.store.walk.COUNT_PAGE", 2)
    soon = RegistrationManager(
        manager.store, secret=SECRET, policy=Policy(lifetime_ms=1_800_000, code_lifetime_ms=1000)
    )
    later = RegistrationManager(manager.store, secret=SECRET, policy=Policy(max_attempts=1))
    ks = Keyspace("any")  # (a bucket depends on the identity and the bucket count only)
    domains = ["Mixed.Example", "mixed.example", "MIXED.example", "c.example"]
    in_bucket_0 = [  # 4 records in one bucket: two pages of 2
        next(
            e for i in range(10_000) if ks.bucket_of(digest((e := f"s{n}.{i}@{d}").casefold())) == 0
        )
        for n, d in enumerate(domains)
    ]
    for email in in_bucket_0:
        soon.add(email, "S", "Oon", password_hash=pw_hash)
    codes = [
        later.add(f"l{i}@b.example", "L", "Ater", password_hash=pw_hash).code for i in range(3)
    ]
    later.verify("l0@b.example", wrong(codes[0]))  # locked
    deadline = time.monotonic() + 60
    while not all(r.code_expired for r in soon.list() if r.domain != "b.example"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    expected = Tally()
    for reg in manager.list():
        expected.count(reg)
    assert manager.store.tally() == expected
    stats = manager.stats(top=2)
    assert (stats.total, stats.locked, stats.code_expired, stats.expiring_within_hour) == (
        7,
        1,
        4,
        4,
    )
    assert stats.top_domains == [("b.example", 3), ("mixed.example", 3)]


def test_a_paced_bulk_resend_waits_between_codes_never_after_the_last(
    make_manager: MakeManager, pw_hash: str
):
    """At one code an hour, a run limited to one code ends once it is sent."""
    manager = make_manager(Policy(resend_cooldown_ms=0))
    _populate(manager, pw_hash, 2, "slow.example")
    done = threading.Event()
    reports = []

    def run() -> None:
        reports.append(
            manager.resend_many(Filter(domain="slow.example"), per_second=1 / 3600, limit=1)
        )
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "the run slept after its last code"
    assert reports[0].not_sent == 1  # (made, and nobody asked to deliver it)


def test_an_empty_store_lists_nothing(manager: RegistrationManager):
    assert list(manager.list()) == []
    assert manager.stats().total == 0


# --- purge ----------------------------------------------------------------------


def test_purge_removes_expired_registrations(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(lifetime_ms=1000))
    _populate(manager, pw_hash, 3, "a.example")
    time.sleep(1.1)
    assert manager.get("user0@a.example") is None
    dry = manager.purge(dry_run=True)
    assert dry.expired == 3
    assert manager.purge().expired == 3
    assert manager.purge().total == 0


def test_purge_with_a_filter_deletes_only_matching_live_records(
    manager: RegistrationManager, pw_hash: str
):
    _populate(manager, pw_hash, 3, "spam.example")
    _populate(manager, pw_hash, 2, "good.example")
    dry = manager.purge(Filter(domain="spam.example"), dry_run=True)
    assert dry.matched == 3
    assert manager.count() == 5
    report = manager.purge(Filter(domain="spam.example"), batch=2)
    assert report.matched == 3
    assert {r.domain for r in manager.list()} == {"good.example"}


def test_purge_with_an_empty_filter_deletes_no_live_record(
    manager: RegistrationManager, pw_hash: str
):
    _populate(manager, pw_hash, 3, "a.example")
    report = manager.purge(Filter())
    assert report.matched == 0
    assert report.scanned == 3
    assert manager.count() == 3


def test_verify_after_expiry_is_not_found(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(lifetime_ms=1000))
    code = add(manager, pw_hash)
    time.sleep(1.1)
    assert manager.verify(EMAIL, code).outcome is VerifyOutcome.NOT_FOUND
    add(manager, pw_hash)  # the address is free again


# --- the purge lock ---------------------------------------------------------------


def test_a_purge_does_not_run_while_another_holds_the_lock(manager: RegistrationManager):
    lease = manager.store.lease("purge", 10_000, 0)
    try:
        with pytest.raises(LockHeld):
            manager.purge()
    finally:
        lease.release()
    assert manager.purge().total == 0


def test_a_purge_can_wait_for_the_lock(manager: RegistrationManager):
    lease = manager.store.lease("purge", 10_000, 0)
    threading.Timer(0.3, lease.release).start()
    assert manager.purge(wait=120).total == 0  # returns once released: a slow timer costs nothing


def lose_the_lease(manager: RegistrationManager) -> tuple[Lease, Lease]:
    """A short lease left to expire, and the next holder's (which waits for it)."""
    lost = manager.store.lease("purge", 100, 0)
    taken = manager.store.lease("purge", 600_000, 60)  # polls until the first expired
    return lost, taken


def test_a_holder_that_lost_its_lease_cannot_renew_it(manager: RegistrationManager):
    lost, taken = lose_the_lease(manager)
    with pytest.raises(LockHeld):
        lost.renew()
    with pytest.raises(LockHeld):  # the next holder's lease is still whole
        manager.store.lease("purge", 600_000, 0)
    taken.release()


def test_a_holder_that_lost_its_lease_cannot_free_the_next_holders(
    manager: RegistrationManager,
):
    lost, taken = lose_the_lease(manager)
    lost.release()
    with pytest.raises(LockHeld):
        manager.store.lease("purge", 600_000, 0)
    taken.renew()
    taken.release()
    manager.store.lease("purge", 600_000, 0).release()


def test_an_expired_lease_cannot_be_renewed_even_if_nobody_took_it(
    manager: RegistrationManager,
):
    lease = manager.store.lease("purge", 50, 0)
    time.sleep(0.2)  # only ever longer on a slow machine: the lease is surely gone
    with pytest.raises(LockHeld):
        lease.renew()


def test_a_dry_run_needs_no_lock(manager: RegistrationManager):
    lease = manager.store.lease("purge", 10_000, 0)
    try:
        assert manager.purge(dry_run=True).total == 0
    finally:
        lease.release()


# --- bulk add -------------------------------------------------------------------------


def test_add_many_reports_each_row_and_stores_the_good_ones(
    manager: RegistrationManager, pw_hash: str
):
    rows = [
        {"email": "one@example.com", "first_name": "O", "last_name": "N", "password_hash": pw_hash},
        {"email": "not-an-email", "first_name": "B", "last_name": "D", "password_hash": pw_hash},
        {"email": "ONE@example.com", "first_name": "O", "last_name": "N", "password_hash": pw_hash},
        {"email": "two@example.com", "first_name": "T", "last_name": "W", "password_hash": pw_hash},
    ]
    results = list(manager.add_many(rows, batch=3))
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Added", "InvalidInput", "AlreadyExists", "Added"]
    assert manager.count() == 2
    added = results[3]
    assert isinstance(added, Added)
    assert manager.verify("two@example.com", added.code).ok


# --- funnel statistics ------------------------------------------------------------------


def test_the_funnel_counts_each_event_once(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(max_attempts=1, resend_cooldown_ms=0))
    codes = {e: add(manager, pw_hash, e) for e in ("a@f.example", "b@f.example", "c@f.example")}
    manager.resend("a@f.example")
    manager.resend("a@f.example", token="same")
    manager.resend("a@f.example", token="same")  # a replay counts once
    manager.verify("c@f.example", codes["c@f.example"])
    manager.verify("b@f.example", wrong(codes["b@f.example"]))
    today = manager.funnel(1)[0]
    assert (today.created, today.sent, today.verified, today.locked, today.expired) == (
        3,
        5,
        1,
        1,
        0,
    )
    assert today.conversion == pytest.approx(1 / 3)


def test_the_funnel_counts_registrations_that_expired_unverified(
    make_manager: MakeManager, pw_hash: str
):
    manager = make_manager(Policy(lifetime_ms=1000))
    add(manager, pw_hash, "x@f.example")
    add(manager, pw_hash, "y@f.example")
    time.sleep(1.1)
    manager.purge()
    assert manager.funnel(1)[0].expired == 2


def test_stats_has_an_age_histogram(manager: RegistrationManager, pw_hash: str):
    add(manager, pw_hash)
    ages = dict(manager.stats().ages)
    assert ages["< 15m"] == 1
    assert sum(ages.values()) == 1


# --- the code secret --------------------------------------------------------

OTHER_SECRET = "another-secret-0123456789abcdef"


def test_a_store_refuses_a_writer_with_another_code_secret(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    other = RegistrationManager(manager.store, secret=OTHER_SECRET, policy=manager.policy)
    with pytest.raises(ConfigError, match="made with another code secret"):
        other.verify(EMAIL, code)
    with pytest.raises(ConfigError, match="made with another code secret"):
        other.resend(EMAIL)
    with pytest.raises(ConfigError, match="made with another code secret"):
        add(other, pw_hash, "bob@example.com")
    reg = manager.get(EMAIL)
    assert reg is not None
    assert (reg.attempts, reg.resend_count) == (0, 0)  # nothing counted, nothing written
    assert manager.get("bob@example.com") is None
    assert other.secret_matches() is False
    assert manager.secret_matches() is True
    assert manager.verify(EMAIL, code).outcome is VerifyOutcome.VERIFIED


def test_reading_and_verifying_record_no_secret(manager: RegistrationManager):
    assert manager.verify(EMAIL, "123456").outcome is VerifyOutcome.NOT_FOUND
    assert manager.secret_matches() is None
    other = RegistrationManager(manager.store, secret=OTHER_SECRET, policy=manager.policy)
    assert other.get(EMAIL) is None
    assert other.secret_matches() is None


def test_rotating_the_secret_switches_the_store_and_kills_old_codes(
    manager: RegistrationManager, pw_hash: str
):
    old_code = add(manager, pw_hash)
    other = RegistrationManager(manager.store, secret=OTHER_SECRET, policy=manager.policy)
    assert other.rotate_secret() == 1
    dead = other.verify(EMAIL, old_code)  # made before the rotation: dead, not a wrong guess
    assert (dead.outcome, dead.attempts_left) == (VerifyOutcome.CODE_EXPIRED, 5)
    fresh = RegistrationManager(manager.store, secret=SECRET, policy=manager.policy)
    with pytest.raises(ConfigError, match="made with another code secret"):
        fresh.verify(EMAIL, old_code)
    assert other.secret_matches() is True
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.attempts == 0


def test_a_code_a_rotation_killed_shows_as_expired(make_manager: MakeManager, pw_hash: str):
    """inspect, list --code-expired and stats tell what verify would: the code is dead."""
    manager = make_manager(Policy(resend_cooldown_ms=0))
    add(manager, pw_hash)
    add(manager, pw_hash, "later@example.com")
    rotated = RegistrationManager(manager.store, secret=OTHER_SECRET, policy=manager.policy)
    assert rotated.rotate_secret() == 2
    reg = rotated.get(EMAIL)
    assert reg is not None
    assert (reg.code_expired, reg.status()) == (True, "code-expired")
    assert len(list(rotated.list(Filter(code_expired=True)))) == 2
    assert rotated.stats().code_expired == 2
    new_code = rotated.resend(EMAIL).code  # (its user asks for a new one)
    assert rotated.rotate_secret() == 0  # again: nothing more dies, the new code lives
    assert rotated.verify(EMAIL, new_code).ok


def test_a_stale_writer_after_a_rotation_counts_no_attempt(
    manager: RegistrationManager, pw_hash: str
):
    """A process still on the old secret (it rechecks only now and then) meets a code
    made with the new one: refused, not a wrong guess."""
    stale = RegistrationManager(manager.store, secret=SECRET, policy=manager.policy)
    add(stale, pw_hash, "early@example.com")  # the stale manager has checked the store
    rotated = RegistrationManager(manager.store, secret=OTHER_SECRET, policy=manager.policy)
    rotated.rotate_secret()
    code = rotated.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash).code
    with pytest.raises(ConfigError, match="made with another code secret"):
        stale.verify(EMAIL, code)
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.attempts == 0
    assert rotated.verify(EMAIL, code).outcome is VerifyOutcome.VERIFIED


# --- idempotency tokens, bound to their call ------------------------------------------


def _same_bucket_as(email: str) -> str:
    """Another address whose keys share ``email``'s bucket (and so its hash slot)."""
    ks = Keyspace("x")
    bucket = ks.bucket_of(digest(email.casefold()))
    return next(
        other
        for other in (f"bob{i}@example.com" for i in range(10_000))
        if ks.bucket_of(digest(other)) == bucket
    )


def test_a_verify_token_reused_for_another_address_is_a_new_call(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash, "alice@example.com")
    bob = _same_bucket_as("alice@example.com")
    other = add(manager, pw_hash, bob)
    assert manager.verify("alice@example.com", code, token="shared").ok
    result = manager.verify(bob, wrong(other), token="shared")
    assert result.outcome is VerifyOutcome.INVALID_CODE
    assert result.registration is None
    reg = manager.get(bob)
    assert reg is not None
    assert reg.attempts == 1


def test_a_replayed_verify_counts_one_attempt_and_gets_the_first_answer(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    first = manager.verify(EMAIL, wrong(code), token="retry-me")
    again = manager.verify(EMAIL, wrong(code), token="retry-me")
    assert (first.outcome, first.attempts_left) == (VerifyOutcome.INVALID_CODE, 4)
    assert (again.outcome, again.attempts_left) == (VerifyOutcome.INVALID_CODE, 4)
    reg = manager.get(EMAIL)
    assert reg is not None
    assert reg.attempts == 1


def test_a_verify_token_reused_with_another_code_is_a_new_call(
    manager: RegistrationManager, pw_hash: str
):
    code = add(manager, pw_hash)
    assert manager.verify(EMAIL, wrong(code), token="t").attempts_left == 4
    assert manager.verify(EMAIL, wrong(wrong(code)), token="t").attempts_left == 3
    right = manager.verify(EMAIL, code, token="t")
    assert right.outcome is VerifyOutcome.VERIFIED
    replay = manager.verify(EMAIL, code, token="t")
    assert (replay.outcome, replay.attempts_left) == (VerifyOutcome.VERIFIED, 2)
    assert replay.registration is not None
    assert right.registration is not None
    assert replay.registration.identity == right.registration.identity


def test_a_replayed_add_hands_back_the_code_it_stored(manager: RegistrationManager, pw_hash: str):
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-1")
    again = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-1")
    assert again.code == first.code
    # (so a backend that takes a client's idempotency key as the token mails it once)
    assert (first.registration.replayed, again.registration.replayed) == (False, True)
    with pytest.raises(AlreadyExists):
        manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-2")
    assert manager.verify(EMAIL, again.code).outcome is VerifyOutcome.VERIFIED


@pytest.mark.parametrize(
    ("email", "first", "last"),
    [
        (EMAIL.upper(), "Alice", "Liddell"),  # the same identity, written otherwise
        (EMAIL, "Alicia", "Liddell"),
        (EMAIL, "Alice", "Smith"),
    ],
)
def test_an_add_token_reused_with_other_details_is_another_call_refused(
    manager: RegistrationManager, pw_hash: str, email: str, first: str, last: str
):
    """A replay is the same call again; the same token with other form data is not
    one, and gets no success that stored none of it."""
    first_try = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="form-1")
    with pytest.raises(AlreadyExists):
        manager.add(email, first, last, password_hash=pw_hash, token="form-1")
    stored = manager.get(EMAIL)
    assert stored is not None
    was = first_try.registration
    assert (stored.email, stored.first_name, stored.last_name) == (
        was.email,
        "Alice",
        "Liddell",
    )
    assert manager.verify(EMAIL, first_try.code).outcome is VerifyOutcome.VERIFIED


def test_an_add_replayed_with_a_clear_password_is_checked_against_the_first(
    manager: RegistrationManager,
):
    """Each try hashes the password anew, so the replay's hash is another; the clear
    password is checked against the stored hash instead."""
    first = manager.add(EMAIL, "Alice", "Liddell", password="first password", token="pw-1")
    again = manager.add(EMAIL, "Alice", "Liddell", password="first password", token="pw-1")
    assert again.code == first.code
    with pytest.raises(AlreadyExists):
        manager.add(EMAIL, "Alice", "Liddell", password="another password", token="pw-1")
    stored = manager.get(EMAIL)
    assert stored is not None
    assert verify_password(stored.password_hash, "first password")


@pytest.mark.parametrize("gone_by", ["verify", "delete"])
def test_an_add_replayed_after_its_record_is_gone_creates_nothing(
    manager: RegistrationManager, pw_hash: str, gone_by: str
):
    """A retry whose first try's reply was lost arrives after the user verified: it
    gets the first answer, and no second registration its code would verify again."""
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-gone")
    if gone_by == "verify":
        assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.VERIFIED
    else:
        assert manager.delete(EMAIL)
    again = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-gone")
    assert again.code == first.code
    assert again.registration.replayed
    assert again.registration.created_at == first.registration.created_at
    assert manager.get(EMAIL) is None
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.NOT_FOUND


def test_an_add_replayed_long_after_it_but_soon_after_its_verify_creates_nothing(pw_hash: str):
    """The replay window runs from the verify that consumed the record, not from the
    add: a user who verifies after it, then a late retry of the add (a job queue's)."""
    now = [1_800_000_000_000]
    manager = RegistrationManager(MemoryStore(clock=lambda: now[0]), secret=SECRET)
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="late")
    now[0] += 2 * manager.policy.replay_window_ms
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.VERIFIED
    now[0] += manager.policy.replay_window_ms // 2
    again = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="late")
    assert again.code == first.code
    assert manager.get(EMAIL) is None
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.NOT_FOUND


def test_an_add_replayed_after_the_address_verified_again_under_another_creates_nothing(
    manager: RegistrationManager, pw_hash: str
):
    """Every consumed add of the window is kept, not the last one only."""
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="tok-a")
    assert manager.verify(EMAIL, first.code).ok
    second = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="tok-b")
    assert manager.verify(EMAIL, second.code).ok
    for token, added in (("tok-a", first), ("tok-b", second)):
        again = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token=token)
        assert again.code == added.code
        assert manager.get(EMAIL) is None
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.NOT_FOUND


def test_an_add_replayed_after_a_concealed_sign_up_renamed_its_record_creates_nothing(
    make_manager: MakeManager,
):
    """A concealed sign-up by the owner again resends with its names: the record's
    add (the first call) is still what its verify keeps for replays."""
    manager = make_manager(Policy(resend_cooldown_ms=0))
    manager.conceal_pending = True
    first = manager.add(EMAIL, "Erin", "Old", password="the owners password", token="tok-1")
    again = manager.add(EMAIL, "Erin", "New", password="the owners password", token="tok-2")
    assert again.send
    assert manager.verify(EMAIL, again.code).ok
    replay = manager.add(EMAIL, "Erin", "Old", password="the owners password", token="tok-1")
    assert replay.code == first.code
    assert manager.get(EMAIL) is None


def test_a_concealed_sign_up_replayed_after_the_verify_creates_nothing(
    make_manager: MakeManager,
):
    """The owner's second sign-up resent the code (its call is not the record's add);
    its retry after a lost reply, arriving once the user verified, is answered as a
    replay, not stored as a new pending registration of a verified address."""
    manager = make_manager(Policy(resend_cooldown_ms=0))
    manager.conceal_pending = True
    manager.add(EMAIL, "Erin", "Old", password="the owners password", token="tok-1")
    again = manager.add(EMAIL, "Erin", "New", password="the owners password", token="tok-2")
    assert manager.verify(EMAIL, again.code).ok
    replay = manager.add(EMAIL, "Erin", "New", password="the owners password", token="tok-2")
    assert replay.registration.replayed  # (its code is the add's: dead with the record)
    assert manager.get(EMAIL) is None


def _concealing(make_manager: MakeManager) -> RegistrationManager:
    manager = make_manager(Policy(resend_cooldown_ms=0))
    manager.conceal_pending = True
    return manager


def _signup(manager: RegistrationManager, last: str, token: str) -> Added:
    return manager.add(EMAIL, "Erin", last, password="the owners password", token=token)


def test_every_concealed_sign_up_is_kept_for_replays_not_only_the_last(
    make_manager: MakeManager,
):
    manager = _concealing(make_manager)
    _signup(manager, "Old", "tok-1")
    _signup(manager, "New", "tok-2")
    last = _signup(manager, "Newer", "tok-3")
    assert manager.verify(EMAIL, last.code).ok
    assert _signup(manager, "New", "tok-2").registration.replayed
    assert manager.get(EMAIL) is None


def test_a_concealed_sign_up_on_an_imported_record_is_kept_for_replays(
    make_manager: MakeManager,
):
    """An imported record has no add of its own; the sign-up that resent its code does."""
    manager = _concealing(make_manager)
    _signup(manager, "Old", "tok-1")
    exported = list(manager.export(include_secrets=True))
    assert manager.delete(EMAIL)
    manager.import_records(json.dumps(line) for line in exported)
    again = _signup(manager, "New", "tok-2")
    assert again.send
    assert manager.verify(EMAIL, again.code).ok
    assert _signup(manager, "New", "tok-2").registration.replayed
    assert manager.get(EMAIL) is None


def test_a_concealed_sign_up_token_is_bound_to_its_call(make_manager: MakeManager):
    """The same token with other names, or a resend's token taken by a sign-up, is
    another call (its data applied, a fresh answer); a replay after a later resend is
    still a replay (no second code, no resend counted)."""
    manager = _concealing(make_manager)
    _signup(manager, "Old", "tok-1")
    _signup(manager, "New", "tok-2")
    other = _signup(manager, "Other", "tok-2")
    assert (other.registration.replayed, other.registration.last_name) == (False, "Other")
    manager.resend(EMAIL, token="plain")
    taken = _signup(manager, "Taken", "plain")
    assert (taken.registration.replayed, taken.registration.last_name) == (False, "Taken")
    sent = taken.registration.resend_count
    manager.resend(EMAIL, token="later")
    replay = _signup(manager, "Taken", "plain")
    assert replay.registration.replayed
    assert replay.registration.resend_count == sent + 1  # (the later resend's only)


def test_an_add_token_reused_after_verify_with_other_names_gets_another_code(
    manager: RegistrationManager, pw_hash: str
):
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="add-names")
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.VERIFIED
    other = manager.add(EMAIL, "Alicia", "Liddell", password_hash=pw_hash, token="add-names")
    assert other.code != first.code
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.INVALID_CODE


def test_an_add_token_reused_for_another_address_adds_it_with_its_own_code(
    manager: RegistrationManager, pw_hash: str
):
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="same")
    other = manager.add("bob@example.com", "Bob", "B", password_hash=pw_hash, token="same")
    assert manager.verify("bob@example.com", other.code).outcome is VerifyOutcome.VERIFIED
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.VERIFIED


def test_a_replayed_resend_hands_back_the_code_that_verifies(
    make_manager: MakeManager, pw_hash: str
):
    manager = make_manager(Policy(resend_cooldown_ms=0))
    old = add(manager, pw_hash)
    first = manager.resend(EMAIL, token="resend-1")
    again = manager.resend(EMAIL, token="resend-1")
    assert again.code == first.code != old
    assert (first.registration.replayed, again.registration.replayed) == (False, True)
    assert again.registration.resend_count == 1
    assert manager.verify(EMAIL, old).outcome is VerifyOutcome.INVALID_CODE
    assert manager.verify(EMAIL, again.code).outcome is VerifyOutcome.VERIFIED


def test_a_replayed_delete_reports_the_deletion_it_made(manager: RegistrationManager, pw_hash: str):
    add(manager, pw_hash)
    assert manager.delete(EMAIL, token="del-1") is True
    assert manager.delete(EMAIL, token="del-1") is True  # the retry after a lost reply
    assert manager.delete(EMAIL) is False
    assert manager.get(EMAIL) is None


@pytest.mark.parametrize("token", ["", "x" * 129, "tab\there", "ünï"])
def test_a_malformed_token_is_invalid_input(manager: RegistrationManager, token: str):
    with pytest.raises(InvalidInput, match="token"):
        manager.verify(EMAIL, "123456", token=token)


def test_the_first_write_records_the_secret_even_after_a_verify(
    manager: RegistrationManager, pw_hash: str
):
    assert manager.verify(EMAIL, "123456").outcome is VerifyOutcome.NOT_FOUND
    add(manager, pw_hash)
    assert manager.secret_matches() is True
    other = RegistrationManager(manager.store, secret=OTHER_SECRET, policy=manager.policy)
    with pytest.raises(ConfigError, match="made with another code secret"):
        add(other, pw_hash, "bob@example.com")


def test_a_resend_with_the_adds_token_is_a_new_resend_with_a_new_code(
    make_manager: MakeManager, pw_hash: str
):
    manager = make_manager(Policy(resend_cooldown_ms=0))
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash, token="same")
    resent = manager.resend(EMAIL, token="same")
    assert resent.code != first.code
    assert resent.registration.resend_count == 1
    assert manager.verify(EMAIL, first.code).outcome is VerifyOutcome.INVALID_CODE
    assert manager.verify(EMAIL, resent.code).ok


def test_a_replayed_delete_of_nothing_never_deletes_a_later_record(
    manager: RegistrationManager, pw_hash: str
):
    assert manager.delete(EMAIL, token="del") is False
    add(manager, pw_hash)
    assert manager.delete(EMAIL, token="del") is False  # the first answer, replayed
    assert manager.get(EMAIL) is not None


def test_a_record_read_back_carries_its_code_hash(manager: RegistrationManager, pw_hash: str):
    added = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash)
    got = manager.get(EMAIL)
    assert got is not None
    assert got.code_hash == manager.codes.digest(got.identity, added.code)


def test_a_backend_manager_can_record_its_calls_in_the_audit_trail(
    manager: RegistrationManager, pw_hash: str
):
    audited = RegistrationManager(
        manager.store, secret=SECRET, policy=manager.policy, audit_as="signup-api@web-3"
    )
    code = add(audited, pw_hash)
    audited.verify(EMAIL, wrong(code))
    audited.verify(EMAIL, code)
    with pytest.raises(NotFound):
        audited.resend(EMAIL)
    trail = [(e["who"], e["command"], e["outcome"]) for e in manager.audit_trail(10)]
    assert trail == [
        ("signup-api@web-3", "resend", "not_found"),
        ("signup-api@web-3", "verify", "ok"),  # (as the CLI's verify records it)
        ("signup-api@web-3", "verify", "invalid_code"),
        ("signup-api@web-3", "add", "ok"),
    ]
    assert manager.audit_trail(1)[0]["target"] == EMAIL


def test_the_audit_trail_filters_by_command_and_target(manager: RegistrationManager):
    for who, command, target in [
        ("ops", "add", "Ann@Example.com"),
        ("ops", "delete", "ann@example.com"),
        ("ops", "add", "bob@example.com"),
        ("cron", "purge", ""),
    ]:
        manager.audit(who, command, target, "ok")
    newest = [e["command"] for e in manager.audit_trail(2)]
    assert newest == ["purge", "add"]
    assert [e["target"] for e in manager.audit_trail(10, command="add")] == [
        "bob@example.com",
        "Ann@Example.com",
    ]
    assert [e["command"] for e in manager.audit_trail(10, target="ANN@")] == ["delete", "add"]
    assert manager.audit_trail(1, command="add", target="ann")[0]["target"] == "Ann@Example.com"
    manager.audit("ops", "add", "evil\x1b[2J@example.com", "ok")
    assert manager.audit_trail(1)[0]["target"] == "evil\\x1b[2J@example.com"  # stored visible
    with pytest.raises(InvalidInput, match="records no command 'verfy'"):
        manager.audit_trail(10, command="verfy")


def test_health_counts_the_pending_in_the_original_shape(manager: RegistrationManager, pw_hash):
    manager.add("health@example.com", "H", "C", password_hash=pw_hash)
    report = manager.health(timeout=60)
    assert (report.status, report.ok) == ("ok", True)
    data = report.to_dict()
    assert {"status", "timestamp", "version", "redis", "pending_registrations"} <= data.keys()
    assert data["pending_registrations"]["total"] == 1
    redis_connected = data["pending_registrations"]["redis_connected"]
    assert redis_connected is (manager.store.description != "memory")
    if redis_connected:  # the original's redis fields, as they were
        facts = data["redis"]
        assert facts["status"] == "connected"
        assert facts["ping"] is True
        assert {"connected_clients", "used_memory_human", "uptime_in_seconds"} <= facts.keys()
    data["status"] = "changed"
    assert report.to_dict()["status"] == "ok"  # a copy: the report is not changed through it


# --- conceal_pending: sign-up forms that do not tell who is registering ----------------


def test_a_concealed_add_by_the_owner_again_gets_a_new_code(
    make_manager: MakeManager, pw_hash: str
):
    """The same password again (the first mail lost): a new code, the old one dead."""
    manager = make_manager(Policy(resend_cooldown_ms=0))
    manager.conceal_pending = True
    first = manager.add(EMAIL, "Alice", "Liddell", password="alices-own-password")
    again = manager.add(EMAIL.lower(), "Alice", "L.", password="alices-own-password")
    assert again.send
    assert again.code != first.code
    assert again.registration.resend_count == 1
    assert manager.verify(EMAIL, first.code).outcome is not VerifyOutcome.VERIFIED  # dead
    verified = manager.verify(EMAIL, again.code).registration
    assert verified is not None
    assert verify_password(verified.password_hash, "alices-own-password")


@pytest.mark.parametrize("stranger_first", [True, False])
def test_a_later_concealed_add_changes_nothing_a_code_confirms(
    make_manager: MakeManager, pw_hash: str, stranger_first: bool
):
    """Whoever signs up first, a later sign-up with another password sends nothing and
    changes nothing: the one code sent confirms the first one's password. Its answer
    is its own sign-up's, as a new address's would be: the pending names stay unsaid."""
    manager = make_manager(Policy(resend_cooldown_ms=0))
    manager.conceal_pending = True
    sign_ups = [("Mallory", "mallory-password-1"), ("Alice", "alices-own-password")]
    first_name, first_pw = sign_ups[0] if stranger_first else sign_ups[1]
    then_name, then_pw = sign_ups[1] if stranger_first else sign_ups[0]
    first = manager.add(EMAIL, first_name, "X", password=first_pw)
    then = manager.add(EMAIL, then_name, "X", password=then_pw)
    assert (then.send, then.code) == (False, "")  # another password: nothing goes out
    assert then.registration.first_name == then_name
    assert verify_password(then.registration.password_hash, then_pw)
    kept = manager.get(EMAIL)
    assert kept is not None
    assert (kept.first_name, kept.resend_count) == (first_name, 0)
    verified = manager.verify(EMAIL, first.code).registration  # the one code sent
    assert verified is not None
    assert verify_password(verified.password_hash, first_pw)


def test_a_concealed_add_within_the_cooldown_sends_nothing_and_changes_nothing(
    manager: RegistrationManager, pw_hash: str
):
    manager.conceal_pending = True
    first = manager.add(EMAIL, "Alice", "Liddell", password_hash=pw_hash)
    again = manager.add(EMAIL, "Mallory", "Evil", password="mallory-password-1")
    assert (again.send, again.code) == (False, "")
    kept = manager.get(EMAIL)  # no code goes out, so nothing of this sign-up is kept
    assert kept is not None
    assert (kept.first_name, kept.password_hash) == ("Alice", pw_hash)
    assert kept.resend_count == 0
    assert manager.verify(EMAIL, first.code).ok  # the first code still works


def test_a_concealed_add_on_a_locked_address_sends_nothing(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(resend_cooldown_ms=0, max_attempts=1))
    manager.conceal_pending = True
    code = add(manager, pw_hash)
    manager.verify(EMAIL, wrong(code))
    assert manager.add(EMAIL, "A", "L", password_hash=pw_hash).send is False


def test_a_concealed_add_replayed_with_its_token_hands_back_the_same_code(
    make_manager: MakeManager, pw_hash: str
):
    manager = make_manager(Policy(resend_cooldown_ms=0))
    manager.conceal_pending = True
    add(manager, pw_hash)
    once = manager.add(EMAIL, "A", "L", password_hash=pw_hash, token="signup-42")
    twice = manager.add(EMAIL, "A", "L", password_hash=pw_hash, token="signup-42")
    assert once.code == twice.code
    assert (once.registration.replayed, twice.registration.replayed) == (False, True)
    assert twice.registration.resend_count == 1  # one resend, not two


def test_without_conceal_pending_a_second_add_is_refused(manager: RegistrationManager, pw_hash):
    add(manager, pw_hash)
    with pytest.raises(AlreadyExists):
        add(manager, pw_hash)


# --- limits per client key ----------------------------------------------------------


def test_a_client_key_signs_up_its_limit_then_waits_its_window(
    make_manager: MakeManager, pw_hash: str
):
    manager = make_manager(Policy(signups_per_client=2))
    for i in range(2):
        manager.add(f"c{i}@example.com", "C", "K", password_hash=pw_hash, client="203.0.113.7")
    with pytest.raises(RateLimited) as refused:
        manager.add("c2@example.com", "C", "K", password_hash=pw_hash, client="203.0.113.7")
    assert 0 < refused.value.retry_after_ms <= manager.policy.client_window_ms
    assert manager.get("c2@example.com") is None  # refused before anything was written
    manager.add("c2@example.com", "C", "K", password_hash=pw_hash, client="198.51.100.1")
    used, limit, wait = manager.client_limits("203.0.113.7")["signup"]
    assert (used, limit) == (2, 2)
    assert 0 < wait <= manager.policy.client_window_ms


@pytest.mark.parametrize(
    "form",
    [
        {"first_name": "", "password_hash": "x"},  # a name missing
        {"password": "short"},
        {"password_hash": "$argon2id$not-a-hash"},
        {},  # neither password nor hash
    ],
)
def test_an_invalid_sign_up_counts_against_no_limit(
    make_manager: MakeManager, form: dict[str, str]
):
    manager = make_manager(Policy(signups_per_client=1))
    with pytest.raises(InvalidInput):
        manager.add(EMAIL, **{"first_name": "A", "last_name": "L", **form}, client="10.0.0.9")
    assert manager.client_limits("10.0.0.9")["signup"][0] == 0


def test_a_replayed_call_counts_once_against_its_client(make_manager: MakeManager, pw_hash):
    manager = make_manager(Policy(signups_per_client=1))
    first = manager.add(EMAIL, "A", "L", password_hash=pw_hash, token="t-1", client="10.0.0.1")
    again = manager.add(EMAIL, "A", "L", password_hash=pw_hash, token="t-1", client="10.0.0.1")
    assert again.code == first.code
    assert manager.client_limits("10.0.0.1")["signup"][0] == 1


def test_codes_per_client_count_sign_ups_and_resends(make_manager: MakeManager, pw_hash):
    manager = make_manager(Policy(codes_per_client=2, resend_cooldown_ms=0))
    add_with = {"password_hash": pw_hash, "client": "10.0.0.2"}
    manager.add(EMAIL, "A", "L", **add_with)
    manager.resend(EMAIL, client="10.0.0.2")
    with pytest.raises(RateLimited):
        manager.resend(EMAIL, client="10.0.0.2")
    assert manager.resend(EMAIL).registration.resend_count == 2  # no client: no limit
    assert manager.reset_limits("10.0.0.2")
    manager.resend(EMAIL, client="10.0.0.2")
    assert not manager.reset_limits("10.0.0.9")


def test_a_client_window_slides(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(signups_per_client=1, client_window_ms=1000))
    manager.add("s0@example.com", "S", "W", password_hash=pw_hash, client="10.0.0.3")
    with pytest.raises(RateLimited):
        manager.add("s1@example.com", "S", "W", password_hash=pw_hash, client="10.0.0.3")
    deadline = time.monotonic() + 60
    while True:  # once the first sign-up is a window old, the next is let in
        try:
            manager.add("s1@example.com", "S", "W", password_hash=pw_hash, client="10.0.0.3")
            break
        except RateLimited:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_token_reused_for_another_address_counts_again(make_manager: MakeManager, pw_hash):
    manager = make_manager(Policy(signups_per_client=2))
    for i in range(2):
        manager.add(f"t{i}@example.com", "T", "R", password_hash=pw_hash, token="fixed", client="c")
    with pytest.raises(RateLimited):
        manager.add("t2@example.com", "T", "R", password_hash=pw_hash, token="fixed", client="c")


def test_a_refused_call_counts_in_no_window(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(signups_per_client=5, codes_per_client=2, resend_cooldown_ms=0))
    manager.add("r0@example.com", "R", "C", password_hash=pw_hash, client="c")
    manager.resend("r0@example.com", client="c")  # the codes window is full now
    for i in range(1, 4):
        with pytest.raises(RateLimited):
            manager.add(f"r{i}@example.com", "R", "C", password_hash=pw_hash, client="c")
    assert manager.client_limits("c")["signup"][0] == 1  # the refused adds counted nothing


@pytest.mark.parametrize(
    ("one", "same"),
    [
        ("203.0.113.7", "::ffff:203.0.113.7"),
        ("203.0.113.7", "64:ff9b::cb00:7107"),  # NAT64's well-known prefix
        ("2001:db8::1", "2001:DB8:0:0:ffff::9"),  # one /64: one machine's share
        ("2001:db8::1", "2001:db8::1%eth0"),
        ("10.0.0.1", " 10.0.0.1 "),
        ("café-session", "cafe\u0301-session"),  # NFC
    ],
)
def test_spellings_of_one_client_share_its_windows(
    make_manager: MakeManager, pw_hash: str, one: str, same: str
):
    manager = make_manager(Policy(signups_per_client=1))
    manager.add("s0@example.com", "S", "P", password_hash=pw_hash, client=one)
    with pytest.raises(RateLimited):
        manager.add("s1@example.com", "S", "P", password_hash=pw_hash, client=same)


def test_ipv4_clients_behind_nat64_are_told_apart(make_manager: MakeManager, pw_hash: str):
    """(As IPv6 addresses, they all had one /64: one window for every IPv4 client.)"""
    manager = make_manager(Policy(signups_per_client=1))
    manager.add("n0@example.com", "N", "A", password_hash=pw_hash, client="64:ff9b::1.2.3.4")
    manager.add("n1@example.com", "N", "A", password_hash=pw_hash, client="64:ff9b::5.6.7.8")


@pytest.mark.parametrize("client", ["", "  ", "x" * 257, "bad\nkey", "\x1b[2J"])
def test_a_bad_client_key_is_refused_and_counts_nothing(
    manager: RegistrationManager, pw_hash: str, client: str
):
    with pytest.raises(InvalidInput, match="client key"):
        manager.add(EMAIL, "A", "L", password_hash=pw_hash, client=client)
    assert manager.get(EMAIL) is None


def test_a_limit_of_zero_is_no_limit(make_manager: MakeManager, pw_hash: str):
    manager = make_manager(Policy(signups_per_client=0))
    for i in range(15):
        manager.add(f"z{i}@example.com", "Z", "L", password_hash=pw_hash, client="10.0.0.4")
    assert manager.client_limits("10.0.0.4")["signup"] == (0, 0, 0)
