"""Codes, their HMACs, and password hashing.

A clear code lives only in the process that made it; Redis stores
HMAC-SHA256(secret, identity NUL code). A code is itself derived from the secret,
the identity and the call's random token, so a retried call hands back the code
that was stored, while nobody without the secret can predict one. Passwords are
hashed with Argon2id at OWASP's minimum (19 MiB, t=2, p=1) or given already
hashed by the backend.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from regctl.errors import ConfigError, InvalidInput
from regctl.text import is_utf8
from regctl.validation import as_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from argon2 import PasswordHasher

MIN_SECRET_BYTES = 16
# Hex digits of the secret's fingerprint that lead every stored code hash.
FINGERPRINT_IN_CODE_HASH = 16
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
# The most a hash regctl takes in may cost to verify: RFC 9106's first recommended
# memory (2 GiB), a few times its passes and lanes. A hash past them (something else
# wrote it) would hold a verifying process for minutes, or take all its memory.
ARGON2_MAX_MEMORY_KIB = 2 * 1024 * 1024
ARGON2_MAX_TIME_COST = 10
ARGON2_MAX_PARALLELISM = 16


def check_trusted(
    path: Path,
    what: str,
    *,
    private: bool = False,
    group_of_root: bool = False,
    holding: str | None = None,
) -> None:
    """Refuse a file or folder another user could have written (or, ``private``, read):
    regctl runs, or trusts, what it holds. Root-owned is trusted too; with
    ``group_of_root``, a root-owned private file may be read by its group (a secret an
    orchestrator mounts for a service's group, 0440 root:group: PostgreSQL's rule for
    its key file). ``holding`` names the secret that makes it private."""
    info = path.stat()
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"{what} {path} belongs to another user", "use one of your own, or chown it"
        )
    shared = group_of_root and info.st_uid == 0
    if info.st_mode & ((0o037 if shared else 0o077) if private else 0o022):
        fix = ("700" if path.is_dir() else "600") if private else "go-w"
        if group_of_root:
            fix += " (or, owned by root, 640)"
        others = "readable or writable" if private else "writable"
        held = f" holds {holding} and" if holding else ""
        raise ConfigError(f"{what} {path}{held} is {others} by others", f"chmod {fix} {path}")


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def new_token() -> str:
    """An idempotency token for one call (random, not a secret)."""
    return secrets.token_hex(16)


def checked_secret(secret: object) -> str | bytes | None:
    """``secret`` if it can key codes (text as UTF-8, or bytes), else ConfigError; its
    length is checked where a code is made (a reading manager needs none)."""
    if secret is None or isinstance(secret, bytes):
        return secret
    if not isinstance(secret, str):
        raise ConfigError(f"the code secret must be text or bytes, not {type(secret).__name__}")
    if not is_utf8(secret):
        raise ConfigError("the code secret is not valid text (a lone surrogate)")
    return secret


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a code secret, or ConfigError when it is too short to be one."""
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the code secret must be at least {MIN_SECRET_BYTES} bytes",
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    return key


# HMAC's block size for SHA-256 and its two pads (RFC 2104), as the hmac module has them.
_SHA256_BLOCK = 64
_PAD_INNER = bytes(b ^ 0x36 for b in range(256))
_PAD_OUTER = bytes(b ^ 0x5C for b in range(256))


