"""MemoryStore: the in-process twin of RedisStore, with identical semantics.

The original system's fallback store, and the reference model the tests hold
RedisStore to. One lock makes every operation atomic, as a script is in Redis.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from regctl.codec import CONCEALED_KEPT
from regctl.errors import (
    AlreadyExists,
    RegctlError,
    already_exists,
    lock_held,
    lock_lost,
    other_secret,
    resend_refusal,
)
from regctl.keys import digest
from regctl.model import (
    Filter,
    PendingRegistration,
    Policy,
    VerifyOutcome,
    VerifyResult,
)
from regctl.reports import PurgeReport, Tally
from regctl.security import made_with, new_token, split_code_hash
from regctl.store.base import (
    AUDIT_MAX,
    CLOCK_SKEW_MS,
    HOUR_MS,
    LIMIT_ACTIONS,
    PAGE,
    Counts,
    NewRegistration,
    Progress,
)

# How often (store clock, ms) stale client windows are swept away.
SWEEP_MS = 60_000


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _add_call(token: str, email: str, first_name: str, last_name: str) -> str:
    """An add's call (_lib.lua's add_call): its token, address as written and names."""
    return "\0".join((token, email, first_name, last_name))


@dataclass(slots=True)
class _Entry:
    record: PendingRegistration  # observed_at is meaningless inside the store
    code_hash: str
    add_call: str  # the add that made it: its token, address as written and names
    resend_call: str = ""  # the last resend's token; a concealed add's, its add call
    concealed: tuple[str, ...] = ()  # the concealed adds that resent its code (resend.lua's)


@dataclass
class _MemoryLease:
    """Owned by its token, as lock.lua's lease is: a holder that lost it (expired,
    perhaps taken by another run) neither extends nor frees the next holder's."""

    store: MemoryStore
    name: str
    token: str
    ttl_ms: int

    def _held(self, now: int) -> bool:
        """Whether the lease is still this holder's (caller holds the store's lock)."""
        token, expires_at = self.store._leases.get(self.name, ("", 0))
        return token == self.token and expires_at > now

    def renew(self) -> None:
        with self.store._lock:
            now = self.store._clock()
            if not self._held(now):
                raise lock_lost()
            self.store._leases[self.name] = (self.token, now + self.ttl_ms)

    def release(self) -> None:
        with self.store._lock:
            if self._held(self.store._clock()):
                del self.store._leases[self.name]


