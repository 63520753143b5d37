"""Pending registrations, operation outcomes, the policy, and input validation.

Validation happens here, before any store is touched: a bad code never costs
an attempt and a bad address never reaches Redis.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from regctl.errors import InvalidInput

SCHEMA_VERSION = 1
MAX_EMAIL_LENGTH = 254
NAME_MAX = 100
PASSWORD_MIN = 8
PASSWORD_MAX = 128
CODE_LENGTHS = range(6, 11)
# Control, format (bidi overrides, zero-width), surrogate, line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules every operation enforces; all durations in milliseconds."""

    lifetime_ms: int = 24 * 3600 * 1000
    code_lifetime_ms: int = 15 * 60 * 1000
    code_length: int = 6
    max_attempts: int = 5
    resend_cooldown_ms: int = 60 * 1000
    max_resends: int = 5
    # How long a successful verify can be replayed by the same call (lost reply).
    replay_window_ms: int = 5 * 60 * 1000
    # Days the per-day funnel counters are kept (0 turns counting off).
    funnel_days: int = 30

    @property
    def funnel_keep_ms(self) -> int:
        return self.funnel_days * 86_400_000

    def __post_init__(self) -> None:
        if self.code_length not in CODE_LENGTHS:
            raise InvalidInput("code length must be between 6 and 10 digits")
        if self.lifetime_ms < 1000 or self.code_lifetime_ms < 1000:
            raise InvalidInput("lifetimes must be at least one second")
        if self.max_attempts < 1 or self.max_resends < 0 or self.resend_cooldown_ms < 0:
            raise InvalidInput("max attempts must be >= 1; resends and cooldown >= 0")


