"""The only place Redis key names are built.

Layout (``p`` is the configured prefix, ``NN`` a bucket number, ``d`` a digest)::

    p:meta              hash    layout facts: bucket count, schema, the code secret's
                                fingerprint (no TTL, by design)
    p:{bNN}:reg:d       hash    one pending registration (TTL = its lifetime)
    p:{bNN}:idx         zset    digest -> expires_at ms, the bucket's index
    p:{bNN}:once:h      string  the answer of one verify or delete call, for its replays;
                                h digests (operation, identity, token); short TTL
    p:{bNN}:gone:d      hash    the adds whose registrations verify or delete consumed
                                (each add's call digest -> creation time), for their
                                replays; short TTL
    p:{bNN}:funnel:D    hash    the bucket's event counts of server day D (days since
                                the epoch); scripts declare D-1, D, D+1 by the
                                client's clock and the server's clock picks one
    p:lock:name         string  a lease (purge), owned by a random token, with a TTL
    p:audit             stream  who did what, capped (no TTL, by design)

The ``{bNN}`` hash tag puts everything of one registration into one Redis Cluster
slot, so every script runs unchanged on Cluster. The digest of the identity (never
the address itself) names the record, so ``{``, ``}`` or ``*`` in an email cannot
break hash tags or patterns, and key names reveal no address.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field

from regctl.errors import InvalidInput

DEFAULT_BUCKETS = 64
MIN_BUCKETS = 64
MAX_BUCKETS = 4096
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe key prefix, else raise InvalidInput."""
    if not _PREFIX_RE.fullmatch(prefix) or prefix.endswith(":"):
        raise InvalidInput(
            f"invalid key prefix {prefix!r}",
            "use 1-64 characters from A-Z a-z 0-9 _ . : - starting with a letter or digit",
        )
    return prefix


