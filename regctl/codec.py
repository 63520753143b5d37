"""The stored record: one Redis hash per registration, its field names kept here only.

Python reads and writes records through ``decode`` and ``encode``; every script gets
the same names as its legend ``F`` (``F.attempts`` is ``'a'``), prepended when it is
loaded, so a field is renamed in one place. Short names keep a million records small.
"""

from __future__ import annotations

from collections.abc import Sequence

from regctl.errors import DamagedRecord
from regctl.model import NUMBER_FIELDS, SCHEMA_VERSION, PendingRegistration
from regctl.text import visible

FIELDS = {
    "schema": "v",
    "email": "email",
    "first_name": "fn",
    "last_name": "ln",
    "password_hash": "pw",
    "code_hash": "ch",  # fingerprint:HMAC of the current code
    "created_at": "c",
    "expires_at": "e",
    "code_expires_at": "ce",
    "last_sent_at": "s",
    "resend_count": "r",
    "attempts": "a",
    "locked": "l",  # "1" or "0"
    "add_token": "at",  # the idempotency token of the add that created it
    "resend_token": "rt",  # ... and of the last resend
}


def lua_legend() -> str:
    """``local F = {schema = 'v', ...}``: the field names as every script sees them."""
    pairs = ", ".join(f"{name} = '{field}'" for name, field in FIELDS.items())
    return f"-- The record's field names (regctl/codec.py).\nlocal F = {{{pairs}}}\n"


def encode(reg: PendingRegistration) -> list[str]:
    """A record's field/value pairs as Redis stores them (tokens are not carried)."""
    values: dict[str, str | int] = {
        "schema": reg.schema,
        "email": reg.email,
        "first_name": reg.first_name,
        "last_name": reg.last_name,
        "password_hash": reg.password_hash,
        "code_hash": reg.code_hash,
        "locked": int(reg.locked),
        **{name: getattr(reg, name) for name in NUMBER_FIELDS},
    }
    return [item for name, value in values.items() for item in (FIELDS[name], str(value))]


def decode(fields: dict[str, str] | Sequence[str], observed_at: int) -> PendingRegistration:
    """A record from its Redis hash (a dict, or HGETALL's flat list from a script).

    A hash regctl cannot read (a field missing or not a number, a time beyond 2^53:
    written by something else) raises DamagedRecord.
    """
    f = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
    try:
        return PendingRegistration(
            email=f[FIELDS["email"]],
            first_name=f[FIELDS["first_name"]],
            last_name=f[FIELDS["last_name"]],
            password_hash=f[FIELDS["password_hash"]],
            locked=f[FIELDS["locked"]] == "1",
            observed_at=observed_at,
            schema=_number(f[FIELDS["schema"]]) if FIELDS["schema"] in f else SCHEMA_VERSION,
            code_hash=f.get(FIELDS["code_hash"], ""),
            **{name: _number(f[FIELDS[name]]) for name in NUMBER_FIELDS},
        )
    except (KeyError, ValueError) as exc:
        email = visible(str(f.get(FIELDS["email"], "?")))
        raise DamagedRecord(
            f"the stored record of {email} is damaged ({exc.__class__.__name__}: {exc})",
            "something other than regctl wrote it; `regctl delete` it, or fix it by hand",
        ) from None


def _number(text: str) -> int:
    # Plain ASCII digits only, as the scripts read them (int() would also take "1_0",
    # "+1", " 1" or other scripts' digits): one rule on both sides of the wire.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{text!r} is not a whole number")
    value = int(text)
    if not 0 <= value < 2**53:
        raise ValueError(f"{value} is out of range")
    return value