@dataclass(frozen=True, slots=True)
class PendingRegistration:
    """One pending registration as read at server time ``observed_at`` (ms).

    ``password_hash`` is the Argon2id PHC string; it is kept out of ``repr``.
    """

    email: str
    first_name: str
    last_name: str
    password_hash: str = field(repr=False)
    created_at: int
    expires_at: int
    code_expires_at: int
    last_sent_at: int
    resend_count: int
    attempts: int
    locked: bool
    observed_at: int
    schema: int = SCHEMA_VERSION
    # Replicas that acknowledged the write that returned this (None: not asked to wait).
    replicas_acked: int | None = field(default=None, compare=False)
    # The code's HMAC: carried only for a backup export, never shown.
    code_hash: str = field(default="", repr=False, compare=False)

    @property
    def identity(self) -> str:
        return self.email.casefold()

    @property
    def domain(self) -> str:
        return self.identity.rpartition("@")[2]

    @property
    def ttl_ms(self) -> int:
        return max(0, self.expires_at - self.observed_at)

    @property
    def age_ms(self) -> int:
        return max(0, self.observed_at - self.created_at)

    @property
    def code_expired(self) -> bool:
        return self.observed_at >= self.code_expires_at

    def attempts_left(self, policy: Policy) -> int:
        return 0 if self.locked else max(0, policy.max_attempts - self.attempts)

    def resends_left(self, policy: Policy) -> int:
        return max(0, policy.max_resends - self.resend_count)

    def cooldown_left_ms(self, policy: Policy) -> int:
        return max(0, self.last_sent_at + policy.resend_cooldown_ms - self.observed_at)

    def status(self) -> str:
        if self.locked:
            return "locked"
        return "code-expired" if self.code_expired else "pending"

    def public_dict(self, *, include_password_hash: bool = False) -> dict[str, Any]:
        """Fields safe to show an operator; the password hash only when asked."""
        data: dict[str, Any] = {
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "status": self.status(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "code_expires_at": self.code_expires_at,
            "last_sent_at": self.last_sent_at,
            "resend_count": self.resend_count,
            "attempts": self.attempts,
            "locked": self.locked,
        }
        if include_password_hash:
            data["password_hash"] = self.password_hash
        return data


class VerifyOutcome(enum.StrEnum):
    VERIFIED = "verified"
    INVALID_CODE = "invalid_code"
    LOCKED = "locked"
    CODE_EXPIRED = "code_expired"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What ``verify`` found; ``registration`` is the consumed record on success."""

    outcome: VerifyOutcome
    attempts_left: int = 0
    registration: PendingRegistration | None = None
    replicas_acked: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is VerifyOutcome.VERIFIED


@dataclass(frozen=True, slots=True)
class Added:
    """A new registration and its clear code; the code exists nowhere else."""

    registration: PendingRegistration
    code: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Resent:
    registration: PendingRegistration
    code: str = field(repr=False)


class SortKey(enum.StrEnum):
    EXPIRES = "expires"
    CREATED = "created"
    NEWEST = "newest"


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records a list or purge selects; ages are in ms at server time."""

    domain: str | None = None
    older_than_ms: int | None = None
    newer_than_ms: int | None = None
    locked: bool | None = None
    code_expired: bool | None = None

    @property
    def is_empty(self) -> bool:
        return self == Filter()

    def matches(self, reg: PendingRegistration) -> bool:
        if self.domain is not None and reg.domain != self.domain:
            return False
        if self.older_than_ms is not None and reg.age_ms < self.older_than_ms:
            return False
        if self.newer_than_ms is not None and reg.age_ms > self.newer_than_ms:
            return False
        if self.locked is not None and reg.locked != self.locked:
            return False
        return self.code_expired is None or reg.code_expired == self.code_expired


AGE_BUCKETS = (
    ("< 15m", 15 * 60_000),
    ("15m-1h", 3_600_000),
    ("1-6h", 6 * 3_600_000),
    ("6-12h", 12 * 3_600_000),
    ("12-24h", 24 * 3_600_000),
    ("> 24h", 2**62),
)
FUNNEL_EVENTS = ("created", "sent", "verified", "locked", "expired")


@dataclass(frozen=True, slots=True)
class Stats:
    total: int
    locked: int
    code_expired: int
    expiring_within_hour: int
    top_domains: list[tuple[str, int]]
    ages: list[tuple[str, int]] = field(default_factory=list)


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

    @property
    def total(self) -> int:
        return self.expired + self.orphans + self.matched


# --- validation -------------------------------------------------------------


def normalize_email(raw: str) -> str:
    """Return the normalized address (email-validator, syntax only) or raise."""
    if not isinstance(raw, str) or len(raw) > MAX_EMAIL_LENGTH:
        raise InvalidInput("invalid email address: longer than 254 characters")
    return _normalized(raw)


@functools.lru_cache(maxsize=16_384)
def _normalized(raw: str) -> str:
    # Validation is a third of a `get`; a backend sees the same addresses again and again.
    # (lru_cache keeps results only: an invalid address raises anew each time.)
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid email address {_shown(raw)}: {exc}") from None


def normalize_domain(raw: str) -> str:
    """A domain filter as it compares with ``PendingRegistration.domain``."""
    domain = raw.strip().lstrip("@").casefold()
    if not domain or _has_forbidden(domain) or " " in domain or "@" in domain:
        raise InvalidInput(f"invalid domain {_shown(raw)}")
    return domain


def validate_name(raw: str, what: str = "name") -> str:
    name = raw.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidInput(f"{what} must be 1-{NAME_MAX} characters")
    if _has_forbidden(name):
        raise InvalidInput(f"{what} contains control or invisible formatting characters")
    return name


def validate_password(raw: str) -> str:
    if not PASSWORD_MIN <= len(raw) <= PASSWORD_MAX:
        raise InvalidInput(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
    if "\x00" in raw:
        raise InvalidInput("password contains a NUL character")
    return raw


def validate_code(raw: str, length: int) -> str:
    """Exactly ``length`` ASCII digits; anything else is rejected before Redis."""
    if not isinstance(raw, str) or not re.fullmatch(rf"[0-9]{{{length}}}", raw, re.ASCII):
        raise InvalidInput(f"a verification code is exactly {length} digits 0-9")
    return raw


def _has_forbidden(text: str) -> bool:
    return any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def _shown(raw: str) -> str:
    """A short, printable rendering of hostile input for an error message."""
    text = raw if len(raw) <= 60 else raw[:57] + "..."
    return repr(text)


_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``1d12h`` (or plain seconds) as milliseconds."""
    raw = text.strip().lower()
    if raw.isascii() and raw.isdigit():
        return int(raw) * 1000
    match = _DURATION_RE.fullmatch(raw)
    if not raw or match is None or not any(match.groups()):
        raise InvalidInput(f"invalid duration {_shown(text)}", "write it like 90s, 15m, 2h or 1d")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000


_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """``10/min``, ``2/s``, ``100/h`` as events per second."""
    count, _, unit = text.strip().lower().partition("/")
    if not count.isascii() or not count.isdigit() or int(count) < 1 or unit not in _RATE_UNITS:
        raise InvalidInput(f"invalid rate {_shown(text)}", "write it like 10/min, 2/s or 100/h")
    return int(count) / _RATE_UNITS[unit]
