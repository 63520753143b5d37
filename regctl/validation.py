"""Input validation and parsing: addresses, names, passwords, codes, durations, rates.

Validation happens here, before any store is touched: a bad code never costs
an attempt and a bad address never reaches Redis.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from typing import TYPE_CHECKING

from regctl.errors import InvalidInput
from regctl.text import clipped, is_utf8

if TYPE_CHECKING:
    import ipaddress

MAX_EMAIL_LENGTH = 254
NAME_MAX = 100
PASSWORD_MIN = 8
PASSWORD_MAX = 128
CODE_LENGTHS = range(6, 11)
MAX_DURATION_MS = 100_000 * 86_400_000  # (a duration past it is a typo: 273 years)
# Control, format (bidi overrides, zero-width), surrogate, line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def normalize_email(raw: str) -> str:
    """Return the normalized address (email-validator, syntax only) or raise."""
    if len(as_text(raw, "an email address")) > MAX_EMAIL_LENGTH:
        raise InvalidInput("invalid email address: longer than 254 characters")
    return _normalized(raw)


def identity_of(address: str) -> str:
    """The registration a normalized address names: its domain in lower case (as DNS
    compares names) and the ASCII letters of its local part too, so
    ``Alice@Example.com`` is ``alice@example.com``. Every other letter is kept as
    written: whether a mail server tells the sharp s from ss, or the long s and the
    Greek capital and final sigma from their small forms, is its own affair, and one
    registration for two mailboxes would let one verify the other's account
    (``straße.de`` and ``strasse.de`` are two domains). Two spellings of one mailbox
    make at worst two pending registrations."""
    if address.isascii():
        return address.lower()
    local, at, domain = address.rpartition("@")
    return local.translate(_ASCII_LOWER) + at + domain.lower()


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def email_identity(raw: str) -> str:
    """The identity of an address as given (normalized first), or InvalidInput."""
    return identity_of(normalize_email(raw))


@functools.lru_cache(maxsize=16_384)
def _normalized(raw: str) -> str:
    # Validation is a third of a `get`; a backend sees the same addresses again and again.
    # (lru_cache keeps results only: an invalid address raises anew each time.)
    plain = plain_address(raw)
    if plain is not None:
        return plain
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid email address {_shown(raw)}: {exc}") from None


# A plain ASCII address: dot-separated words of letters, digits, _ + - before the @;
# after it, DNS labels and a top-level domain of letters.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}",
    re.ASCII,
)


def plain_address(raw: str) -> str | None:
    """What email-validator makes of a plain ASCII address (the domain in lower case),
    without its cost (about 20 µs, a tenth of an add); None for any other address,
    which email-validator judges. The test suite holds the two together."""
    if len(raw) > MAX_EMAIL_LENGTH or not PLAIN_ADDRESS.fullmatch(raw):
        return None
    local, _, domain = raw.partition("@")
    domain = domain.lower()
    if "--" in domain or domain.endswith(_special_use()) or local != local.lower():
        # Punycode or a reserved label pattern, a reserved name; and a local part with
        # capitals, which email-validator lower-cases for role names (Info@, Postmaster@)
        return None
    return f"{local}@{domain}"


@functools.cache
def _special_use() -> tuple[str, ...]:
    """The special-use names email-validator refuses, as domain suffixes."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    return tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)


def normalize_domain(raw: str) -> str:
    """A domain filter as it compares with ``PendingRegistration.domain``: normalized
    as an address's domain is (``xn--strae-oqa.de``, as mail logs show it, is
    ``straße.de``), so a filter matches the addresses it names."""
    domain = as_text(raw, "a domain").strip().lstrip("@")
    if not domain or _has_forbidden(domain) or " " in domain or "@" in domain:
        raise InvalidInput(f"invalid domain {_shown(raw)}")
    try:
        return identity_of(normalize_email(f"x@{domain}")).partition("@")[2]
    except InvalidInput:
        raise InvalidInput(f"invalid domain {_shown(raw)}") from None


