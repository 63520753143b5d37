"""RedisStore: pending registrations in Redis, one Lua script per state change."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from regctl.bridge import settled
from regctl.codec import decode, decode_row, encode
from regctl.connection import (
    Client,
    check_decoding,
    one_command,
    stop_watching,
    translated_errors,
)
from regctl.errors import (
    UNREADABLE,
    AlreadyExists,
    ConfigError,
    DamagedRecord,
    RegctlError,
    already_exists,
    damaged,
    lock_held,
    lock_lost,
    other_secret,
    resend_refusal,
)
from regctl.keys import MAX_BUCKETS, MIN_BUCKETS, Keyspace, digest
from regctl.model import (
    SCHEMA_VERSION,
    Filter,
    PendingRegistration,
    Policy,
    VerifyOutcome,
    VerifyResult,
)
from regctl.reports import PurgeReport, Tally
from regctl.security import made_with, new_token
from regctl.store.base import (
    AUDIT_MAX,
    CLOCK_SKEW_MS,
    HOUR_MS,
    LIMIT_ACTIONS,
    MAX_PURGE_BATCH,
    PAGE,
    PURGE_BATCH,
    Counts,
    NewRegistration,
    Progress,
    chunks,
    paired,
)
from regctl.store.scripts import ScriptRunner
from regctl.store.walk import (
    LiveIndex,
    all_or_raise,
    index_gaps,
    live_index,
    purge_expired,
    purge_walk,
    refuse_during_reshard,
    tally,
    walk,
)
from regctl.text import visible

Item = TypeVar("Item")
R = TypeVar("R")

# The field of the meta hash that holds the code secret's fingerprint.
FINGERPRINT_FIELD = "code_secret_fingerprint"
# How long a bucket's index outlives its last entry (see add.lua).
INDEX_GRACE_MS = 3_600_000
# Codes a rotation expires per pipelined batch of scripts.
EXPIRY_BATCH = 100
# verify.lua's statuses (a lookup: calling VerifyOutcome costs 15 times as much)
_OUTCOMES = {outcome.value: outcome for outcome in VerifyOutcome}


def _created(
    new: NewRegistration, policy: Policy, reply: list[Any], acked: int | None = None
) -> PendingRegistration | AlreadyExists:
    """The record add.lua created (or found, for a replay of the same call), or the
    refusal of an address already pending."""
    status, now, *row = reply
    if status == "exists":
        return already_exists(new.email)
    if status == "replayed":  # (the record, or only its creation time: consumed since)
        made = decode_row(row[0], int(now), acked) if row else new.created(int(now), policy, acked)
        return replace(made, replayed=True)
    return new.created(int(now), policy, acked)


def _added(
    batch: Sequence[tuple[NewRegistration, str]], replies: list[Any], policy: Policy
) -> list[PendingRegistration | RegctlError]:
    return [
        reply if isinstance(reply, RegctlError) else _created(new, policy, reply)
        for (new, _token), reply in zip(batch, replies, strict=True)
    ]


@dataclass
class _RedisLease:
    store: RedisStore
    key: str
    token: str
    ttl_ms: int

    def renew(self) -> None:
        if not self.store.scripts.run("lock", (self.key,), ("renew", self.token, self.ttl_ms)):
            raise lock_lost()

    def release(self) -> None:
        self.store.scripts.run("lock", (self.key,), ("release", self.token, self.ttl_ms))


class RedisStore:
    """Pending registrations on a Redis server (standalone; Cluster-ready key layout).

    Example::

        client = redis.Redis.from_url("redis://localhost", decode_responses=True)
        store = RedisStore(client, prefix="shop")

    A client that hands back bytes (no ``decode_responses=True``) is a ConfigError.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "regctl",
        buckets: int | None = None,
        description: str | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        audit_max: int = AUDIT_MAX,
        call_budget_s: float = 5.0,
    ) -> None:
        check_decoding(client)
        self.client = client
        self._wanted = Keyspace(prefix, buckets) if buckets else Keyspace(prefix)
        # A bucket count asked for (not the default) must be the stored layout's.
        self._asked_buckets = buckets
        self._keyspace: Keyspace | None = None
        self.description = description or "redis"
        self.audit_max = audit_max  # the audit stream's cap (MAXLEN ~)
        self.scripts = ScriptRunner(
            client,
            lambda: self.keyspace,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            call_budget_s=call_budget_s,
        )

    # --- plumbing ---------------------------------------------------------

    @property
    def keyspace(self) -> Keyspace:
        """The layout recorded on the server (the first writer's bucket count wins).

        Reading it writes nothing, so reads work on a full server; until a write
        records a layout, the configured one is used (and looked up again next time).
        """
        if self._keyspace is None:
            recorded = self._recorded_buckets()
            if recorded is None:
                return self._wanted
            self._keyspace = self._layout(recorded)
        return self._keyspace

    def _layout(self, recorded: int) -> Keyspace:
        """The stored layout; refused when another bucket count was asked for: records
        are where the stored count puts them, and a setting is never silently ignored."""
        asked = self._asked_buckets
        if asked is not None and asked != recorded:
            raise ConfigError(
                f"the store under prefix {self._wanted.prefix} has {recorded} buckets; "
                f"REGCTL_BUCKETS asks for {asked}",
                f"unset REGCTL_BUCKETS, or move the records to a new prefix with {asked} "
                "buckets (README: changing the bucket count)",
            )
        return Keyspace(self._wanted.prefix, recorded)

    def _recorded_buckets(self) -> int | None:
        with self._command():
            recorded = self.client.hget(self._wanted.meta, "buckets")
        return None if recorded is None else self._checked(recorded)

    def _checked(self, recorded: str) -> int:
        """The bucket count the layout record holds, or ConfigError if it is damaged."""
        if not (recorded.isascii() and recorded.isdigit()) or not (
            MIN_BUCKETS <= int(recorded) <= MAX_BUCKETS
        ):
            raise ConfigError(
                f"the layout record {self._wanted.meta} is damaged (buckets {visible(recorded)!r})",
                f"set it back to the bucket count its records use ({MIN_BUCKETS}..{MAX_BUCKETS})",
            )
        return int(recorded)

    def _command(self) -> one_command:
        """Around a command sent outside a script: its errors translated, within the
        call's one deadline."""
        return one_command(self.scripts.call_budget_s)

    def _claim_layout(self) -> Keyspace:
        """Before creating records: record this layout unless one is (the first wins)."""
        if self._keyspace is None:
            # (No lock: two first writers both set what is unset and read the same back.
            # A lock held across the round trip would stall an event loop's other calls.)
            with self._command():
                want = self._wanted
                pipe = self.client.pipeline(transaction=False)
                pipe.hsetnx(want.meta, "buckets", want.buckets)
                pipe.hsetnx(want.meta, "schema", SCHEMA_VERSION)
                pipe.hget(want.meta, "buckets")
                self._keyspace = self._layout(self._checked(pipe.execute()[2]))
        return self._keyspace

    @property
    def is_cluster(self) -> bool:
        return self.scripts.is_cluster

    def twin(self, client: Client) -> RedisStore:
        """This store over another client of the same servers (the async manager's)."""
        twin = RedisStore(
            client,
            prefix=self._wanted.prefix,
            buckets=self._asked_buckets,
            description=self.description,
            wait_replicas=self.scripts.wait_replicas,
            wait_timeout_ms=self.scripts.wait_timeout_ms,
            audit_max=self.audit_max,
            call_budget_s=self.scripts.call_budget_s,
        )
        twin._keyspace = self._keyspace
        return twin

    def lease(self, name: str, ttl_ms: int, wait_s: float) -> _RedisLease:
        key = self.keyspace.lock(name)
        lease = _RedisLease(self, key, new_token(), ttl_ms)
        deadline = time.monotonic() + wait_s
        try:
            while not self.scripts.run("lock", (key,), ("acquire", lease.token, ttl_ms)):
                if time.monotonic() >= deadline:
                    raise lock_held(name, wait_s)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        except Exception:
            raise  # (refused, or the server failed: a release would only wait as long)
        except BaseException:
            # Interrupted (Ctrl-C) with an acquire sent: the server may have run it, and
            # no caller holds the lease to release it (it would stay taken until its
            # TTL ran out). Released by its token: a lease not taken is left alone.
            with contextlib.suppress(Exception):
                lease.release()
            raise
        return lease

    def funnel_counts(self, days: int) -> list[tuple[int, dict[str, int]]]:
        ks = self.keyspace
        out = []
        with self._command():
            seconds, _micros = self.client.time()
            today = int(seconds) // 86_400
            for day in range(today, today - days, -1):  # (a round trip a day: flat memory)
                pipe = self.client.pipeline(transaction=False)
                for bucket in range(ks.buckets):
                    pipe.hgetall(ks.funnel(bucket, day))
                totals: dict[str, int] = {}
                for counters in pipe.execute():
                    for event, n in counters.items():
                        if n.isdigit():  # a counter something else overwrote is left out
                            totals[event] = totals.get(event, 0) + int(n)
                out.append((day, totals))
        return out

    def hit_limits(self, client: str, limits: Mapping[str, int], window_ms: int, hit: str) -> int:
        windows = tuple(self.keyspace.client_limit(action, client) for action in limits)
        return int(self.scripts.run("limit", windows, (window_ms, hit, *limits.values())))

    def client_limits(self, client: str, window_ms: int) -> dict[str, tuple[int, int]]:
        windows = tuple(self.keyspace.client_limit(a, client) for a in LIMIT_ACTIONS)
        replies = self.scripts.run("limits", windows, (window_ms,))
        return {a: (int(h), int(w)) for a, (h, w) in zip(LIMIT_ACTIONS, replies, strict=True)}

    def reset_limits(self, client: str) -> bool:
        windows = [self.keyspace.client_limit(a, client) for a in LIMIT_ACTIONS]
        with self._command():  # (one slot: one DEL, on Cluster too)
            return int(self.client.delete(*windows)) > 0

    def secret_fingerprint(self, claim: str | None = None) -> str | None:
        meta = self._wanted.meta  # like the audit key, it needs no bucket layout
        with self._command():
            stored: str | None = self.client.hget(meta, FINGERPRINT_FIELD)
            if stored is None and claim is not None:
                pipe = self.client.pipeline(transaction=False)
                pipe.hsetnx(meta, FINGERPRINT_FIELD, claim)
                pipe.hget(meta, FINGERPRINT_FIELD)
                stored = pipe.execute()[1]
        return stored

    def set_secret_fingerprint(self, fingerprint: str) -> None:
        with self._command():
            self.client.hset(self._wanted.meta, FINGERPRINT_FIELD, fingerprint)

    def expire_codes(self, fingerprint: str) -> int:
        dead = (
            reg
            for reg in self.scan()
            if not reg.code_expired and not made_with(reg.code_hash, fingerprint)
        )
        expired = self._streamed(
            "expire_code",
            chunks(dead, EXPIRY_BATCH),
            lambda ks, reg: ((ks.record(digest(reg.identity)),), (reg.code_hash,)),
            lambda _batch, replies: [int(reply) for reply in replies],
            claim=False,
        )
        return sum(sum(batch) for batch in expired)

    def audit_append(self, entry: Mapping[str, str]) -> None:
        with self._command():
            # The audit key needs no bucket layout: no layout round trip for it.
            audit, cap = self._wanted.audit, self.audit_max
            self.client.xadd(audit, dict(entry), maxlen=cap, approximate=True)

    def audit_read(self, count: int) -> list[dict[str, str]]:
        with self._command():
            rows = self.client.xrevrange(self._wanted.audit, count=count)
        # The server's time last: an entry cannot carry its own "at".
        return [{**fields, "at": entry_id.partition("-")[0]} for entry_id, fields in rows]

    def close(self) -> None:
        stop_watching(self.client)
        self.client.close()
        pool = getattr(self.client, "connection_pool", None)  # a cluster closes its own
        if pool is not None:
            settled(pool.disconnect())  # (an asyncio pool's, awaited)
        # On Sentinel, the clients that asked the sentinels for the master
        for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
            settled(sentinel.connection_pool.disconnect())

    # --- operations -------------------------------------------------------

    def _add_call(
        self, new: NewRegistration, policy: Policy, token: str
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        d = digest(new.identity)
        ks = self._claim_layout()
        funnel, day = ks.funnels_today(ks.bucket_of(d))
        args = (
            d,
            new.email,
            new.first_name,
            new.last_name,
            new.password_hash,
            new.code_hash,
            policy.lifetime_ms,
            policy.code_lifetime_ms,
            SCHEMA_VERSION,
            token,
            INDEX_GRACE_MS,
            policy.funnel_keep_ms,
            day,
        )
        return (*ks.keys_for(d), ks.gone(d), *funnel), args

    def add(self, new: NewRegistration, policy: Policy, token: str) -> PendingRegistration:
        reply, acked = self.scripts.write("add", *self._add_call(new, policy, token))
        created = _created(new, policy, reply, acked)
        if isinstance(created, AlreadyExists):
            raise created
        return created

    def add_many(
        self, batch: Sequence[tuple[NewRegistration, str]], policy: Policy
    ) -> list[PendingRegistration | RegctlError]:
        replies = self.scripts.run_many("add", [self._add_call(new, policy, t) for new, t in batch])
        return _added(batch, replies, policy)

    def add_batches(
        self, batches: Iterable[Sequence[tuple[NewRegistration, str]]], policy: Policy
    ) -> Iterator[list[PendingRegistration | RegctlError]]:
        return self._streamed(
            "add",
            batches,
            lambda _ks, item: self._add_call(item[0], policy, item[1]),
            lambda batch, replies: _added(batch, replies, policy),
        )

    def _streamed(
        self,
        name: str,
        batches: Iterable[Sequence[Item]],
        call: Callable[[Keyspace, Item], tuple[tuple[str, ...], tuple[Any, ...]]],
        results: Callable[[Sequence[Item], list[Any]], list[R]],
        *,
        claim: bool = True,
    ) -> Iterator[list[R]]:
        """Batches of items through ``ScriptRunner.run_batches``: each item's script
        ``call`` in the store's layout, and each batch's ``results`` from its replies.
        The layout is settled now, so no round trip of its own comes while a batch is in
        flight: recorded first when ``claim`` (the stream creates records), else only
        read (a dry run writes nothing, not even the layout)."""
        ks = self._claim_layout() if claim else self.keyspace
        for batch, replies in paired(
            batches,
            lambda batch: [call(ks, item) for item in batch],
            lambda calls: self.scripts.run_batches(name, calls),
        ):
            yield results(batch, replies)

    def restore_batches(
        self,
        batches: Iterable[Sequence[PendingRegistration]],
        replace_existing: bool,
        dry_run: bool,
        max_ahead_ms: int,
    ) -> Iterator[list[str | RegctlError]]:
        def call(ks: Keyspace, reg: PendingRegistration) -> tuple[tuple[str, ...], tuple[Any, ...]]:
            d = digest(reg.identity)
            flags = (
                int(replace_existing),
                int(dry_run),
                reg.expires_at,
                INDEX_GRACE_MS,
                max_ahead_ms,
                CLOCK_SKEW_MS,
            )
            return ks.keys_for(d), (d, *flags, *encode(reg))

        def statuses(
            _batch: Sequence[PendingRegistration], replies: list[Any]
        ) -> list[str | RegctlError]:
            return [r if isinstance(r, RegctlError) else str(r) for r in replies]

        return self._streamed("restore", batches, call, statuses, claim=not dry_run)

    def get(self, identity: str) -> PendingRegistration | None:
        now, fields = self.scripts.run("get", (self.keyspace.record(digest(identity)),), ())
        return decode_row(fields, int(now)) if fields else None

    def resend(
        self,
        identity: str,
        code_hash: str,
        policy: Policy,
        token: str,
        signup: NewRegistration | None = None,
    ) -> PendingRegistration:
        d = digest(identity)
        names = ("", "", "", "") if signup is None else signup.signup
        ks = self.keyspace
        funnel, day = ks.funnels_today(ks.bucket_of(d))
        (status, now, detail), acked = self.scripts.write(
            "resend",
            (ks.record(d), *funnel),
            (
                code_hash,
                policy.code_lifetime_ms,
                policy.resend_cooldown_ms,
                policy.max_resends,
                token,
                policy.funnel_keep_ms,
                day,
                *names,
            ),
        )
        if status not in ("ok", "replayed"):
            raise resend_refusal(status, identity, detail if status == "cooldown" else 0)
        registration = decode_row(detail, int(now), acked)
        return replace(registration, replayed=True) if status == "replayed" else registration

    def verify(
        self, identity: str, candidate_hash: str, policy: Policy, token: str
    ) -> VerifyResult:
        d = digest(identity)
        ks = self.keyspace
        record, index = ks.keys_for(d)
        funnel, day = ks.funnels_today(ks.bucket_of(d))
        (status, now, left, payload), acked = self.scripts.write(
            "verify",
            (record, index, ks.call_marker("verify", d, token), ks.gone(d), *funnel),
            (
                d,
                candidate_hash,
                policy.max_attempts,
                policy.replay_window_ms,
                policy.funnel_keep_ms,
                day,
            ),
        )
        if status == "wrong_secret":
            raise other_secret(int(left))
        if status == "damaged":
            raise damaged(identity, UNREADABLE)
        outcome = _OUTCOMES[status]
        registration = None
        if isinstance(payload, list):  # (consumed when verified: made so, not copied so)
            registration = decode_row(payload, int(now), None, outcome is VerifyOutcome.VERIFIED)
        elif payload:  # a replay: the record as its marker keeps it, JSON field/value pairs
            registration = decode(json.loads(payload), int(now))
        return VerifyResult(outcome, int(left), registration, acked)

    def unlock(self, identity: str) -> bool:
        return bool(self.scripts.run("unlock", (self.keyspace.record(digest(identity)),), ()))

    def delete(self, identity: str, policy: Policy, token: str) -> bool:
        d = digest(identity)
        ks = self.keyspace
        keys = (*ks.keys_for(d), ks.call_marker("delete", d, token), ks.gone(d))
        return bool(self.scripts.run("delete", keys, (d, policy.replay_window_ms)))

    def counts(self) -> Counts:
        ks = self.keyspace
        rows = all_or_raise(
            self.scripts.run_many(
                "count", [((ks.index(b),), (HOUR_MS,)) for b in range(ks.buckets)]
            )
        )
        return Counts(sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows))

    def tally(self) -> Tally:
        return tally(self.scripts, self.keyspace)

    def live_index(self) -> LiveIndex:
        """Every bucket's live index entries (doctor's side of ``index_gaps``). Refused
        while Cluster slots move: moving records look gone."""
        if self.is_cluster:
            refuse_during_reshard(self.client)
        return live_index(self.scripts, self.keyspace)

    def index_gaps(self, seen: Sequence[bytes | bytearray], index: LiveIndex) -> tuple[int, int]:
        """(orphans, unindexed) between ``index`` and the records a SCAN ``seen`` per
        bucket (16-byte digests): entries pointing to no record (purge --orphans removes
        them), records no index entry names (purge --reindex gives them one)."""
        return index_gaps(self.scripts, self.keyspace, seen, index)

    # --- walking the index ------------------------------------------------

    def scan(
        self, first_page: int = PAGE, on_damaged: Callable[[str], object] | None = None
    ) -> Iterator[PendingRegistration]:
        ks = self.keyspace
        for bucket, d, row, now in walk(self.scripts, ks, first_page):
            if row is None:
                continue
            try:
                reg = decode_row(row, now)
            except DamagedRecord:  # one bad hash stops no whole walk
                if on_damaged is not None:
                    on_damaged(ks.record_base(bucket) + d)
                continue
            yield reg

    # --- records outside the index (eviction) ------------------------------

    def unindexed(self) -> Iterator[tuple[int, str]]:
        """(bucket, digest) of every record that has no index entry: invisible to list,
        stats, export and purge. A SCAN of the prefix, checked in pipelined batches."""
        ks = self.keyspace
        with translated_errors():
            keys = self.client.scan_iter(match=ks.record_pattern(), count=1000)
            for chunk in chunks(keys, 1000):
                located = [where for key in chunk if (where := ks.own_record(key))]
                pipe = self.client.pipeline(transaction=False)
                for bucket, member in located:
                    pipe.zscore(ks.index(bucket), member)
                for where, score in zip(located, pipe.execute(), strict=True):
                    if score is None:
                        yield where

    def reindex(self, batch: int = PURGE_BATCH, dry_run: bool = False) -> int:
        """Give every live record outside the index its entry back; how many were."""
        ks = self.keyspace
        restored = 0
        by_bucket: dict[int, list[str]] = {}
        for bucket, member in self.unindexed():
            by_bucket.setdefault(bucket, []).append(member)
        if dry_run:
            return sum(len(members) for members in by_bucket.values())
        for bucket, members in by_bucket.items():
            for start in range(0, len(members), batch):
                part = members[start : start + batch]
                keys = (ks.index(bucket), *(ks.record_base(bucket) + m for m in part))
                restored += int(self.scripts.run("reindex", keys, (INDEX_GRACE_MS, *part)))
        return restored

    # --- purge ------------------------------------------------------------

    def purge(
        self,
        selection: Filter | None,
        policy: Policy,
        dry_run: bool,
        batch: int,
        on_progress: Progress | None = None,
    ) -> PurgeReport:
        """Expired entries bucket by bucket, then (with a selection) one walk of the index.

        Progress counts buckets, then index entries walked.
        """
        ks = self.keyspace
        if selection is not None and self.is_cluster:
            refuse_during_reshard(self.client)
        batch = max(1, min(batch, MAX_PURGE_BATCH))
        report = PurgeReport(dry_run=dry_run, walked=selection is not None)
        total = ks.buckets + (self.counts().total if selection is not None else 0)
        for bucket in range(ks.buckets):
            purge_expired(
                self.scripts, ks, bucket, policy=policy, dry_run=dry_run, batch=batch, report=report
            )
            if on_progress is not None:
                on_progress(bucket + 1, total)
        if selection is not None:

            def walked(n: int) -> None:
                if on_progress is not None:
                    on_progress(min(ks.buckets + n, total), total)

            purge_walk(self.scripts, ks, selection, report=report, batch=batch, walked=walked)
        if on_progress is not None:
            on_progress(total, total)
        return report
