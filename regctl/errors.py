"""The one exception tree of regctl.

Every failure a caller can act on is one of these; ``exit_code`` is the process
status the ``regctl`` command maps it to (the mapping lives in one place, the CLI's
error handler, which only reads this attribute)::

    RegctlError
     ├── InvalidInput              2   bad email, name, password, code, option value
     ├── NotFound                  3   no pending registration for that address
     ├── Refused                   1   a rule said no
     │    ├── AlreadyExists            a registration for that address is pending
     │    ├── RegistrationLocked       too many wrong codes; unlock first
     │    ├── CooldownActive           resend asked too soon (carries retry_after)
     │    └── ResendLimitReached       no resends left
     ├── DeliveryFailed           74   the code was stored, the mail did not go out
     ├── LockHeld                 75   another run holds the purge lock
     ├── StoreUnavailable         69   Redis down, timed out, read-only or full
     │    ├── PoolExhausted            every pooled connection busy past the timeout
     │    ├── StoreTimeout             no answer within the deadline (a write: outcome unknown)
     │    └── StoreFull                Redis refused a write for lack of memory
     ├── DamagedRecord            70   a stored record regctl cannot read (written by another)
     ├── PermissionDenied         77   authentication failed or a command is not allowed
     └── ConfigError              78   settings that cannot work
          └── SecretMismatch           the store's codes were made with another code secret

Outcomes of ``verify`` are values (``VerifyOutcome``), not exceptions.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit statuses of the `regctl` command (the README's table)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 69
    INTERNAL = 70
    DELIVERY_FAILED = 74
    LOCK_HELD = 75
    PERMISSION = 77
    CONFIG = 78
    INTERRUPTED = 130
    CLOSED_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away


class RegctlError(Exception):
    """Base of every regctl error; ``hint`` says what to do about it."""

    exit_code: int = ExitStatus.REFUSED
    reason = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InvalidInput(RegctlError, ValueError):
    """An argument failed validation; nothing was sent to Redis."""

    exit_code: int = ExitStatus.USAGE
    reason = "invalid_input"


class NotFound(RegctlError):
    """No pending registration exists for the address."""

    exit_code: int = ExitStatus.NOT_FOUND
    reason = "not_found"


class Refused(RegctlError):
    """A policy rule refused the operation."""

    exit_code: int = ExitStatus.REFUSED
    reason = "refused"


class AlreadyExists(Refused):
    reason = "already_exists"


class RegistrationLocked(Refused):
    reason = "locked"


class CooldownActive(Refused):
    reason = "cooldown"

    def __init__(self, message: str, retry_after_ms: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after_ms = retry_after_ms


class ResendLimitReached(Refused):
    reason = "resend_limit"


class DeliveryFailed(RegctlError):
    """The code is stored but could not be delivered; a later resend can."""

    exit_code: int = ExitStatus.DELIVERY_FAILED
    reason = "delivery_failed"


class LockHeld(RegctlError):
    exit_code: int = ExitStatus.LOCK_HELD
    reason = "lock_held"


class StoreUnavailable(RegctlError):
    exit_code: int = ExitStatus.UNAVAILABLE
    reason = "unavailable"


class NotServing(StoreUnavailable):
    """The server cannot take this call now, and nothing of it ran: a replica after a
    failover (READONLY), too few replicas (NOREPLICAS), a slot moving or migrating
    (MOVED, ASK, TRYAGAIN), a cluster without a quorum, a busy script. The store
    rediscovers the topology and tries again until the call's deadline."""


class NotReplicated(StoreUnavailable):
    """With ``wait_replicas``: the change was made on the primary, but fewer replicas
    than asked acknowledged it, so a failover could undo it. Never reported as a
    success; the store replays the call (its token makes that safe) until the deadline."""

    reason = "not_replicated"


class PoolExhausted(StoreUnavailable):
    reason = "pool_exhausted"


class StoreTimeout(StoreUnavailable):
    reason = "timeout"


class StoreFull(StoreUnavailable):
    reason = "out_of_memory"


class DamagedRecord(RegctlError):
    """A stored record something else wrote, that regctl cannot read."""

    exit_code: int = ExitStatus.INTERNAL
    reason = "damaged_record"


class PermissionDenied(RegctlError):
    exit_code: int = ExitStatus.PERMISSION
    reason = "permission_denied"


class ConfigError(RegctlError):
    exit_code: int = ExitStatus.CONFIG
    reason = "bad_config"


class SecretMismatch(ConfigError):
    """A code (or the store) was made with another code secret; nothing was counted."""

    reason = "secret_mismatch"

    def __init__(self, message: str, hint: str | None = None, attempts_left: int = 0) -> None:
        super().__init__(message, hint)
        self.attempts_left = attempts_left


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, in plain words for a one-line error:
    no class names or errno numbers (`ConnectionRefusedError: [Errno 111] Connection
    refused` is `Connection refused`; redis-py's `Error 111 connecting to h:p.
    Connection refused.` is `cannot connect to h:p: connection refused`)."""
    import re

    text = (str(exc).splitlines() or ["no details"])[0]
    text = re.sub(r"\b[A-Za-z]*(?:Error|error|Exception): ", "", text)
    text = re.sub(r"\[Errno -?\d+\] ", "", text)
    return re.sub(
        r"Error -?\d+ connecting to (\S+?)\. ([^.]+)\.?",
        lambda m: f"cannot connect to {m[1]}: {m[2][:1].lower()}{m[2][1:]}",
        text,
    )
