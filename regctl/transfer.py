"""Export and import as NDJSON: one registration a line, streamed both ways.

A redacted export (the default) has no password hash and no code HMAC: fit for
sharing, not for restoring. ``include_secrets`` adds both, for backup and restore
between servers that share the code secret. Times are ms since the epoch on the
source server's clock; an import keeps each record's absolute expiry, so the
remaining lifetime carries over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Any

from regctl.errors import InvalidInput
from regctl.model import NUMBER_FIELDS, SCHEMA_VERSION, PendingRegistration, Policy
from regctl.security import check_password_hash
from regctl.validation import normalize_email, validate_name

# fingerprint:hmac (regctl.security.CodeHasher.digest), or a bare HMAC of older exports.
_CODE_HASH = re.compile(r"(?:[0-9a-f]{16}:)?[0-9a-f]{64}")
# What an imported record's lifetimes may exceed the policy's by (clock differences
# between the servers, rounding); times stay below 2^53 so Lua's numbers are exact.
IMPORT_MARGIN_MS = 60_000
MAX_TIME_MS = 2**53 - 1
# The longest line an import reads: a record with every field at its longest (an
# address, two names, a password hash at its bounds) is under 2 000 characters.
MAX_LINE = 16_384


def bounded_lines(handle: IO[str], limit: int = MAX_LINE) -> Iterator[str]:
    """``handle``'s lines, each read into memory up to ``limit + 1`` characters: a
    longer one (a corrupt or hostile file, one line of gigabytes) comes cut there,
    the rest of it skipped, so ``parse_record`` refuses it for its length."""
    while line := handle.readline(limit + 1):
        if len(line) > limit and not line.endswith("\n"):
            while (rest := handle.readline(limit)) and not rest.endswith("\n"):
                pass  # (the rest of the line, read in pieces and dropped)
        yield line


def export_record(reg: PendingRegistration, *, include_secrets: bool) -> dict[str, Any]:
    data = reg.public_dict(include_password_hash=include_secrets)
    data.pop("status")
    data["schema"] = reg.schema
    if include_secrets:
        data["code_hash"] = reg.code_hash
    return data


def parse_record(line: str, policy: Policy) -> PendingRegistration:
    """One NDJSON line of a secrets-included export, validated like fresh input and
    against ``policy``: an import cannot make what the API could not."""
    if line.lstrip().startswith("["):  # (`export -o json`, or another tool's array)
        raise InvalidInput(
            "a JSON array: import reads one object a line, as `export` writes without -o json"
        )
    if len(line.rstrip("\n")) > MAX_LINE:
        raise InvalidInput(f"longer than {MAX_LINE:,} characters: no record is")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested beyond reason
        raise InvalidInput("not a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidInput("not a JSON object")
    if "password_hash" not in data or "code_hash" not in data:
        raise InvalidInput("no password_hash/code_hash: export with --include-secrets to restore")
    code_hash = data["code_hash"]
    if not isinstance(code_hash, str) or not _CODE_HASH.fullmatch(code_hash):
        raise InvalidInput("code_hash is not an HMAC-SHA256 hex digest")
    numbers: dict[str, Any] = {}  # (NUMBER_FIELDS: the integer fields, checked below)
    for name in NUMBER_FIELDS:
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIME_MS:
            raise InvalidInput(f"{name} must be an integer from 0 to 2^53-1")
        numbers[name] = value
    if not isinstance(data.get("locked"), bool):
        raise InvalidInput("locked must be true or false")
    _check_against_policy(numbers, data["locked"], policy)
    schema = data.get("schema", SCHEMA_VERSION)
    if type(schema) is not int or schema != SCHEMA_VERSION:  # (true and 1.0 equal 1)
        raise InvalidInput(f"unknown schema {schema!r}")
    return PendingRegistration(
        email=normalize_email(_text(data, "email")),
        first_name=validate_name(_text(data, "first_name"), "first name"),
        last_name=validate_name(_text(data, "last_name"), "last name"),
        password_hash=check_password_hash(_text(data, "password_hash")),
        locked=data["locked"],
        observed_at=0,
        code_hash=code_hash,
        **numbers,
    )


def _check_against_policy(n: dict[str, int], locked: bool, policy: Policy) -> None:
    created, expires, sent = n["created_at"], n["expires_at"], n["last_sent_at"]
    if not created < expires <= created + policy.lifetime_ms + IMPORT_MARGIN_MS:
        raise InvalidInput("expires_at must be after created_at, within the record lifetime")
    if not created <= sent <= expires:
        raise InvalidInput("last_sent_at must lie between created_at and expires_at")
    if not sent <= n["code_expires_at"] <= sent + policy.code_lifetime_ms + IMPORT_MARGIN_MS:
        raise InvalidInput("code_expires_at must lie within a code lifetime of last_sent_at")
    if not 0 <= n["resend_count"] <= policy.max_resends:
        raise InvalidInput(f"resend_count must be 0 to {policy.max_resends}")
    if not 0 <= n["attempts"] <= policy.max_attempts:
        raise InvalidInput(f"attempts must be 0 to {policy.max_attempts}")
    if (n["attempts"] >= policy.max_attempts) != locked:
        raise InvalidInput("locked must be true exactly when attempts reached max_attempts")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value
