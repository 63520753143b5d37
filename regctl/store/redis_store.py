"""RedisStore: pending registrations in Redis, one Lua script per state change."""

from __future__ import annotations

import contextlib
import heapq
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from regctl.acl import AclUnchecked, missing_commands
from regctl.codec import decode, encode, lua_legend
from regctl.connection import (
    SCRIPT_DENIED,
    Client,
    call_deadline,
    failing_over,
    stop_watching,
    translated_errors,
)
from regctl.errors import (
    ConfigError,
    DamagedRecord,
    LockHeld,
    NotReplicated,
    NotServing,
    PermissionDenied,
    RegctlError,
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
from regctl.reports import PurgeReport
from regctl.security import new_token
from regctl.store.base import (
    AUDIT_MAX,
    CLOCK_SKEW_MS,
    HOUR_MS,
    MAX_PURGE_BATCH,
    PAGE,
    PURGE_BATCH,
    Counts,
    NewRegistration,
    Progress,
    already_exists,
    chunks,
    lock_held,
    other_secret,
    resend_refusal,
)
from regctl.text import visible

T = TypeVar("T")

if TYPE_CHECKING:
    from redis.commands.core import Script

# Scripts that free memory or touch only a few small keys, so a full server must still
# run them (purge, delete, unlock, the purge lock): Redis 7's allow-oom flag.
ALLOW_OOM = {"lock", "delete", "unlock", "purge_expired", "purge_some"}
# Redis 7 script flags (a first line the server reads): a flagged writing script is
# refused whole on a full server before it starts, instead of failing part-way.
SHEBANGS = {
    **dict.fromkeys(("add", "resend", "verify", "restore", "reindex"), "#!lua\n"),
    **dict.fromkeys(ALLOW_OOM, "#!lua flags=allow-oom\n"),
}
# A script flushed between loading and running (SCRIPT FLUSH, a failover to a server
# without it) did not run: it is loaded and sent again, this many times at most.
NOSCRIPT_TRIES = 5
# The field of the meta hash that holds the code secret's fingerprint.
FINGERPRINT_FIELD = "code_secret_fingerprint"
# How long a bucket's index outlives its last entry (see add.lua).
INDEX_GRACE_MS = 3_600_000
_SCRIPTS = (
    "add",
    "get",
    "resend",
    "verify",
    "unlock",
    "delete",
    "count",
    "page",
    "purge_expired",
    "purge_some",
    "lock",
    "restore",
    "reindex",
)


def _all_or_raise(replies: list[Any]) -> list[Any]:
    """The replies of a read, or the first error among them."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _translated(exc: Exception) -> Exception:
    """The regctl error for a redis-py error reply (or the reply itself if none fits)."""
    try:
        with translated_errors():
            raise exc
    except RegctlError as translated:
        return translated
    except Exception:  # untranslatable: handed back as it came
        return exc


def node_migrations(node_client: Any) -> list[dict[str, Any]]:
    """The slots a Cluster node is migrating or importing (its own line says so)."""
    with translated_errors():
        described = node_client.execute_command("CLUSTER NODES")
    mine: dict[str, Any] = next((m for m in described.values() if "myself" in m["flags"]), {})
    return list(mine.get("migrations", []))


def _client_day() -> int:
    """Today by this machine's clock: which funnel counters a script declares (the
    server's clock picks among the day before, this day and the day after)."""
    return int(time.time()) // 86_400


def _funnel_keys(ks: Keyspace, digest_hex: str) -> tuple[str, str, str]:
    return ks.funnel_around(ks.bucket_of(digest_hex), _client_day())


def _is_noscript(reply: Any) -> bool:
    import redis.exceptions as rex

    return isinstance(reply, rex.NoScriptError)


@dataclass
class _RedisLease:
    store: RedisStore
    key: str
    token: str
    ttl_ms: int

    def renew(self) -> None:
        if not self.store._run("lock", (self.key,), ("renew", self.token, self.ttl_ms)):
            raise LockHeld("the lock expired while working; another run may have started")

    def release(self) -> None:
        self.store._run("lock", (self.key,), ("release", self.token, self.ttl_ms))


class RedisStore:
    """Pending registrations on a Redis server (standalone; Cluster-ready key layout).

    Example::

        store = RedisStore(redis.Redis.from_url("redis://localhost"), prefix="shop")
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
        self.client = client
        self._wanted = Keyspace(prefix, buckets) if buckets else Keyspace(prefix)
        # A bucket count asked for (not the default) must be the stored layout's.
        self._asked_buckets = buckets
        self._keyspace: Keyspace | None = None
        self._scripts: dict[str, Script] = {}
        self._flags_supported = True
        self._lock = threading.Lock()
        self.description = description or "redis"
        # Durability option: replicas that must acknowledge add/resend/verify (WAIT).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.audit_max = audit_max  # the audit stream's cap (MAXLEN ~)
        # How long one call may keep trying while the server cannot serve it (failover,
        # migrating slot): the call's whole deadline, shared with redis-py's retries.
        self.call_budget_s = call_budget_s

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
        with translated_errors():
            recorded = self.client.hget(self._wanted.meta, "buckets")
        if recorded is None:
            return None
        if not recorded.isdigit() or not MIN_BUCKETS <= int(recorded) <= MAX_BUCKETS:
            raise ConfigError(
                f"the layout record {self._wanted.meta} is damaged (buckets {visible(recorded)!r})",
                f"set it back to the bucket count its records use ({MIN_BUCKETS}..{MAX_BUCKETS})",
            )
        return int(recorded)

    def _claim_layout(self) -> Keyspace:
        """Before creating records: record this layout unless one is (the first wins)."""
        if self._keyspace is None:
            with self._lock, translated_errors():
                want = self._wanted
                pipe = self.client.pipeline(transaction=False)
                pipe.hsetnx(want.meta, "buckets", want.buckets)
                pipe.hsetnx(want.meta, "schema", SCHEMA_VERSION)
                pipe.hget(want.meta, "buckets")
                self._keyspace = self._layout(int(pipe.execute()[2]))
        return self._keyspace

    def _script(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            folder = resources.files("regctl").joinpath("scripts")
            lib, body = (folder.joinpath(f).read_text() for f in ("_lib.lua", f"{name}.lua"))
            flags = SHEBANGS.get(name, "") if self._flags_supported else ""
            source = flags + lua_legend() + lib + body
            script = self._scripts[name] = self.client.register_script(source)
        return script

    def _served(self, call: Callable[[], T]) -> T:
        """``call()``, tried again while the server cannot serve it (a failover, a
        migrating slot, too few replicas), the topology rediscovered between tries,
        until the call's deadline. Nothing of a refused try ran: trying again is safe."""
        with call_deadline(self.call_budget_s) as deadline:
            pause = 0.02
            while True:
                try:
                    if failing_over(self.client):  # the old master would lose it: wait
                        raise NotServing("a Sentinel failover is under way")
                    return call()
                except (NotServing, NotReplicated):  # (a replay of a made change is safe)
                    if time.monotonic() + pause >= deadline:
                        raise
                    self._rediscover()
                    time.sleep(pause)
                    pause = min(2 * pause, 0.5)

    def _rediscover(self) -> None:
        """Forget where the data was: the cluster's slot map, or the Sentinel master
        (its pooled connections are dropped as they come back)."""
        from redis.sentinel import SentinelConnectionPool

        if self.is_cluster:
            with contextlib.suppress(Exception):  # the next try says what is wrong
                self.client.nodes_manager.initialize()
            return
        pool = getattr(self.client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            pool.reset()  # type: ignore[no-untyped-call]

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._served(lambda: self._run_once(name, keys, args))

    def _run_once(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        import redis.exceptions as rex

        try:
            for _ in range(NOSCRIPT_TRIES - 1):
                with translated_errors(), contextlib.suppress(rex.NoScriptError):
                    # (a flush between redis-py's reload and its retry: not run; again)
                    return self._script(name)(keys=list(keys), args=list(args))
            with translated_errors():
                return self._script(name)(keys=list(keys), args=list(args))
        except PermissionDenied as exc:
            raise self._named_denial(exc) from None
        except rex.ResponseError as exc:
            if self._flags_refused(name, exc):
                return self._run_once(name, keys, args)
            raise

    def _flags_refused(self, name: str, exc: Exception) -> bool:
        """Whether ``exc`` is a Redis 6 server failing to compile a script's flag line;
        if so, every script is sent without flags from now on (and the call again)."""
        if name not in SHEBANGS or "near '#'" not in str(exc):
            return False
        self._flags_supported = False
        self._scripts.clear()
        return True

    def _named_denial(self, exc: PermissionDenied) -> PermissionDenied:
        """Redis does not say which command a script was denied; ask ACL DRYRUN."""
        if exc.message != SCRIPT_DENIED:
            return exc
        try:
            missing = missing_commands(self.client, self.keyspace)
        except AclUnchecked:
            return exc
        if not missing:
            return exc
        names = ", ".join(m.upper() for m in missing)
        return PermissionDenied(
            f"the Redis user cannot run {names}",
            f"add {' '.join('+' + m for m in missing)} to its ACL (see the README)",
        )

    def _write(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, int | None]:
        """A state change; with ``wait_replicas``, followed by WAIT on the same connection.

        Returns the script's reply and how many replicas acknowledged (None: not asked).
        """
        if not self.wait_replicas:
            return self._run(name, keys, args), None
        return self._served(lambda: self._write_and_wait(name, keys, args))

    def _write_and_wait(
        self, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> tuple[Any, int]:
        """The script, then WAIT on the same connection: on Cluster, the connection of
        the node that owns the slot now (the slot map is refreshed after a MOVED)."""
        import redis.exceptions as rex

        client = self.client
        if self.is_cluster:
            client = client.get_node_from_key(keys[0]).redis_connection
        for attempt in range(NOSCRIPT_TRIES):
            try:
                with translated_errors():
                    pipe = client.pipeline(transaction=False)
                    self._script(name)(keys=list(keys), args=list(args), client=pipe)
                    pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                    reply, acked = pipe.execute(raise_on_error=False)
            except rex.ResponseError as exc:
                if not self._flags_refused(name, exc):
                    raise
                continue
            if not _is_noscript(reply) or attempt == NOSCRIPT_TRIES - 1:
                break  # else the script did not run (flushed meanwhile): send it again
        for result in (reply, acked):
            if isinstance(result, Exception):
                raise _translated(result)
        if int(acked) < self.wait_replicas:
            raise NotReplicated(
                f"the change was made on the primary, but only {int(acked)} of "
                f"{self.wait_replicas} replicas acknowledged it within "
                f"{self.wait_timeout_ms} ms: a failover now could undo it",
                "retry the same call once the replicas are back (the library: with the "
                "same token=, which is answered as the first was)",
            )
        return reply, int(acked)

    def _run_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """One script over many (keys, args): one pipelined round trip on a single server.

        Each call's reply, in order; a call the server refused (a full server, say)
        gets its RegctlError in its place, so the others' results are not lost.
        redis-py's cluster pipeline refuses EVALSHA, so on Cluster the calls go one
        by one (each to the node that owns its slot).
        """
        if self.is_cluster:
            return [self._reply_or_error(name, keys, args) for keys, args in calls]
        import redis.exceptions as rex

        try:
            with translated_errors():
                replies = list(self._pipelined(name, calls))
        except rex.ResponseError as exc:
            if not self._flags_refused(name, exc):
                raise
            return self._run_many(name, calls)
        for i, raw in enumerate(replies):
            reply = _translated(raw) if isinstance(raw, Exception) else raw
            if _is_noscript(raw) or isinstance(reply, NotServing):
                replies[i] = self._reply_or_error(name, *calls[i])  # not run: again, alone
            else:
                replies[i] = reply
        return replies

    def _pipelined(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> Any:
        script = self._script(name)
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=list(keys), args=list(args), client=pipe)
        return pipe.execute(raise_on_error=False)

    def _reply_or_error(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self._run(name, keys, args)
        except RegctlError as exc:
            return exc

    @property
    def is_cluster(self) -> bool:
        from redis.cluster import RedisCluster

        return isinstance(self.client, RedisCluster)

    def lease(self, name: str, ttl_ms: int, wait_s: float) -> _RedisLease:
        key = self.keyspace.lock(name)
        token = new_token()
        deadline = time.monotonic() + wait_s
        while not self._run("lock", (key,), ("acquire", token, ttl_ms)):
            if time.monotonic() >= deadline:
                raise lock_held(name, wait_s)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return _RedisLease(self, key, token, ttl_ms)

    def funnel_counts(self, days: int) -> list[tuple[int, dict[str, int]]]:
        ks = self.keyspace
        with translated_errors():
            seconds, _micros = self.client.time()
            today = int(seconds) // 86_400
            pipe = self.client.pipeline(transaction=False)
            for day in range(today, today - days, -1):
                for bucket in range(ks.buckets):
                    pipe.hgetall(ks.funnel(bucket, day))
            replies = iter(pipe.execute())
        out = []
        for day in range(today, today - days, -1):
            totals: dict[str, int] = {}
            for _bucket in range(ks.buckets):
                for event, n in next(replies).items():
                    if n.isdigit():  # a counter something else overwrote is left out
                        totals[event] = totals.get(event, 0) + int(n)
            out.append((day, totals))
        return out

    def secret_fingerprint(self, claim: str | None = None) -> str | None:
        meta = self._wanted.meta  # like the audit key, it needs no bucket layout
        with translated_errors():
            stored: str | None = self.client.hget(meta, FINGERPRINT_FIELD)
            if stored is None and claim is not None:
                pipe = self.client.pipeline(transaction=False)
                pipe.hsetnx(meta, FINGERPRINT_FIELD, claim)
                pipe.hget(meta, FINGERPRINT_FIELD)
                stored = pipe.execute()[1]
        return stored

    def set_secret_fingerprint(self, fingerprint: str) -> None:
        with translated_errors():
            self.client.hset(self._wanted.meta, FINGERPRINT_FIELD, fingerprint)

    def audit_append(self, entry: Mapping[str, str]) -> None:
        with translated_errors():
            # The audit key needs no bucket layout: no layout round trip for it.
            audit, cap = self._wanted.audit, self.audit_max
            self.client.xadd(audit, dict(entry), maxlen=cap, approximate=True)

    def audit_read(self, count: int) -> list[dict[str, str]]:
        with translated_errors():
            rows = self.client.xrevrange(self._wanted.audit, count=count)
        # The server's time last: an entry cannot carry its own "at".
        return [{**fields, "at": entry_id.partition("-")[0]} for entry_id, fields in rows]

    def close(self) -> None:
        stop_watching(self.client)
        self.client.close()
        pool = getattr(self.client, "connection_pool", None)  # a cluster closes its own
        if pool is not None:
            pool.disconnect()

    # --- operations -------------------------------------------------------

    def _add_call(
        self, new: NewRegistration, policy: Policy, token: str
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        d = digest(new.identity)
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
            _client_day(),
        )
        ks = self._claim_layout()
        return (*ks.keys_for(d), *_funnel_keys(ks, d)), args

    def add(self, new: NewRegistration, policy: Policy, token: str) -> PendingRegistration:
        (status, now, fields), acked = self._write("add", *self._add_call(new, policy, token))
        if status == "exists":
            raise already_exists(new.email)
        return replace(decode(fields, int(now)), replicas_acked=acked)

    def add_many(
        self, batch: Sequence[tuple[NewRegistration, str]], policy: Policy
    ) -> list[PendingRegistration | RegctlError]:
        replies = self._run_many("add", [self._add_call(new, policy, t) for new, t in batch])
        results: list[PendingRegistration | RegctlError] = []
        for (new, _token), reply in zip(batch, replies, strict=True):
            if isinstance(reply, RegctlError):
                results.append(reply)
                continue
            status, now, fields = reply
            results.append(
                decode(fields, int(now)) if status == "created" else already_exists(new.email)
            )
        return results

    def restore(
        self,
        batch: Sequence[PendingRegistration],
        replace_existing: bool,
        dry_run: bool,
        max_ahead_ms: int,
    ) -> list[str | RegctlError]:
        calls = []
        for reg in batch:
            d = digest(reg.identity)
            fields = encode(reg)
            flags = (
                int(replace_existing),
                int(dry_run),
                reg.expires_at,
                INDEX_GRACE_MS,
                max_ahead_ms,
                CLOCK_SKEW_MS,
            )
            calls.append((self._claim_layout().keys_for(d), (d, *flags, *fields)))
        return [
            status if isinstance(status, RegctlError) else str(status)
            for status in self._run_many("restore", calls)
        ]

    def get(self, identity: str) -> PendingRegistration | None:
        now, fields = self._run("get", (self.keyspace.record(digest(identity)),), ())
        return decode(fields, int(now)) if fields else None

    def resend(
        self, identity: str, code_hash: str, policy: Policy, token: str
    ) -> PendingRegistration:
        d = digest(identity)
        ks = self.keyspace
        (status, now, detail), acked = self._write(
            "resend",
            (ks.record(d), *_funnel_keys(ks, d)),
            (
                code_hash,
                policy.code_lifetime_ms,
                policy.resend_cooldown_ms,
                policy.max_resends,
                token,
                policy.funnel_keep_ms,
                _client_day(),
            ),
        )
        if status != "ok":
            raise resend_refusal(status, identity, detail if status == "cooldown" else 0)
        return replace(decode(detail, int(now)), replicas_acked=acked)

    def verify(
        self, identity: str, candidate_hash: str, policy: Policy, token: str
    ) -> VerifyResult:
        d = digest(identity)
        ks = self.keyspace
        record, index = ks.keys_for(d)
        (status, now, left, payload), acked = self._write(
            "verify",
            (record, index, ks.call_marker("verify", d, token), *_funnel_keys(ks, d)),
            (
                d,
                candidate_hash,
                policy.max_attempts,
                policy.replay_window_ms,
                policy.funnel_keep_ms,
                _client_day(),
            ),
        )
        if status == "wrong_secret":
            raise other_secret(int(left))
        outcome = VerifyOutcome(status)
        registration = decode(json.loads(payload), int(now)) if payload else None
        return VerifyResult(outcome, int(left), registration, acked)

    def unlock(self, identity: str) -> bool:
        return bool(self._run("unlock", (self.keyspace.record(digest(identity)),), ()))

    def delete(self, identity: str, policy: Policy, token: str) -> bool:
        d = digest(identity)
        ks = self.keyspace
        keys = (*ks.keys_for(d), ks.call_marker("delete", d, token))
        return bool(self._run("delete", keys, (d, policy.replay_window_ms)))

    def counts(self) -> Counts:
        ks = self.keyspace
        rows = _all_or_raise(
            self._run_many("count", [((ks.index(b),), (HOUR_MS,)) for b in range(ks.buckets)])
        )
        return Counts(sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows))

    # --- walking the index ------------------------------------------------

    def scan(self, first_page: int = PAGE) -> Iterator[PendingRegistration]:
        for _bucket, _digest, fields, now in self._walk(first_page):
            if fields:
                with contextlib.suppress(DamagedRecord):  # one bad hash stops no whole walk
                    yield decode(fields, now)

    def _walk(self, first_page: int) -> Iterator[tuple[int, str, dict[str, str], int]]:
        """(bucket, digest, fields, now) of every live index entry, merged in order.

        The first page of every bucket comes in one pipelined round trip; later
        pages are fetched per bucket as the merge consumes them.
        """
        ks = self.keyspace
        size = max(1, min(first_page, PAGE))
        firsts = _all_or_raise(
            self._run_many("page", [((ks.index(b),), (0, "", size)) for b in range(ks.buckets)])
        )
        records = self._records(ks, [(b, firsts[b][1][::2]) for b in range(ks.buckets)])
        streams = [
            self._bucket_stream(ks, bucket, first, fields, size)
            for bucket, (first, fields) in enumerate(zip(firsts, records, strict=True))
        ]
        firsts.clear()  # each stream drops its first page once read: memory stays flat
        records.clear()
        for _key, entry in heapq.merge(*streams):
            yield entry

    def _bucket_stream(
        self, ks: Keyspace, bucket: int, page: list[Any], records: list[Any], size: int
    ) -> Iterator[tuple[tuple[int, str], tuple[int, str, Any, int]]]:
        while True:
            now, rows = int(page[0]), page[1]
            for member, score, fields in zip(rows[::2], rows[1::2], records, strict=True):
                yield (int(float(score)), member), (bucket, member, fields, now)
            if len(rows) < 2 * size:
                return
            size = PAGE
            page = self._run("page", (ks.index(bucket),), (rows[-1], rows[-2], size))
            records = self._records(ks, [(bucket, page[1][::2])])[0]

    def _records(self, ks: Keyspace, wanted: Sequence[tuple[int, Sequence[str]]]) -> list[Any]:
        """The fields of each (bucket, digests)' records, in one pipelined round trip;
        empty for a record gone since its index entry was read (verified, or an orphan)."""
        with translated_errors():
            pipe = self.client.pipeline(transaction=False)
            for bucket, members in wanted:
                for member in members:
                    pipe.hgetall(ks.record_base(bucket) + member)
            replies = iter(pipe.execute())
        return [[next(replies) for _ in members] for _bucket, members in wanted]

    # --- records outside the index (eviction) ------------------------------

    def unindexed(self) -> Iterator[tuple[int, str]]:
        """(bucket, digest) of every record that has no index entry: invisible to list,
        stats, export and purge. A SCAN of the prefix, checked in pipelined batches."""
        ks = self.keyspace
        with translated_errors():
            keys = self.client.scan_iter(match=ks.record_pattern(), count=1000)
            for chunk in chunks(keys, 1000):
                located = [ks.locate(key) for key in chunk]
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
                restored += int(self._run("reindex", keys, (INDEX_GRACE_MS, *part)))
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
            self._refuse_during_reshard()
        batch = max(1, min(batch, MAX_PURGE_BATCH))
        report = PurgeReport(dry_run=dry_run)
        total = ks.buckets + (self.counts().total if selection is not None else 0)
        for bucket in range(ks.buckets):
            report.expired += self._purge_expired(ks, bucket, policy, dry_run, batch)
            if on_progress is not None:
                on_progress(bucket + 1, total)
        if selection is not None:

            def walked(n: int) -> None:
                if on_progress is not None:
                    on_progress(min(ks.buckets + n, total), total)

            self._purge_walk(selection, report, batch, walked)
        if on_progress is not None:
            on_progress(total, total)
        return report

    def _refuse_during_reshard(self) -> None:
        """A walk of the index (orphans, filters) waits for a reshard to end: records
        on their way between nodes are not what an orphan or a match looks like."""
        moving = [
            m["slot"]
            for node in self.client.get_primaries()
            for m in node_migrations(node.redis_connection)
        ]
        if moving:
            raise NotServing(
                f"slots are moving between Cluster nodes (slot {moving[0]} and "
                f"{len(moving) - 1} more): a walk of the index waits for the reshard",
                "run it again once `regctl health` shows no open slot; expired "
                "entries need no walk: `regctl purge` without --orphans or filters runs",
            )

    def _purge_expired(
        self, ks: Keyspace, bucket: int, policy: Policy, dry_run: bool, batch: int
    ) -> int:
        """A bucket's expired entries removed (or counted): a batch listed, then removed
        with their records declared; the script re-checks each entry is still expired."""
        index = ks.index(bucket)
        if dry_run:
            return int(self._run("purge_expired", (index,), ("count",))[1])
        removed = 0
        while True:
            listed = self._run("purge_expired", (index,), ("list", batch))[1]
            if not listed:
                return removed
            keys = (index, *(ks.record_base(bucket) + d for d in listed))
            funnel = ks.funnel_around(bucket, _client_day())
            args = ("remove", policy.funnel_keep_ms, _client_day(), *listed)
            removed += int(self._run("purge_expired", (*keys, *funnel), args)[1])
            if len(listed) < batch:
                return removed

    def _purge_walk(
        self, selection: Filter, report: PurgeReport, batch: int, walked: Callable[[int], None]
    ) -> None:
        ks = self.keyspace
        orphans: dict[int, list[str]] = {}
        matched: dict[int, list[str]] = {}

        def flush(bucket: int, mode: str, pending: dict[int, list[str]]) -> int:
            args = pending.pop(bucket, [])
            step = 2 if mode == "match" else 1
            if not args or report.dry_run:
                return len(args) // step
            records = (ks.record_base(bucket) + digest for digest in args[::step])
            return int(self._run("purge_some", (ks.index(bucket), *records), (mode, *args)))

        for bucket, member, fields, now in self._walk(PAGE):
            report.scanned += 1
            if report.scanned % PAGE == 0:
                walked(report.scanned)
            if not fields:
                orphans.setdefault(bucket, []).append(member)
                if len(orphans[bucket]) >= batch:
                    report.orphans += flush(bucket, "orphan", orphans)
            elif not selection.is_empty and selection.matches(decode(fields, now)):
                matched.setdefault(bucket, []).extend((member, fields["c"]))
                if len(matched[bucket]) >= 2 * batch:
                    report.matched += flush(bucket, "match", matched)
        for bucket in list(orphans):
            report.orphans += flush(bucket, "orphan", orphans)
        for bucket in list(matched):
            report.matched += flush(bucket, "match", matched)