class MemoryStore:
    """Pending registrations in this process; thread-safe.

    ``clock`` returns milliseconds and stands in for the Redis server clock.
    """

    description = "memory"

    def __init__(
        self, clock: Callable[[], int] = _wall_clock_ms, *, audit_max: int = AUDIT_MAX
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        # (operation, identity, token) -> (expires at, candidate, the call's answer)
        self._markers: dict[tuple[str, str, str], tuple[int, str, VerifyResult | None]] = {}
        # identity -> (until, {add call: its creation time}): adds whose record a verify
        # or delete consumed (the `gone` hash of _lib.lua's leave_gone)
        self._gone: dict[str, tuple[int, dict[str, int]]] = {}
        self._sweep_at_count = 64  # (markers and gone adds then: expired ones are dropped)
        self._leases: dict[str, tuple[str, int]] = {}  # name -> (token, expires at)
        self._audit: deque[dict[str, str]] = deque(maxlen=audit_max)
        self._funnel: dict[int, dict[str, int]] = {}
        self._secret_fingerprint: str | None = None
        self._windows: dict[tuple[str, str], dict[str, int]] = {}  # -> {hit: at}
        self._swept_at = 0

    def _count(self, event: str, n: int, now: int, policy: Policy) -> None:
        """The funnel counters, as the scripts keep them (caller holds the lock)."""
        if policy.funnel_days <= 0 or n == 0:
            return
        day = now // 86_400_000
        counters = self._funnel.setdefault(day, {})
        counters[event] = counters.get(event, 0) + n
        oldest = day - policy.funnel_days
        for stale in [d for d in self._funnel if d < oldest]:
            del self._funnel[stale]

    def _live(self, identity: str, now: int) -> _Entry | None:
        entry = self._entries.get(identity)
        return entry if entry is not None and entry.record.expires_at > now else None

    def add(self, new: NewRegistration, policy: Policy, token: str) -> PendingRegistration:
        with self._lock:
            now = self._clock()
            entry = self._live(new.identity, now)
            call = _add_call(token, new.email, new.first_name, new.last_name)
            if entry is not None:
                if entry.add_call == call:  # a replay of this same call (see add.lua)
                    return replace(
                        entry.record, observed_at=now, code_hash=entry.code_hash, replayed=True
                    )
                raise already_exists(new.email)
            gone = self._gone.get(new.identity)
            if gone is not None and gone[0] > now and call in gone[1]:
                # (its record consumed: add.lua)
                return replace(new.created(gone[1][call], policy), replayed=True)
            record = new.created(now, policy)
            # (the entry keeps the code's hash apart: a resend replaces it there)
            self._entries[new.identity] = _Entry(replace(record, code_hash=""), new.code_hash, call)
            self._count("created", 1, now, policy)
            self._count("sent", 1, now, policy)
            return record

    def add_many(
        self, batch: Sequence[tuple[NewRegistration, str]], policy: Policy
    ) -> list[PendingRegistration | RegctlError]:
        results: list[PendingRegistration | RegctlError] = []
        for new, token in batch:
            try:
                results.append(self.add(new, policy, token))
            except AlreadyExists as exc:
                results.append(exc)
        return results

    def add_batches(
        self, batches: Iterable[Sequence[tuple[NewRegistration, str]]], policy: Policy
    ) -> Iterator[list[PendingRegistration | RegctlError]]:
        return (self.add_many(batch, policy) for batch in batches)

    def restore_batches(
        self,
        batches: Iterable[Sequence[PendingRegistration]],
        replace_existing: bool,
        dry_run: bool,
        max_ahead_ms: int,
    ) -> Iterator[list[str | RegctlError]]:
        return (self.restore(b, replace_existing, dry_run, max_ahead_ms) for b in batches)

    def restore(
        self,
        batch: Sequence[PendingRegistration],
        replace_existing: bool,
        dry_run: bool,
        max_ahead_ms: int,
    ) -> list[str | RegctlError]:
        statuses: list[str | RegctlError] = []
        with self._lock:
            now = self._clock()
            for reg in batch:
                existing = self._live(reg.identity, now)
                if (
                    reg.expires_at > now + max_ahead_ms
                    or max(reg.created_at, reg.last_sent_at) > now + CLOCK_SKEW_MS
                ):
                    statuses.append("invalid")
                elif reg.expires_at <= now:
                    statuses.append("expired")
                elif not replace_existing and existing is not None:
                    statuses.append("exists")
                else:
                    if not dry_run:
                        record = replace(reg, code_hash="", replicas_acked=None)
                        self._entries[reg.identity] = _Entry(record, reg.code_hash, "")
                    old = existing.record if existing is not None else None
                    resets = old is not None and (
                        (old.locked and not reg.locked)
                        or old.attempts > reg.attempts
                        or old.resend_count > reg.resend_count
                    )
                    statuses.append("reset" if resets else "restored")
        return statuses

    def get(self, identity: str) -> PendingRegistration | None:
        with self._lock:
            now = self._clock()
            entry = self._live(identity, now)
            if entry is None:
                return None
            return replace(entry.record, observed_at=now, code_hash=entry.code_hash)

    def scan(
        self, first_page: int = PAGE, on_damaged: Callable[[str], object] | None = None
    ) -> Iterator[PendingRegistration]:
        with self._lock:  # (every record here is one regctl wrote: none is damaged)
            now = self._clock()
            live = sorted(
                (
                    (e.record.expires_at, digest(identity), e)
                    for identity, e in self._entries.items()
                    if e.record.expires_at > now
                ),
                key=lambda row: (row[0], row[1]),
            )
        for _expires, _digest, entry in live:
            yield replace(entry.record, observed_at=now, code_hash=entry.code_hash)

    def tally(self) -> Tally:
        tally = Tally()
        for reg in self.scan():
            tally.count(reg)
        return tally

    def counts(self) -> Counts:
        with self._lock:
            now = self._clock()
            expiries = [e.record.expires_at for e in self._entries.values()]
        live = [t for t in expiries if t > now]
        return Counts(len(live), sum(1 for t in live if t <= now + HOUR_MS))

    def resend(
        self,
        identity: str,
        code_hash: str,
        policy: Policy,
        token: str,
        signup: NewRegistration | None = None,
    ) -> PendingRegistration:
        with self._lock:
            now = self._clock()
            entry = self._live(identity, now)
            if entry is None:
                raise resend_refusal("not_found", identity)
            rec = entry.record
            call = token  # (resend.lua's: a concealed add's call is its add call)
            if signup is not None:
                call = _add_call(token, signup.email, signup.first_name, signup.last_name)
            if entry.resend_call == call or (signup is not None and call in entry.concealed):
                return replace(rec, observed_at=now, replayed=True)
            if rec.locked:
                raise resend_refusal("locked", identity)
            if rec.resend_count >= policy.max_resends:
                raise resend_refusal("resend_limit", identity)
            wait = rec.last_sent_at + policy.resend_cooldown_ms - now
            if wait > 0:
                raise resend_refusal("cooldown", identity, wait)
            entry.record = replace(
                rec,
                code_expires_at=now + policy.code_lifetime_ms,
                last_sent_at=now,
                resend_count=rec.resend_count + 1,
            )
            if signup is not None:  # the concealed add's data goes with its code
                entry.record = replace(
                    entry.record,
                    first_name=signup.first_name,
                    last_name=signup.last_name,
                    password_hash=signup.password_hash,
                )
                entry.concealed = (*entry.concealed, call)[-CONCEALED_KEPT:]
            entry.code_hash = code_hash
            entry.resend_call = call
            self._count("sent", 1, now, policy)
            return replace(entry.record, observed_at=now)

    def verify(
        self, identity: str, candidate_hash: str, policy: Policy, token: str
    ) -> VerifyResult:
        with self._lock:
            now = self._clock()
            first = self._replay(("verify", identity, token), now)
            if first is not None and first[0] == candidate_hash and first[1] is not None:
                result = first[1]
                if result.registration is None:
                    return result
                return replace(result, registration=replace(result.registration, observed_at=now))
            entry = self._live(identity, now)
            if entry is None:
                return VerifyResult(VerifyOutcome.NOT_FOUND)
            rec = entry.record
            if rec.locked:
                return VerifyResult(VerifyOutcome.LOCKED)
            if now >= rec.code_expires_at:
                left = max(0, policy.max_attempts - rec.attempts)
                return VerifyResult(VerifyOutcome.CODE_EXPIRED, left)
            stored_tag, stored_mac = split_code_hash(entry.code_hash)
            mine_tag, mine_mac = split_code_hash(candidate_hash)
            if stored_tag is not None and stored_tag != mine_tag:
                raise other_secret(policy.max_attempts - rec.attempts)
            attempts = rec.attempts + 1
            if attempts > policy.max_attempts:
                entry.record = replace(rec, attempts=attempts, locked=True)
                self._count("locked", 1, now, policy)
                result = VerifyResult(VerifyOutcome.LOCKED)
            elif stored_mac != mine_mac:
                entry.record = replace(
                    rec, attempts=attempts, locked=attempts >= policy.max_attempts
                )
                if attempts >= policy.max_attempts:
                    self._count("locked", 1, now, policy)
                result = VerifyResult(VerifyOutcome.INVALID_CODE, policy.max_attempts - attempts)
            else:
                consumed = replace(rec, attempts=attempts, observed_at=now)
                self._leave_gone(entry, now, policy)
                del self._entries[identity]
                self._count("verified", 1, now, policy)
                left = policy.max_attempts - attempts
                result = VerifyResult(VerifyOutcome.VERIFIED, left, consumed)
            self._remember(("verify", identity, token), now, policy, candidate_hash, result)
            return result

    def _leave_gone(self, entry: _Entry, now: int, policy: Policy) -> None:
        """The add that made a consumed record, for its replays (_lib.lua's leave_gone):
        the address's consumed adds, kept for the replay window from the last one."""
        made_by = [c for c in (entry.add_call, *entry.concealed) if c]
        if not made_by:  # (an imported record no concealed add resent: no add made it)
            return
        identity = entry.record.identity
        until, calls = self._gone.get(identity, (0, {}))
        if until <= now:
            calls = {}
        for call in made_by:
            calls[call] = entry.record.created_at
        self._sweep(now)
        self._gone[identity] = (now + policy.replay_window_ms, calls)

    def _replay(
        self, call: tuple[str, str, str], now: int
    ) -> tuple[str, VerifyResult | None] | None:
        """The kept answer of an earlier try of ``call`` (caller holds the lock)."""
        marker = self._markers.get(call)
        if marker is None or marker[0] <= now:
            return None
        return marker[1], marker[2]

    def _remember(
        self,
        call: tuple[str, str, str],
        now: int,
        policy: Policy,
        candidate: str = "",
        result: VerifyResult | None = None,
    ) -> None:
        self._sweep(now)
        self._markers[call] = (now + policy.replay_window_ms, candidate, result)

    def _sweep(self, now: int) -> None:
        """Drop expired markers and gone adds, once their count doubled since the last
        sweep (amortized: every verify and delete leaves one)."""
        if len(self._markers) + len(self._gone) < self._sweep_at_count:
            return
        self._markers = {c: m for c, m in self._markers.items() if m[0] > now}
        self._gone = {i: g for i, g in self._gone.items() if g[0] > now}
        self._sweep_at_count = max(64, 2 * (len(self._markers) + len(self._gone)))

    def unlock(self, identity: str) -> bool:
        with self._lock:
            entry = self._live(identity, self._clock())
            if entry is None:
                return False
            entry.record = replace(entry.record, attempts=0, locked=False)
            return True

    def delete(self, identity: str, policy: Policy, token: str) -> bool:
        with self._lock:
            now = self._clock()
            first = self._replay(("delete", identity, token), now)
            if first is not None:
                return first[0] == "1"
            entry = self._live(identity, now)
            live = entry is not None
            if entry is not None:
                self._leave_gone(entry, now, policy)
            self._entries.pop(identity, None)
            self._remember(("delete", identity, token), now, policy, "1" if live else "0")
            return live

    def purge(
        self,
        selection: Filter | None,
        policy: Policy,
        dry_run: bool,
        batch: int,
        on_progress: Progress | None = None,
    ) -> PurgeReport:
        report = PurgeReport(dry_run=dry_run, walked=selection is not None)
        with self._lock:
            now = self._clock()
            doomed = []
            for identity, entry in self._entries.items():
                if entry.record.expires_at <= now:
                    report.expired += 1
                    doomed.append(identity)
                elif selection is not None:
                    report.scanned += 1
                    observed = replace(entry.record, observed_at=now)
                    if not selection.is_empty and selection.matches(observed):
                        report.matched += 1
                        doomed.append(identity)
            if not dry_run:
                for identity in doomed:
                    del self._entries[identity]
                self._count("expired", report.expired, now, policy)
        if on_progress is not None:
            on_progress(1, 1)
        return report

    def reindex(self, batch: int, dry_run: bool) -> int:
        """Records and index are one dict here: no entry can be lost."""
        return 0

    def lease(self, name: str, ttl_ms: int, wait_s: float) -> _MemoryLease:
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                now = self._clock()
                if self._leases.get(name, ("", 0))[1] <= now:
                    token = new_token()
                    self._leases[name] = (token, now + ttl_ms)
                    return _MemoryLease(self, name, token, ttl_ms)
            if time.monotonic() >= deadline:
                raise lock_held(name, wait_s)
            time.sleep(0.05)

    def funnel_counts(self, days: int) -> list[tuple[int, dict[str, int]]]:
        with self._lock:
            today = self._clock() // 86_400_000
            return [(d, dict(self._funnel.get(d, {}))) for d in range(today, today - days, -1)]

    def hit_limits(self, client: str, limits: Mapping[str, int], window_ms: int, hit: str) -> int:
        with self._lock:
            now = self._clock()
            windows = {a: self._window(a, client, now - window_ms) for a in limits}
            fresh = {a: hits for a, hits in windows.items() if hit not in hits}
            waits = [
                max(1, min(hits.values()) + window_ms - now)
                for a, hits in fresh.items()
                if len(hits) >= limits[a]
            ]
            if waits:
                return max(waits)
            for action in fresh:
                self._windows.setdefault((action, client), {})[hit] = now
            return 0

    def client_limits(self, client: str, window_ms: int) -> dict[str, tuple[int, int]]:
        with self._lock:
            now = self._clock()
            out = {}
            for action in LIMIT_ACTIONS:
                hits = self._window(action, client, now - window_ms)
                wait = max(1, min(hits.values()) + window_ms - now) if hits else 0
                out[action] = (len(hits), wait)
            return out

    def reset_limits(self, client: str) -> bool:
        with self._lock:
            had = [self._windows.pop((a, client), {}) for a in LIMIT_ACTIONS]
            return any(had)

    def _window(self, action: str, client: str, since: int) -> dict[str, int]:
        """The client's hits after ``since``, older ones dropped (caller holds the lock).
        Now and then every window past ``since`` goes: memory keeps only the clients
        seen lately, as Redis lets a window's key expire."""
        if since - self._swept_at > SWEEP_MS:
            self._swept_at = since
            stale = [k for k, h in self._windows.items() if max(h.values(), default=0) <= since]
            for key in stale:
                del self._windows[key]
        hits = self._windows.get((action, client), {})
        for hit in [h for h, at in hits.items() if at <= since]:
            del hits[hit]
        return hits

    def secret_fingerprint(self, claim: str | None = None) -> str | None:
        with self._lock:
            if self._secret_fingerprint is None:
                self._secret_fingerprint = claim
            return self._secret_fingerprint

    def set_secret_fingerprint(self, fingerprint: str) -> None:
        with self._lock:
            self._secret_fingerprint = fingerprint

    def expire_codes(self, fingerprint: str) -> int:
        with self._lock:
            now = self._clock()
            dead = [
                entry
                for identity in list(self._entries)
                if (entry := self._live(identity, now)) is not None
                and now < entry.record.code_expires_at
                and not made_with(entry.code_hash, fingerprint)
            ]
            for entry in dead:
                entry.record = replace(entry.record, code_expires_at=now)
            return len(dead)

    def audit_append(self, entry: Mapping[str, str]) -> None:
        with self._lock:
            self._audit.append({**entry, "at": str(self._clock())})

    def audit_read(self, count: int) -> list[dict[str, str]]:
        with self._lock:
            return list(reversed(self._audit))[:count]

    def close(self) -> None:
        """Nothing to release; here for the Store protocol."""
