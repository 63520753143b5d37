"""The stored record: one Redis hash per registration, its field names kept here only.

Python reads and writes records through ``decode`` and ``encode``; every script gets
the same names as its legend ``F`` (``F.attempts`` is ``'a'``), prepended when it is
loaded, so a field is renamed in one place. Short names keep a million records small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from regctl.errors import damaged
from regctl.model import NUMBER_FIELDS, SCHEMA_VERSION, PendingRegistration

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
    "resend_token": "rt",  # ... and of the last resend (a concealed add's: its add call)
    "concealed_add": "ca",  # the calls of the concealed adds that resent (see add_token)
}
# How many concealed adds' calls a record keeps (the last ones), for their replays.
CONCEALED_KEPT = 16


def lua_legend() -> str:
    """``local F = {schema = 'v', ...}``: the field names as every script sees them;
    ``ROW``, the fields a record is read with in ``ROW`` order (``HMGET record
    unpack(ROW)``: one flat reply that ``decode_row`` reads as it comes); and ``AT``,
    each field's place in a row by name; and ``CONCEALED_KEPT``."""
    pairs = ", ".join(f"{name} = '{field}'" for name, field in FIELDS.items())
    row = ", ".join(f"'{field}'" for field in ROW)
    places = ", ".join(f"{name} = {ROW.index(FIELDS[name]) + 1}" for name in _ROW_NAMES)
    return (
        f"-- The record's field names (regctl/codec.py).\nlocal F = {{{pairs}}}\n"
        f"local ROW = {{{row}}}\nlocal AT = {{{places}}}\n"
        f"local CONCEALED_KEPT = {CONCEALED_KEPT}\n"
    )


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


# The fields a record is read with, in the order a page of records comes back
# (records.lua): the two optional ones, the required text, then the numbers.
_TEXT = ("email", "first_name", "last_name", "password_hash", "locked")
_ROW_NAMES = ("schema", "code_hash", *_TEXT, *NUMBER_FIELDS)
ROW = tuple(FIELDS[name] for name in _ROW_NAMES)


def decode(
    fields: dict[str, str] | Sequence[str], observed_at: int, replicas_acked: int | None = None
) -> PendingRegistration:
    """A record from its Redis hash (a dict, or HGETALL's flat list from a script)."""
    f = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
    return decode_row([f.get(name) for name in ROW], observed_at, replicas_acked)


def decode_row(
    row: Sequence[str | None],
    observed_at: int,
    replicas_acked: int | None = None,
    consumed: bool = False,
) -> PendingRegistration:
    """A record from its values in ``ROW`` order (None: the field is missing);
    ``consumed``: what a successful verify returns.

    A hash regctl cannot read (a field missing or not a number, a time beyond 2^53:
    written by something else) raises DamagedRecord.
    """
    schema, code_hash, *required = row
    try:
        if None in required:
            raise KeyError(ROW[2 + required.index(None)])
        email, first_name, last_name, password_hash, locked, *texts = cast("list[str]", required)
        if schema is not None:
            texts.append(schema)
        # In NUMBER_FIELDS' order (the round-trip test holds them together).
        created, expires, code_expires, last_sent, resends, attempts, *version = _numbers(texts)
        # In PendingRegistration's field order: every record read passes here, and
        # keywords would cost a seventh of a `get`'s own work (the round-trip test again).
        return PendingRegistration(
            email,
            first_name,
            last_name,
            password_hash,
            created,
            expires,
            code_expires,
            last_sent,
            resends,
            attempts,
            locked == "1",
            observed_at,
            version[0] if version else SCHEMA_VERSION,
            replicas_acked,
            code_hash or "",
            consumed,
        )
    except (KeyError, ValueError) as exc:
        email = str(required[0] if required[0] is not None else "?")
        raise damaged(email, f"{exc.__class__.__name__}: {exc}") from None


def _numbers(texts: list[str]) -> list[int]:
    # All of a record's numbers checked at once; one bad one is named by the
    # per-number check.
    joined = "".join(texts)
    if joined.isascii() and joined.isdigit() and all(texts):
        values = list(map(int, texts))
        if max(values) < 2**53:
            return values
    return [_number(text) for text in texts]


def _number(text: str) -> int:
    # Plain ASCII digits only, as the scripts read them (int() would also take "1_0",
    # "+1", " 1" or other scripts' digits): one rule on both sides of the wire.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{text!r} is not a whole number")
    value = int(text)
    if not 0 <= value < 2**53:
        raise ValueError(f"{value} is out of range")
    return value