class CodeHasher:
    """Keyed digests of codes; the key never leaves this object."""

    __slots__ = ("_fingerprint", "_inner", "_outer")

    def __init__(self, secret: str | bytes) -> None:
        key = secret_key(secret)
        # HMAC-SHA256 (RFC 2104) keyed once: its inner and outer hashes of the padded key
        # are made here, and each message costs two hash copies. A copy of a keyed
        # ``hmac.HMAC`` costs twice that (a Python object around the two), and add and
        # resend each make two (the test suite holds the result equal to ``hmac.new``).
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\x00")
        self._inner = hashlib.sha256(key.translate(_PAD_INNER))
        self._outer = hashlib.sha256(key.translate(_PAD_OUTER))
        self._fingerprint = self._hmac(b"regctl code-secret fingerprint").hex()[:32]

    def __repr__(self) -> str:
        return "CodeHasher(<secret>)"

    def _hmac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def fingerprint(self) -> str:
        """A keyed digest that tells secrets apart without revealing them."""
        return self._fingerprint

    def code_for(
        self, operation: str, identity: str, token: str, length: int, call: Sequence[str] = ()
    ) -> str:
        """The code of one add or resend call: random to anyone without the secret,
        and the same for a replay of that call (same operation, identity and token, and
        what else ``call`` names of it), so a retry after a lost reply hands back the
        code that was stored."""
        message = "\x00".join(("code", operation, identity, token, *call)).encode()
        number = int.from_bytes(self._hmac(message), "big")
        return f"{number % 10**length:0{length}d}"

    def pseudonym(self, text: str) -> str:
        """A keyed digest naming ``text`` (a client key) where it is stored: without the
        secret, nobody can tell which IP or session a name stands for, even by trying
        every IPv4 address."""
        message = b"pseudonym\x00" + text.encode()
        return self._hmac(message).hex()[:32]

    def digest(self, identity: str, code: str) -> str:
        """``fingerprint:HMAC``: the stored form of a code, which names its secret so a
        verifier with another secret is told so instead of spending an attempt."""
        message = identity.encode() + b"\x00" + code.encode()
        tag = self._fingerprint[:FINGERPRINT_IN_CODE_HASH]
        return f"{tag}:{self._hmac(message).hex()}"


def split_code_hash(value: str) -> tuple[str | None, str]:
    """(secret fingerprint, HMAC) of a stored code hash; no fingerprint in older ones."""
    tag, sep, mac = value.rpartition(":")
    return (tag, mac) if sep else (None, value)


def made_with(code_hash: str, fingerprint: str) -> bool:
    """Whether the code of ``code_hash`` was made with the secret of ``fingerprint`` (an
    older hash, which names none, counts as not: no verify can tell)."""
    tag = split_code_hash(code_hash)[0]
    return tag is not None and fingerprint.startswith(tag)


@cache
def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher, Type

    return PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        type=Type.ID,
    )


def hash_password(password: str) -> str:
    return _hasher().hash(password)


# An Argon2id hash of nothing anyone types, with the default parameters: what a check
# that must take as long as a real one verifies against (an enumeration-safe add).
STAND_IN_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$Q4Yi53WAKnlZiM6zEbd0ig$"
    "WvnV0+IeZs7fivPIyQnGU1hFj8EuQ3dteF/yU/EvduI"
)


def verify_password(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# $argon2id$v=19$m=..,t=..,p=..$salt$hash: ASCII digits of sane size, a salt of 8+ and
# a hash of 16+ bytes in unpadded base64 (what argon2-cffi writes and can verify).
_PHC = re.compile(
    r"\$argon2id\$v=19\$m=(?P<m>[0-9]{1,8}),t=(?P<t>[0-9]{1,4}),p=(?P<p>[0-9]{1,3})"
    r"\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{22,}"
)


def check_password_hash(phc: str) -> str:
    """Accept a backend's Argon2id PHC string if it is at least OWASP's minimum and at
    most what regctl will verify (``ARGON2_MAX_*``).

    Read with the pattern alone (argon2's own parser costs a tenth of an add); the test
    suite holds the verdicts equal to argon2-cffi's ``extract_parameters``."""
    parts = _PHC.fullmatch(as_text(phc, "password hash"))
    if parts is None:
        raise InvalidInput("password hash is not an Argon2id PHC string ($argon2id$v=19$...)")
    m, t, p = int(parts["m"]), int(parts["t"]), int(parts["p"])
    if m < ARGON2_MEMORY_KIB or t < ARGON2_TIME_COST:
        raise InvalidInput("password hash parameters are below OWASP's minimum (m=19456, t=2)")
    if p < 1:
        raise InvalidInput("password hash parameters need at least one lane (p=1)")
    if m > ARGON2_MAX_MEMORY_KIB or t > ARGON2_MAX_TIME_COST or p > ARGON2_MAX_PARALLELISM:
        raise InvalidInput(
            "password hash parameters are beyond what regctl verifies "
            f"(m={ARGON2_MAX_MEMORY_KIB}, t={ARGON2_MAX_TIME_COST}, p={ARGON2_MAX_PARALLELISM})"
        )
    return phc
