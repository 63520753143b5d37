"""What whole-store work reports: stats, the funnel, bulk resend, import and purge."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from regctl.errors import RegctlError

if TYPE_CHECKING:
    from regctl.model import PendingRegistration

AGE_BUCKETS = (
    ("< 15m", 15 * 60_000),
    ("15m-1h", 3_600_000),
    ("1-6h", 6 * 3_600_000),
    ("6-12h", 12 * 3_600_000),
    ("12-24h", 24 * 3_600_000),
    ("> 24h", 2**62),
)
# The most top domains `stats` names.
MAX_TOP_DOMAINS = 100
# What `stats` calls expiring soon.
SOON_MS = 3_600_000
FUNNEL_EVENTS = ("created", "sent", "verified", "locked", "expired")


@dataclass(frozen=True, slots=True)
class Stats:
    total: int
    locked: int
    code_expired: int
    expiring_within_hour: int
    top_domains: list[tuple[str, int]]
    ages: list[tuple[str, int]] = field(default_factory=list)
    # Records something else wrote that regctl cannot read: left out of the rest, as
    # `list` leaves them out (`regctl inspect` names one; a key of another type counts).
    damaged: int = 0


@dataclass(slots=True)
class Tally:
    """Counts over live records, made where the records are (on Redis, by a script per
    page of an index: counts travel, not records), merged into Stats."""

    total: int = 0
    locked: int = 0
    code_expired: int = 0  # (and not locked)
    soon: int = 0  # expiring within SOON_MS
    ages: list[int] = field(default_factory=lambda: [0] * len(AGE_BUCKETS))
    domains: Counter[str] = field(default_factory=Counter)
    damaged: int = 0

    def count(self, reg: PendingRegistration) -> None:
        """One record, as read at ``reg.observed_at``."""
        self.total += 1
        self.locked += reg.locked
        self.code_expired += reg.code_expired and not reg.locked
        self.soon += reg.ttl_ms <= SOON_MS
        self.ages[next(i for i, (_, limit) in enumerate(AGE_BUCKETS) if reg.age_ms < limit)] += 1
        self.domains[reg.domain] += 1

    def stats(self, top: int) -> Stats:
        ages = [(label, n) for (label, _), n in zip(AGE_BUCKETS, self.ages, strict=True)]
        return Stats(
            self.total,
            self.locked,
            self.code_expired,
            self.soon,
            # Ties in name order: the same on every store, whatever order pages came in.
            sorted(self.domains.items(), key=lambda item: (-item[1], item[0]))[:top],
            ages,
            self.damaged,
        )


@dataclass(frozen=True, slots=True)
class FunnelDay:
    """One server day of the sign-up funnel (counted atomically by the operations)."""

    day: str  # ISO date, UTC
    created: int = 0
    sent: int = 0
    verified: int = 0
    locked: int = 0
    expired: int = 0

    @property
    def conversion(self) -> float | None:
        return self.verified / self.created if self.created else None


@dataclass(slots=True)
class BulkResendReport:
    """What a bulk resend did: codes sent, and why the others were skipped."""

    sent: int = 0
    not_sent: int = 0  # new codes made, on purpose not delivered (--no-send)
    failed: int = 0
    # by reason: cooldown, resend_limit, locked, not_found
    skipped: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    recipients: list[str] = field(default_factory=list)
    # Whose new code was stored but not delivered; and whether the run stopped early
    # because delivery kept failing (an outage), before reaching everyone.
    undelivered: list[str] = field(default_factory=list)
    stopped: bool = False

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


MAX_IMPORT_ERRORS = 20


@dataclass(slots=True)
class ImportReport:
    """What an import restored (or would, on a dry run) and what it refused."""

    restored: int = 0
    existing: int = 0
    expired: int = 0
    invalid: int = 0
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)
    # Addresses a --replace gave guesses or resends back to (or cleared the lock of).
    reset: list[str] = field(default_factory=list)
    # Whether any line was sent to the store: none is before one could be restored.
    reached_store: bool = False

    def settle(self, email: str, status: str | RegctlError) -> str | None:
        """Count the store's answer for one line (``email``'s); the reason it was not
        restored, if it was not."""
        if isinstance(status, RegctlError):
            return f"not restored: {status.message}"
        if status in ("restored", "reset"):
            self.restored += 1
            if status == "reset":
                self.reset.append(email)
        elif status == "exists":
            self.existing += 1
        elif status == "expired":
            self.expired += 1
        else:
            return "its times lie ahead of the server's clock"
        return None

    def refuse(self, line: int, reason: str) -> None:
        self.invalid += 1
        if len(self.errors) < MAX_IMPORT_ERRORS:
            self.errors.append(f"line {line}: {reason}")


@dataclass(slots=True)
class PurgeReport:
    """What a purge removed (or would remove, on a dry run), by reason."""

    expired: int = 0
    orphans: int = 0
    matched: int = 0
    scanned: int = 0
    dry_run: bool = False
    # Records outside the index given their entry back (purge's reindex step).
    reindexed: int = 0
    # Whether live entries were walked (orphans, filters), so ``scanned`` means something.
    walked: bool = False

    @property
    def total(self) -> int:
        return self.expired + self.orphans + self.matched
