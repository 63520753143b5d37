"""The store protocol both backends implement with identical semantics.

Stores receive validated, normalized input (identities, code HMACs) from the
manager and own only the state transitions; each mutating call is one atomic step.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol, TypeVar

from regctl.errors import (
    RegctlError,
)
from regctl.model import Filter, PendingRegistration, Policy, VerifyResult
from regctl.reports import PurgeReport, Tally
from regctl.validation import identity_of

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")

PURGE_BATCH = 500
# How far ahead of the server's clock an imported record's creation or sending may lie.
CLOCK_SKEW_MS = 300_000
# Records per page when walking the index: 64 buckets x PAGE records are in memory at most.
PAGE = 250
AUDIT_MAX = 10_000
MAX_PURGE_BATCH = 1000
# The longest a purge waits for another's lock (a day: a cron job's wait is minutes).
MAX_LOCK_WAIT_S = 86_400
HOUR_MS = 3_600_000


# Called with (steps done, steps in all) as a long operation advances.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class NewRegistration:
    email: str
    first_name: str
    last_name: str
    password_hash: str = field(repr=False)
    code_hash: str = field(repr=False)

    @property
    def identity(self) -> str:
        return identity_of(self.email)

    @property
    def signup(self) -> tuple[str, str, str, str]:
        """What a concealed add hands resend.lua: its names and password hash, and the
        address as written (which names its call, with the token and names)."""
        return self.first_name, self.last_name, self.password_hash, self.email

    def created(
        self, now: int, policy: Policy, replicas_acked: int | None = None
    ) -> PendingRegistration:
        """The record a store makes of this at ``now`` (its clock), as add.lua writes it."""
        return PendingRegistration(
            email=self.email,
            first_name=self.first_name,
            last_name=self.last_name,
            password_hash=self.password_hash,
            created_at=now,
            expires_at=now + policy.lifetime_ms,
            code_expires_at=now + policy.code_lifetime_ms,
            last_sent_at=now,
            resend_count=0,
            attempts=0,
            locked=False,
            observed_at=now,
            replicas_acked=replicas_acked,
            code_hash=self.code_hash,
        )


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    expiring_within_hour: int


class Store(Protocol):
    """Where pending registrations live: ``RedisStore`` or ``MemoryStore``."""

    description: str

    def add(self, new: NewRegistration, policy: Policy, token: str) -> PendingRegistration:
        """Create the record; raise AlreadyExists if the identity is pending."""
        ...

    def add_many(
        self, batch: Sequence[tuple[NewRegistration, str]], policy: Policy
    ) -> list[PendingRegistration | RegctlError]:
        """``add`` for many (registration, token) pairs, pipelined; one result each:
        the record, AlreadyExists, or the error that refused that one (a full server)."""
        ...

    def add_batches(
        self, batches: Iterable[Sequence[tuple[NewRegistration, str]]], policy: Policy
    ) -> Iterator[list[PendingRegistration | RegctlError]]:
        """``add_many`` over successive batches, the results of each in turn; a store
        may send the next batch before the results of the last are in (one is pulled
        ahead), so the server works while the caller prepares."""
        ...

    def restore_batches(
        self,
        batches: Iterable[Sequence[PendingRegistration]],
        replace_existing: bool,
        dry_run: bool,
        max_ahead_ms: int,
    ) -> Iterator[list[str | RegctlError]]:
        """Write exported records back with their remaining lifetime, batch by batch as
        ``add_batches`` does; one status each (or the error that refused that one):
        "restored", "reset" (replaced one that had more attempts or resends used, or
        was locked), "exists" (kept, unless ``replace_existing``), "expired", or
        "invalid" (expiring more than ``max_ahead_ms``, or made or sent more than a
        clock skew, after the server's now)."""
        ...

    def get(self, identity: str) -> PendingRegistration | None: ...

    def scan(
        self, first_page: int = PAGE, on_damaged: Callable[[str], object] | None = None
    ) -> Iterator[PendingRegistration]:
        """Every live record, in (expires_at, identity digest) order, streamed.

        ``first_page`` hints how many records the caller wants before it may stop. A
        record regctl cannot read (something else wrote it) is left out, its key handed
        to ``on_damaged``."""
        ...

    def counts(self) -> Counts: ...

    def tally(self) -> Tally:
        """Counts over every live record (reports.Tally), at one time per page."""
        ...

    def resend(
        self,
        identity: str,
        code_hash: str,
        policy: Policy,
        token: str,
        signup: NewRegistration | None = None,
    ) -> PendingRegistration:
        """Swap in a new code hash; raise a Refused subclass or NotFound. With
        ``signup`` (a concealed add), its names and password hash replace the record's
        in the same step, so the new code confirms the data of the sign-up that asked."""
        ...

    def verify(
        self, identity: str, candidate_hash: str, policy: Policy, token: str
    ) -> VerifyResult:
        """Count an attempt and compare; a replay of the same call (identity, token,
        candidate) within the replay window gets the first answer and counts nothing."""
        ...

    def unlock(self, identity: str) -> bool: ...

    def delete(self, identity: str, policy: Policy, token: str) -> bool:
        """Remove the record; True if this call (or an earlier try of it) removed it."""
        ...

    def purge(
        self,
        selection: Filter | None,
        policy: Policy,
        dry_run: bool,
        batch: int,
        on_progress: Progress | None = None,
    ) -> PurgeReport:
        """Remove expired leftovers, orphaned index entries, and records matching
        ``selection`` (none when it is None), in bounded batches."""
        ...

    def reindex(self, batch: int, dry_run: bool) -> int:
        """Give records that lost their index entry (eviction) their entry back; return
        how many (on a dry run: how many would be)."""
        ...

    def lease(self, name: str, ttl_ms: int, wait_s: float) -> Lease:
        """Hold the named lock for a while; raise LockHeld if it stays taken ``wait_s``."""
        ...

    def funnel_counts(self, days: int) -> list[tuple[int, dict[str, int]]]:
        """Event counts of the last ``days`` server days (days since the epoch), newest
        first, summed over buckets."""
        ...

    def hit_limits(self, client: str, limits: Mapping[str, int], window_ms: int, hit: str) -> int:
        """Count ``hit`` (one call) in the sliding window of each action in ``limits``
        (action -> limit) of ``client`` (a client key's pseudonym), all or none: 0 when
        counted (or ``hit`` is there already: a replay), else the ms until the fullest
        window has room."""
        ...

    def client_limits(self, client: str, window_ms: int) -> dict[str, tuple[int, int]]:
        """Per action (LIMIT_ACTIONS): the hits of ``client`` in its window, and the ms
        until the oldest leaves (0: none)."""
        ...

    def reset_limits(self, client: str) -> bool:
        """Forget ``client``'s hits; whether it had any."""
        ...

    def secret_fingerprint(self, claim: str | None = None) -> str | None:
        """The recorded fingerprint of the code secret this namespace's codes use;
        when none is recorded yet and ``claim`` is given, record that one first."""
        ...

    def set_secret_fingerprint(self, fingerprint: str) -> None:
        """Record another code secret's fingerprint (a deliberate rotation)."""
        ...

    def expire_codes(self, fingerprint: str) -> int:
        """Expire now every live code not made with the secret of ``fingerprint`` (after
        a rotation: no verify can accept one); how many were."""
        ...

    def audit_append(self, entry: Mapping[str, str]) -> None:
        """Append to the capped audit trail (about the newest ``audit_max`` entries,
        AUDIT_MAX unless the store was given another cap, are kept)."""
        ...

    def audit_read(self, count: int) -> list[dict[str, str]]:
        """The newest ``count`` audit entries, newest first, each with its "at" (ms)."""
        ...

    def close(self) -> None: ...


class Lease(Protocol):
    """A held lock: renew it during long work, release it at the end.

    Only its holder can renew or release it. Once it has expired (and perhaps been
    taken by another run), ``renew`` raises LockHeld and ``release`` does nothing:
    a lost holder never extends or frees the next holder's lease.
    """

    def renew(self) -> None: ...

    def release(self) -> None: ...


# What a client key is limited in: sign-ups (add), and codes sent (add and resend).
LIMIT_ACTIONS = ("signup", "code")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def paired(
    batches: Iterable[T],
    sent: Callable[[T], S],
    run: Callable[[Iterator[S]], Iterator[R]],
) -> Iterator[tuple[T, R]]:
    """Each batch with its result, from ``run`` over what each batch ``sent`` is: ``run``
    may pull a batch ahead before it gives the last one's result (``run_batches``)."""
    pending: deque[T] = deque()

    def pulled() -> Iterator[S]:
        for batch in batches:
            pending.append(batch)
            yield sent(batch)

    for result in run(pulled()):
        yield pending.popleft(), result


class Helper:
    """One daemon thread running the calls given to it, in order, each answered through
    a Future. A daemon, so a call stalled on a silent server never holds the process
    at exit: Ctrl-C ends regctl at once, as it does without a helper."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._calls = queue.SimpleQueue()
        self._closed = False
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def submit(self, call: Callable[[], R]) -> Future[R]:
        future: Future[R] = Future()
        self._calls.put((future, call))
        return future

    def close(self) -> None:
        """Run nothing more (a call under way ends on its own); the thread then ends."""
        self._closed = True
        self._calls.put(None)

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if self._closed:
                future.cancel()
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # the caller raises it where it waits
                    future.set_exception(exc)


def overlapped(batches: Iterable[T], send: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """(batch, send(batch)) in order, each batch sent by a helper thread while the next
    one is made (``batches`` is lazy: its reads and parsing overlap the server's work
    on the batch before). A batch is sent only once the one before it was handed on."""
    iterator, helper = iter(batches), Helper("regctl-send")
    try:
        for first in iterator:
            current, in_flight = first, helper.submit(functools.partial(send, first))
            for upcoming in iterator:  # made while ``current`` is with the server
                yield current, in_flight.result()
                current, in_flight = upcoming, helper.submit(functools.partial(send, upcoming))
            yield current, in_flight.result()
    finally:
        helper.close()
