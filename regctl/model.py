"""Pending registrations, the policy that governs them, and operation outcomes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any

from regctl.errors import InvalidInput
from regctl.validation import CODE_LENGTHS, as_text, count_in, identity_of, normalize_domain

SCHEMA_VERSION = 1
# A record's times (ms) and counters: whole numbers below 2^53 (exact in Lua and JSON).
NUMBER_FIELDS = (
    "created_at",
    "expires_at",
    "code_expires_at",
    "last_sent_at",
    "resend_count",
    "attempts",
)


# The longest a record, a code (and a cooldown), a replay window and a client window may
# last: every expiry stays a time Redis and the codec take (below 2^53 ms).
MAX_LIFETIME_MS = 30 * 86_400_000
MAX_CODE_LIFETIME_MS = 86_400_000
MAX_FUNNEL_DAYS = 3650
# The largest count Lua and JSON hold exactly (a policy's limits may be that high).
MAX_EXACT = 2**53 - 1


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
    # Per client key (an IP, a session) given to add/resend: at most this many sign-ups
    # and codes in any sliding window of client_window_ms (0: no limit).
    signups_per_client: int = 10
    codes_per_client: int = 20
    client_window_ms: int = 3600 * 1000

    @property
    def funnel_keep_ms(self) -> int:
        return self.funnel_days * 86_400_000

    def __post_init__(self) -> None:
        # Whole numbers only (a library caller may hand over anything): NaN, a fraction
        # or text would fail in Redis, after a record changed; a whole float is taken.
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():  # (timedelta arithmetic)
                object.__setattr__(self, name, value := int(value))
            count_in(value, f"the policy's {name}", 0, MAX_EXACT)
        if self.code_length not in CODE_LENGTHS:
            raise InvalidInput("code length must be between 6 and 10 digits")
        if not 1000 <= self.lifetime_ms <= MAX_LIFETIME_MS:
            raise InvalidInput("the record lifetime must be between one second and 30 days")
        if not 1000 <= self.code_lifetime_ms <= MAX_CODE_LIFETIME_MS:
            raise InvalidInput("the code lifetime must be between one second and one day")
        if self.max_attempts < 1 or self.max_resends < 0:
            raise InvalidInput("max attempts must be >= 1; resends >= 0")
        if not 0 <= self.resend_cooldown_ms <= MAX_CODE_LIFETIME_MS:
            raise InvalidInput("the resend cooldown must be between 0 and one day")
        if not 1000 <= self.replay_window_ms <= MAX_CODE_LIFETIME_MS:
            raise InvalidInput("the replay window must be between one second and one day")
        if not 0 <= self.funnel_days <= MAX_FUNNEL_DAYS:
            raise InvalidInput(f"funnel days must be between 0 and {MAX_FUNNEL_DAYS}")
        if min(self.signups_per_client, self.codes_per_client) < 0:
            raise InvalidInput("client limits must be 0 (off) or more")
        if not 1000 <= self.client_window_ms <= MAX_LIFETIME_MS:
            raise InvalidInput("the client window must be between one second and 30 days")

    def client_limit(self, action: str) -> int:
        """How many ``action``s (``signup``, ``code``) a client key may make per window."""
        return self.signups_per_client if action == "signup" else self.codes_per_client


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
    # Verified and so consumed: what a successful verify returns (pending no more).
    consumed: bool = field(default=False, compare=False)
    # The answer to a replay of an earlier add or resend (the same token): its code is
    # that call's, which went out with that call's answer if it reached the caller.
    replayed: bool = field(default=False, compare=False)

    @property
    def identity(self) -> str:
        return identity_of(self.email)

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
        if self.consumed:
            return VerifyOutcome.VERIFIED.value
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

    def __post_init__(self) -> None:
        # (a registration is consumed exactly when the outcome says so, however made)
        if self.registration is not None and self.registration.consumed != self.ok:
            object.__setattr__(self, "registration", replace(self.registration, consumed=self.ok))

    @property
    def ok(self) -> bool:
        return self.outcome is VerifyOutcome.VERIFIED


@dataclass(frozen=True, slots=True)
class Added:
    """A new registration and its clear code; the code exists nowhere else.

    ``send`` is False (and ``code`` empty) only from a manager with
    ``conceal_pending``, for an address already pending that may get no new code
    yet: send nothing, answer as for any other sign-up.
    """

    registration: PendingRegistration
    code: str = field(repr=False)
    send: bool = True


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

    def __post_init__(self) -> None:
        # Checked when made (a library caller may hand over anything), and the domain
        # compared as records' are, whatever its case: as the CLI's --domain.
        if self.domain is not None:
            object.__setattr__(self, "domain", normalize_domain(as_text(self.domain, "a domain")))
        for name in ("older_than_ms", "newer_than_ms"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():  # (timedelta arithmetic)
                object.__setattr__(self, name, value := int(value))
            if value is not None:
                count_in(value, name, 0, 2**63)
        for name in ("locked", "code_expired"):
            if not isinstance(getattr(self, name), bool | None):
                raise InvalidInput(f"{name} is True, False or None")

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


# The commands the audit trail records (the manager's, with ``audit_as``, and the
# CLI's): what a look at the trail may be filtered by.
AUDITED = (
    "add",
    "resend",
    "resend-many",
    "verify",
    "unlock",
    "delete",
    "purge",
    "import",
    "import --replace",
    "secret rotate",
    "limits reset",
)


def check_audited(command: str) -> None:
    """Refuse a filter on a command the trail never records: a misspelling would
    find nothing, and an empty answer would read as "nobody did that"."""
    if command not in AUDITED:
        raise InvalidInput(
            f"the audit trail records no command {command!r}", "one of: " + ", ".join(AUDITED)
        )
