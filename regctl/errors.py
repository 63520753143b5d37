"""The one exception tree of regctl.

Every failure a caller can act on is one of these; ``exit_code`` is the process
status the ``regctl`` command maps it to (in one place, the CLI's error handler,
which reads only this attribute) and ``reason`` the word its JSON error carries.
The README's tables of exit statuses and reasons are generated from this module::

    RegctlError
     ├── InvalidInput
     ├── NotFound
     ├── Refused
     │    ├── AlreadyExists
     │    ├── RegistrationLocked
     │    ├── CooldownActive
     │    ├── RateLimited
     │    └── ResendLimitReached
     ├── DeliveryFailed
     ├── LockHeld
     ├── StoreUnavailable
     │    ├── NotServing
     │    ├── NotReplicated
     │    ├── PoolExhausted
     │    ├── StoreTimeout
     │    └── StoreFull
     ├── DamagedRecord
     ├── LocalIOError
     ├── PermissionDenied
     └── ConfigError
          └── SecretMismatch

Outcomes of ``verify`` are values (``VerifyOutcome``), not exceptions.
"""

from __future__ import annotations

import enum
import errno

from regctl.text import clipped, visible


class ExitStatus(enum.IntEnum):
    """Process exit statuses of the `regctl` command (the README's table)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 69
    INTERNAL = 70
    LOCAL_IO = 71  # sysexits' EX_OSERR
    DELIVERY_FAILED = 74
    LOCK_HELD = 75
    PERMISSION = 77
    CONFIG = 78
    INTERRUPTED = 130
    CLOSED_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away
    TERMINATED = 143  # 128 + SIGTERM: the process ends by the signal, after its cleanup

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitStatus.OK: "ok",
    ExitStatus.REFUSED: "refused by a rule: wrong code, locked, code expired, cooldown, "
    "resend limit, already exists, a confirmation declined; `doctor` found a problem",
    ExitStatus.USAGE: "usage error or invalid input (nothing was written, no attempt spent)",
    ExitStatus.NOT_FOUND: "not found",
    ExitStatus.UNAVAILABLE: "Redis unavailable, timed out, read-only, out of memory, or a "
    "write its replicas did not acknowledge (`--wait-replicas`)",
    ExitStatus.INTERNAL: "internal error or a stored record regctl cannot read (a bug, or "
    "data another program wrote; rerun with `--debug`)",
    ExitStatus.LOCAL_IO: "this machine refused a read or write: a full disk, a device or "
    "file system error (what was written may be incomplete)",
    ExitStatus.DELIVERY_FAILED: "the code was stored but mail delivery failed "
    "(`regctl resend` later)",
    ExitStatus.LOCK_HELD: "another run holds the lock",
    ExitStatus.PERMISSION: "authentication or permission denied",
    ExitStatus.CONFIG: "bad configuration",
    ExitStatus.INTERRUPTED: "interrupted (Ctrl-C, end of input at a prompt, a live view's end)",
    ExitStatus.CLOSED_PIPE: "stdout's reader went away (`regctl list \\| head -1`): the "
    "command stops quietly",
    ExitStatus.TERMINATED: "stopped by SIGTERM (systemd, `timeout`, Kubernetes): the cleanup "
    "Ctrl-C gets (lock released, JSON closed), then the process ends by the signal",
}


class RegctlError(Exception):
    """Base of every regctl error; ``hint`` says what to do about it."""

    exit_code: int = ExitStatus.REFUSED
    reason = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """``what — hint``: how the command says it on one line."""
        return self.message + (f" — {self.hint}" if self.hint else "")


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
    """A registration for that address is already pending."""

    reason = "already_exists"


class RegistrationLocked(Refused):
    """Too many wrong codes: the registration is locked until `unlock`."""

    reason = "locked"


class CooldownActive(Refused):
    """A resend asked too soon after the last code (carries ``retry_after_ms``)."""

    reason = "cooldown"

    def __init__(self, message: str, retry_after_ms: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after_ms = retry_after_ms


class RateLimited(Refused):
    """A client key made too many sign-ups or codes in its window (``retry_after_ms``)."""

    reason = "rate_limited"

    def __init__(self, message: str, retry_after_ms: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after_ms = retry_after_ms


class ResendLimitReached(Refused):
    """The registration has used all its resends."""

    reason = "resend_limit"


class DeliveryFailed(RegctlError):
    """The code is stored but could not be delivered; a later resend can."""

    exit_code: int = ExitStatus.DELIVERY_FAILED
    reason = "delivery_failed"


class LockHeld(RegctlError):
    """Another run holds the purge lock."""

    exit_code: int = ExitStatus.LOCK_HELD
    reason = "lock_held"


class StoreUnavailable(RegctlError):
    """Redis is down, unreachable, or cannot serve the call within its deadline."""

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
    """Every pooled connection stayed busy past the pool timeout."""

    reason = "pool_exhausted"


class StoreTimeout(StoreUnavailable):
    """No answer within the deadline (for a write: its outcome is unknown). ``token``
    is the write's idempotency token (the one regctl made when the caller gave none):
    the same call retried with ``token=`` it is answered as the first was."""

    reason = "timeout"
    token: str | None = None


class StoreFull(StoreUnavailable):
    """Redis refused a write for lack of memory (maxmemory, noeviction)."""

    reason = "out_of_memory"


# The reasons of a call the store could not serve (down, stalled, pool busy, full): an
# audit entry after it would wait as long again, or be refused the same way. (Not a
# write its replicas did not acknowledge: it was made, and the primary answers.)
UNSERVED = frozenset(
    {StoreUnavailable.reason, PoolExhausted.reason, StoreTimeout.reason, StoreFull.reason}
)


class LocalIOError(RegctlError):
    """This machine refused a read or write: a full disk, a device error."""

    exit_code: int = ExitStatus.LOCAL_IO
    reason = "local_io"


# The errors of a local read or write that say the machine, not regctl, is at fault.
_LOCAL_IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS})


def local_io(exc: BaseException) -> LocalIOError | None:
    """The LocalIOError ``exc`` is (a full disk under the output, a device error), or
    None if it is no such error."""
    if not isinstance(exc, OSError) or exc.errno not in _LOCAL_IO_ERRNOS:
        return None
    where = f" ({visible(clipped(str(exc.filename), 200))})" if exc.filename else ""
    return LocalIOError(
        f"this machine refused a read or write: {exc.strerror}{where}",
        "free space or fix the device, then run it again; what was written may be incomplete",
    )


class DamagedRecord(RegctlError):
    """A stored record something else wrote, that regctl cannot read."""

    exit_code: int = ExitStatus.INTERNAL
    reason = "damaged_record"


class PermissionDenied(RegctlError):
    """Authentication failed, or the Redis user may not run a command regctl needs."""

    exit_code: int = ExitStatus.PERMISSION
    reason = "permission_denied"


class ConfigError(RegctlError):
    """Settings that cannot work (found before anything is written)."""

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
        r"Error -?\d+ connecting to (\S+?)\. (.+?)\.?$",
        lambda m: f"cannot connect to {m[1]}: {m[2][:1].lower()}{m[2][1:]}",
        text,
    )


# Errors raised in several places, worded once.


def lock_held(name: str, wait_s: float) -> LockHeld:
    if wait_s:
        return LockHeld(
            f"another {name} is still running after a {wait_s:g}s wait",
            "let it finish, or wait longer (--wait SECONDS)",
        )
    return LockHeld(
        f"another {name} is running", "let it finish, or queue behind it (--wait SECONDS)"
    )


def lock_lost() -> LockHeld:
    return LockHeld("the lock expired while working; another run may have started")


def other_secret(attempts_left: int = 0) -> SecretMismatch:
    return SecretMismatch(
        "this store's codes were made with another code secret",
        "configure the secret the other writers use (REGCTL_CODE_SECRET), or "
        "switch the store to this one with `regctl secret rotate`",
        attempts_left,
    )


def already_exists(email: str) -> AlreadyExists:
    return AlreadyExists(
        f"a registration for {email} is already pending",
        "use `regctl resend` to send a new code, or delete it first",
    )


def not_pending(email: str, hint: str | None = None) -> NotFound:
    return NotFound(f"no pending registration for {email}", hint)


def locked_out(email: str) -> RegistrationLocked:
    return RegistrationLocked(
        f"{email} is locked after too many wrong codes", "run `regctl unlock` first"
    )


def damaged(email: str, why: str) -> DamagedRecord:
    """The exception for a stored record regctl cannot read (``email`` as stored,
    made visible)."""
    return DamagedRecord(
        f"the stored record of {visible(clipped(email, 254))} is damaged "
        f"({visible(clipped(why, 200))})",
        "something other than regctl wrote it; `regctl delete` it, or fix it by hand",
    )


# What a script says of a record whose numbers it cannot read (it changed nothing).
UNREADABLE = "a number regctl keeps in it is missing or not a whole number"


def resend_refusal(status: str, email: str, wait_ms: int = 0) -> RegctlError:
    """The exception for a refused resend, worded the same for every store."""
    if status == "not_found":
        return not_pending(email)
    if status == "damaged":
        return damaged(email, UNREADABLE)
    if status == "locked":
        return locked_out(email)
    if status == "resend_limit":
        return ResendLimitReached(
            f"{email} has used all its resends", "delete it and let the user sign up again"
        )
    seconds = max(1, -(-wait_ms // 1000))
    return CooldownActive(
        f"a code was sent to {email} moments ago; wait {seconds}s before resending",
        retry_after_ms=wait_ms,
    )
