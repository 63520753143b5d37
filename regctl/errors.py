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
     │    └── StoreFull                Redis refused a write for lack of memory
     ├── PermissionDenied         77   authentication failed or a command is not allowed
     └── ConfigError              78   settings that cannot work

Outcomes of ``verify`` are values (``VerifyOutcome``), not exceptions.
"""

from __future__ import annotations


class RegctlError(Exception):
    """Base of every regctl error; ``hint`` says what to do about it."""

    exit_code = 1
    reason = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InvalidInput(RegctlError, ValueError):
    """An argument failed validation; nothing was sent to Redis."""

    exit_code = 2
    reason = "invalid_input"


class NotFound(RegctlError):
    """No pending registration exists for the address."""

    exit_code = 3
    reason = "not_found"


class Refused(RegctlError):
    """A policy rule refused the operation."""

    exit_code = 1
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

    exit_code = 74
    reason = "delivery_failed"


class LockHeld(RegctlError):
    exit_code = 75
    reason = "lock_held"


class StoreUnavailable(RegctlError):
    exit_code = 69
    reason = "unavailable"


class PoolExhausted(StoreUnavailable):
    reason = "pool_exhausted"


class StoreFull(StoreUnavailable):
    reason = "out_of_memory"


class PermissionDenied(RegctlError):
    exit_code = 77
    reason = "permission_denied"


class ConfigError(RegctlError):
    exit_code = 78
    reason = "bad_config"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line errors."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]