def validate_name(raw: str, what: str = "name") -> str:
    name = as_text(raw, what).strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidInput(f"{what} must be 1-{NAME_MAX} characters")
    # (printable ASCII, most names, holds none of them: no per-character lookup)
    if not (name.isascii() and name.isprintable()) and _has_forbidden(name):
        raise InvalidInput(f"{what} contains control or invisible formatting characters")
    return name


def validate_password(raw: str) -> str:
    if not PASSWORD_MIN <= len(as_text(raw, "password")) <= PASSWORD_MAX:
        raise InvalidInput(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
    if "\x00" in raw:
        raise InvalidInput("password contains a NUL character")
    if not is_utf8(raw):  # a lone surrogate: no text, and the hash cannot take it
        raise InvalidInput("password contains a character that is not text")
    return raw


def validate_code(raw: str, length: int) -> str:
    """Exactly ``length`` ASCII digits; anything else is rejected before Redis."""
    # (str.isdigit of ASCII text is 0-9 only)
    if not (isinstance(raw, str) and len(raw) == length and raw.isascii() and raw.isdigit()):
        raise InvalidInput(f"a verification code is exactly {length} digits 0-9")
    return raw


def as_text(value: object, what: str) -> str:
    """``value`` if it is a str (a library caller may hand over anything), else
    InvalidInput naming ``what``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text, not {type(value).__name__}")
    return value


def count_in(value: object, what: str, low: int, high: int) -> int:
    """``value`` if it is a whole number from ``low`` to ``high``, else InvalidInput."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}")
    return value


def number_in(value: object, what: str, low: float, high: float) -> float:
    """``value`` if it is a number from ``low`` to ``high`` (not NaN, not a bool), else
    InvalidInput."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be a number from {low:g} to {high:g}")
    return value


def _has_forbidden(text: str) -> bool:
    return any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def _shown(raw: str) -> str:
    """A short, printable rendering of hostile input for an error message."""
    return repr(clipped(raw, 60))


_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``1d12h`` (or plain seconds) as milliseconds."""
    raw = text.strip().lower()
    if raw.isascii() and raw.isdigit():
        ms = int(raw) * 1000
    else:
        match = _DURATION_RE.fullmatch(raw)
        if not raw or match is None or not any(match.groups()):
            raise InvalidInput(
                f"invalid duration {_shown(text)}", "write it like 90s, 15m, 2h or 1d"
            )
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        ms = (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000
    if ms > MAX_DURATION_MS:  # (no record is that old: a typo)
        raise InvalidInput(f"duration {_shown(text)} is too long", "at most 100000d")
    return ms


_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """``10/min``, ``2/s``, ``100/h`` as events per second."""
    count, _, unit = text.strip().lower().partition("/")
    if not count.isascii() or not count.isdigit() or int(count) < 1 or unit not in _RATE_UNITS:
        raise InvalidInput(f"invalid rate {_shown(text)}", "write it like 10/min, 2/s or 100/h")
    return int(count) / _RATE_UNITS[unit]


MAX_CLIENT_KEY = 256


@functools.cache
def _nat64() -> ipaddress.IPv6Network:
    """NAT64's well-known prefix (RFC 6052): an IPv4 address in its last 32 bits."""
    import ipaddress

    return ipaddress.IPv6Network("64:ff9b::/96")


def normalize_client_key(client: str) -> str:
    """A client key (an IP, a session id), checked and in one form, so spellings of one
    client share its windows: an IP address in its canonical form (an IPv4 address
    mapped into IPv6, or translated by NAT64, as itself; an IPv6 address as its /64:
    one machine's share); other text without surrounding space, NFC."""
    text = unicodedata.normalize("NFC", as_text(client, "a client key").strip())
    if not 1 <= len(text) <= MAX_CLIENT_KEY:
        raise InvalidInput(f"a client key must be 1-{MAX_CLIENT_KEY} characters")
    if not text.isprintable():
        raise InvalidInput("a client key must be printable text")
    import ipaddress  # (here: the CLI's start-up does not pay for it)

    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # (an IPv6 zone is local)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if isinstance(address, ipaddress.IPv6Address) and address in _nat64():
        # (an IPv4 client behind NAT64: its /64 would be every IPv4 client's)
        return str(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