def digest(identity: str) -> str:
    """The hex digest that names an identity's keys (stable across versions)."""
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names under one prefix with a fixed number of buckets."""

    prefix: str
    buckets: int = DEFAULT_BUCKETS

    # Each bucket's hash tag, made once: every key of a call starts with one.
    _tags: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # A record key of this namespace, (bucket, digest) read in one match.
    _record_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    # funnel_around's names by (bucket, day), made once a day: every counting call
    # declares three.
    _funnels: dict[tuple[int, int], tuple[str, str, str]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        if not MIN_BUCKETS <= self.buckets <= MAX_BUCKETS:
            raise InvalidInput(f"bucket count must be {MIN_BUCKETS}..{MAX_BUCKETS}")
        tags = tuple(f"{self.prefix}:{{b{bucket:02d}}}" for bucket in range(self.buckets))
        object.__setattr__(self, "_tags", tags)
        own = re.compile(re.escape(self.prefix) + r":\{b([0-9]{2,4})\}:reg:([0-9a-f]{32})")
        object.__setattr__(self, "_record_re", own)
        object.__setattr__(self, "_funnels", {})

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def bucket_of(self, digest_hex: str) -> int:
        return int(digest_hex[:8], 16) % self.buckets

    def tag(self, bucket: int) -> str:
        return self._tags[bucket]

    def index(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:idx"

    def gone(self, digest_hex: str) -> str:
        """Where verify or delete leaves what made the registration they consumed, so
        a replay of its add is answered, not stored again (same slot as the record)."""
        return f"{self.tag(self.bucket_of(digest_hex))}:gone:{digest_hex}"

    def record_base(self, bucket: int) -> str:
        """Record keys of a bucket are this plus the digest (scripts append it)."""
        return f"{self.tag(bucket)}:reg:"

    def record(self, digest_hex: str) -> str:
        return self.record_base(self.bucket_of(digest_hex)) + digest_hex

    def funnel(self, bucket: int, day: int) -> str:
        return f"{self.tag(bucket)}:funnel:{day}"

    def funnel_around(self, bucket: int, day: int) -> tuple[str, str, str]:
        """The bucket's funnel counters of the day before ``day``, ``day`` and the day
        after: what a counting script declares, the server's clock picking one."""
        names = self._funnels.get((bucket, day))
        if names is None:
            if len(self._funnels) >= 4 * self.buckets:  # (yesterday's are done with)
                self._funnels.clear()
            names = (
                self.funnel(bucket, day - 1),
                self.funnel(bucket, day),
                self.funnel(bucket, day + 1),
            )
            self._funnels[bucket, day] = names
        return names

    def funnels_today(self, bucket: int) -> tuple[tuple[str, str, str], int]:
        """``funnel_around`` today by this machine's clock, and that day: read once, so
        the keys a script declares and the day it is told agree, even at midnight."""
        day = client_day()
        return self.funnel_around(bucket, day), day

    def call_marker(self, operation: str, digest_hex: str, token: str) -> str:
        """Where one call's answer is kept for its replays: bound to the operation and
        the identity, so a token reused for anything else names another key."""
        call = f"{operation}\0{digest_hex}\0{token}".encode()
        name = hashlib.blake2b(call, digest_size=16).hexdigest()
        return f"{self.tag(self.bucket_of(digest_hex))}:once:{name}"

    def keys_for(self, digest_hex: str) -> tuple[str, str]:
        """(record, index) of one registration; both in the same slot."""
        bucket = self.bucket_of(digest_hex)
        return self.record_base(bucket) + digest_hex, self.index(bucket)

    def record_pattern(self) -> str:
        """A SCAN pattern matching every record key, in any bucket (diagnostics)."""
        return f"{self.prefix}:{{b*}}:reg:*"

    def own_record(self, key: str) -> tuple[int, str] | None:
        """(bucket, digest) when ``key`` is a record of this namespace (not a selftest's,
        nor another program's key only shaped like one); else None."""
        found = self._record_re.fullmatch(key)
        if found is None or not self._ours(found[1]):
            return None
        return int(found[1]), found[2]

    def _ours(self, bucket: str) -> bool:
        """Whether ``bucket`` (the digits of a {bNN} tag) names one of this namespace's
        buckets as regctl writes it: {b1} or {b064} is not {b01} or {b64}."""
        number = int(bucket)
        return number < self.buckets and bucket == f"{number:02d}"

    def client_limit(self, action: str, client_id: str) -> str:
        """A client's sliding window of ``action``s (signup, code), named by the client
        key's pseudonym (CodeHasher.pseudonym: 32 hex digits); a client's windows share
        one hash slot, so one script counts a call in all of them at once."""
        if not _HEX32.fullmatch(client_id):
            raise ValueError("a client window is named by a 32-hex-digit pseudonym")
        return f"{self.prefix}:limit:{{{client_id}}}:{action}"

    def selftest_prefix(self, run_id: str) -> str:
        """The throwaway namespace of one selftest run (8 hex digits), below this one
        so an ACL limited to ``~prefix:*`` covers it too."""
        return f"{self.prefix}:selftest:{run_id}"

    def pattern(self) -> str:
        """A SCAN pattern matching every key under the prefix (diagnostics only)."""
        return f"{self.prefix}:*"

    def kind(self, key: str) -> str | None:
        """Which of regctl's keys ``key`` is (one of KINDS), under this prefix or a
        selftest's namespace below it; None for a key regctl never writes."""
        if not key.startswith(self.prefix + ":"):
            return None
        found = _KIND_RE.match(key, len(self.prefix))
        if found is None or (found["bucket"] is not None and not self._ours(found["bucket"])):
            return None
        return found.lastgroup  # (the kinds' groups are exclusive; the bucket's closes first)


# Every key regctl writes, by the shape of its name's end, with its Redis type; only
# meta and audit last.
KINDS = {
    "meta": "hash",
    "audit": "stream",
    "lock": "string",
    "record": "hash",
    "index": "zset",
    "marker": "string",
    "gone": "hash",
    "funnel": "hash",
    "limit": "zset",
}
LASTING_KINDS = ("meta", "audit")
_KIND_RE = re.compile(
    r"(?::selftest:[0-9a-f]{8})?:(?:(?P<meta>meta)|(?P<audit>audit)|(?P<lock>lock:[^:]+)"
    r"|(?P<limit>limit:\{[0-9a-f]{32}\}:(?:signup|code))"
    r"|\{b(?P<bucket>[0-9]{2,4})\}:(?:(?P<record>reg:[0-9a-f]{32})|(?P<index>idx)"
    r"|(?P<marker>once:[0-9a-f]{32})|(?P<gone>gone:[0-9a-f]{32})|(?P<funnel>funnel:[0-9]+)))$"
)


_HEX32 = re.compile(r"[0-9a-f]{32}")


def client_day() -> int:
    """Today by this machine's clock: which funnel counters a script declares (the
    server's clock picks among the day before, this day and the day after)."""
    return int(time.time()) // 86_400
