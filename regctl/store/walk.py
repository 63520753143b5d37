"""Whole-store work over the bucket indexes: walking them in order, purging.

Every bucket's index is a sorted set of digests scored by expiry; a walk merges the
buckets' pages (one pipelined round trip for the first pages, then a page per bucket
as the merge needs it) and fetches the records a page names by key.
"""

from __future__ import annotations

import heapq
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from regctl.codec import FIELDS, ROW, decode_row
from regctl.connection import Client, translated_errors
from regctl.errors import DamagedRecord, NotServing
from regctl.keys import Keyspace
from regctl.model import Filter, Policy
from regctl.reports import AGE_BUCKETS, SOON_MS, PurgeReport, Tally
from regctl.store.base import PAGE, Helper, chunks
from regctl.store.scripts import ScriptRunner
from regctl.validation import identity_of


def all_or_raise(replies: list[Any]) -> list[Any]:
    """The replies of a read, or the first error among them."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def node_migrations(node_client: Any) -> list[dict[str, Any]]:
    """The slots a Cluster node is migrating or importing (its own line says so)."""
    with translated_errors():
        described = node_client.execute_command("CLUSTER NODES")
    mine: dict[str, Any] = next((m for m in described.values() if "myself" in m["flags"]), {})
    return list(mine.get("migrations", []))


def walk(
    scripts: ScriptRunner, ks: Keyspace, first_page: int
) -> Iterator[tuple[int, str, list[str | None] | None, int]]:
    """(bucket, digest, row, now) of every live index entry, merged in order: the
    record's values in ``codec.ROW`` order, None for a record gone since its index
    entry was read (verified, or an orphan).

    The first page of every bucket comes in one pipelined round trip, and their
    records in another; later pages are fetched ahead, while the current ones are read.
    """
    size = max(1, min(first_page, PAGE))
    firsts = _pages(scripts, ks, [(b, ("0", "")) for b in range(ks.buckets)], size)
    records = _rows(scripts, ks, [(b, firsts[b][1][::2]) for b in range(ks.buckets)])
    ahead = _PagesAhead(scripts, ks)
    streams = [
        _bucket_stream(ahead.fetch, bucket, page=first, rows=rows, size=size)
        for bucket, (first, rows) in enumerate(zip(firsts, records, strict=True))
    ]
    firsts.clear()  # each stream drops its first page once read: memory stays flat
    records.clear()
    try:
        for _key, entry in heapq.merge(*streams):
            yield entry
    finally:  # a walk stopped early (list --limit, an error) fetches nothing more
        ahead.close()


# A bucket's page of index entries and its records' rows.
Page = tuple[list[Any], list[Any]]


class _PagesAhead:
    """Buckets' next pages, fetched by a helper thread while the current ones are read,
    so the server works while the client decodes and writes.

    Pages asked for while a round is under way go together in the next round: one
    pipelined round trip of page scripts and one of records for all of them, so the
    helper waits for the interpreter lock once per round, not once per bucket.
    """

    def __init__(self, scripts: ScriptRunner, ks: Keyspace) -> None:
        self._scripts, self._ks = scripts, ks
        self._helper = Helper("regctl-walk")
        self._lock = threading.Lock()
        self._wanted: list[tuple[int, tuple[str, str], Future[Page]]] = []

    def fetch(self, bucket: int, after: tuple[str, str]) -> Future[Page]:
        """The page of ``bucket`` after (score, digest), soon."""
        future: Future[Page] = Future()
        with self._lock:
            self._wanted.append((bucket, after, future))
            idle = len(self._wanted) == 1  # else a round is queued and will take it
        if idle:
            self._helper.submit(self._round)
        return future

    def _round(self) -> None:
        with self._lock:
            wanted, self._wanted = self._wanted, []
        ks = self._ks
        try:
            pages = _pages(self._scripts, ks, [(b, after) for b, after, _ in wanted], PAGE)
            digests = [(b, page[1][::2]) for (b, _, _), page in zip(wanted, pages, strict=True)]
            rows = _rows(self._scripts, ks, digests)
        except BaseException as exc:  # each reader raises it where it waits
            for *_, future in wanted:
                future.set_exception(exc)
            return
        for (*_, future), page, page_rows in zip(wanted, pages, rows, strict=True):
            future.set_result((page, page_rows))

    def close(self) -> None:
        self._helper.close()


def _bucket_stream(
    fetch: Callable[[int, tuple[str, str]], Future[Page]],
    bucket: int,
    *,
    page: list[Any],
    rows: list[list[str | None] | None],
    size: int,
) -> Iterator[tuple[tuple[int, str], tuple[int, str, list[str | None] | None, int]]]:
    while True:
        now, entries = int(page[0]), page[1]
        # A short page is the bucket's last; after a full one, the next is asked for now.
        upcoming = fetch(bucket, (entries[-1], entries[-2])) if len(entries) == 2 * size else None
        for member, score, row in zip(entries[::2], entries[1::2], rows, strict=True):
            yield (_order(score), member), (bucket, member, row, now)
        if upcoming is None:
            return
        page, rows = upcoming.result()
        size = PAGE


# An index score beyond any time: one something else wrote (as high as "inf"), merged last.
_BEYOND = 2**63


def _order(score: str) -> int:
    value = float(score)
    return int(value) if value < _BEYOND else _BEYOND


def _pages(
    scripts: ScriptRunner, ks: Keyspace, wanted: Sequence[tuple[int, tuple[str, str]]], size: int
) -> list[Any]:
    """The page of each (bucket, (score, digest) after which it starts) of ``size``
    live index entries: page.lua's {now, {digest, score, ...}}, in one pipelined round
    trip."""
    calls = [((ks.index(bucket),), (*after, size)) for bucket, after in wanted]
    return all_or_raise(scripts.run_many("page", calls))


def _rows(
    scripts: ScriptRunner, ks: Keyspace, wanted: Sequence[tuple[int, Sequence[str]]]
) -> list[list[list[str | None] | None]]:
    """The rows of each (bucket, digests)' records (None for one that is gone): one
    records.lua call per bucket, all in one pipelined round trip."""
    calls = [
        (tuple(ks.record_base(bucket) + d for d in digests), ROW)
        for bucket, digests in wanted
        if digests
    ]
    replies = iter(all_or_raise(scripts.run_many("records", calls)))
    return [next(replies) if digests else [] for _bucket, digests in wanted]


# Index entries per page of a whole-store count: short enough never to block long.
COUNT_PAGE = 1000


def index_pages(
    scripts: ScriptRunner, ks: Keyspace, size: int
) -> Iterator[list[tuple[int, list[str]]]]:
    """Rounds of (bucket, digests) pages of every bucket's live index entries: one
    pipelined round trip per round, each bucket's next page until it runs out."""
    after = dict.fromkeys(range(ks.buckets), ("0", ""))
    while after:
        buckets = list(after)
        pages = _pages(scripts, ks, list(after.items()), size)
        found = []
        for bucket, (_now, rows) in zip(buckets, pages, strict=True):
            if rows:
                found.append((bucket, rows[::2]))
            if len(rows) < 2 * size:
                del after[bucket]
            else:
                after[bucket] = (rows[-1], rows[-2])
        yield found


def tally(scripts: ScriptRunner, ks: Keyspace) -> Tally:
    """Counts over every live record: a round of index pages, then one pipelined round
    trip of tally scripts over those pages' records (declared), which send back counts
    only, never records."""
    total = Tally()
    limits = [limit for _label, limit in AGE_BUCKETS]
    for found in index_pages(scripts, ks, COUNT_PAGE):
        calls = [
            (tuple(ks.record_base(bucket) + d for d in digests), (SOON_MS, *limits))
            for bucket, digests in found
        ]
        for reply in all_or_raise(scripts.run_many("tally", calls)):
            _now, count, locked, code_expired, soon, ages, by_domain, damaged = reply
            total.total += int(count)
            total.damaged += int(damaged)
            total.locked += int(locked)
            total.code_expired += int(code_expired)
            total.soon += int(soon)
            total.ages = [a + int(n) for a, n in zip(total.ages, ages, strict=True)]
            for domain, n in zip(by_domain[::2], by_domain[1::2], strict=True):
                total.domains[identity_of(domain)] += int(n)
    return total


# gaps.lua calls a round trip: a store whose index and records differ wholesale (an
# evicted index) is checked in rounds, its candidates never all in memory at once.
GAP_CALLS = 16
# A digest as bytes: every bucket's entries packed 16 bytes each, so a million of
# them cost 16 MB, not a string and a set slot each.
DIGEST_BYTES = 16
_HEX_RUN = re.compile(r"(?:[0-9a-f]{32})*")


@dataclass
class LiveIndex:
    """Every bucket's live index entries: the digests packed, and how many members are
    no digest (nothing regctl wrote, so they name no record: orphans)."""

    packed: list[bytearray]
    odd: int = 0


def live_index(scripts: ScriptRunner, ks: Keyspace) -> LiveIndex:
    """Every bucket's live index entries, read in rounds of pages."""
    index = LiveIndex([bytearray() for _ in range(ks.buckets)])
    for found in index_pages(scripts, ks, COUNT_PAGE):
        for bucket, members in found:
            joined = "".join(members)  # (each member 32 long, or one pair could shift the rest)
            if all(len(m) == 32 for m in members) and _HEX_RUN.fullmatch(joined):
                index.packed[bucket] += bytes.fromhex(joined)
                continue
            for member in members:
                if len(member) == 32 and _HEX_RUN.fullmatch(member):
                    index.packed[bucket] += bytes.fromhex(member)
                else:  # (even one whose bytes did not survive decoding)
                    index.odd += 1
    return index


def _digests(packed: bytes | bytearray) -> set[bytes]:
    whole = bytes(packed)
    return {whole[at : at + DIGEST_BYTES] for at in range(0, len(whole), DIGEST_BYTES)}


def index_gaps(
    scripts: ScriptRunner, ks: Keyspace, seen: Sequence[bytes | bytearray], index: LiveIndex
) -> tuple[int, int]:
    """(orphans, unindexed): live index entries whose record is gone, and records with
    no index entry, given the records a SCAN ``seen`` in each bucket (packed digests).

    The two sides are compared here, a bucket at a time; only what differs goes to
    the server (gaps.lua, in rounds of a bounded size), which tells a real gap from a
    record added or removed since one side was read: no call per record, and no false
    finding from a busy store.
    """
    found = {"gone": index.odd, "loose": 0}
    calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def checked() -> None:
        if not calls:
            return
        replies = all_or_raise(scripts.run_many("gaps", calls))
        for (_keys, (mode, *_members)), count in zip(calls, replies, strict=True):
            found[mode] += int(count)
        calls.clear()

    for bucket in range(ks.buckets):
        scanned, listed = _digests(seen[bucket]), _digests(index.packed[bucket])
        base = ks.record_base(bucket)
        for mode, differing in (("gone", listed - scanned), ("loose", scanned - listed)):
            for part in chunks((d.hex() for d in differing), COUNT_PAGE):
                calls.append(((ks.index(bucket), *(base + m for m in part)), (mode, *part)))
                if len(calls) == GAP_CALLS:
                    checked()
    checked()
    return found["gone"], found["loose"]


def _matches(selection: Filter, row: list[str | None], now: int) -> bool:
    """A damaged record (something else wrote it) matches no filter: skipped, as list
    and stats skip it, rather than stopping the purge."""
    try:
        return selection.matches(decode_row(row, now))
    except DamagedRecord:
        return False


def refuse_during_reshard(client: Client) -> None:
    """A walk of the index (orphans, filters) waits for a reshard to end: records
    on their way between nodes are not what an orphan or a match looks like."""
    moving = sorted(  # (each slot once: it is importing on one node, migrating on another)
        {
            int(m["slot"])
            for node in client.get_primaries()
            for m in node_migrations(node.redis_connection)
        }
    )
    if moving:
        raise NotServing(
            f"slots are moving between Cluster nodes (slot {moving[0]}"
            + (f" and {len(moving) - 1} more" if len(moving) > 1 else "")
            + "): a walk of the index waits for the reshard",
            "run it again once `regctl health` shows no open slot; expired "
            "entries need no walk: `regctl purge` without --orphans or filters runs",
        )


def purge_expired(
    scripts: ScriptRunner,
    ks: Keyspace,
    bucket: int,
    *,
    policy: Policy,
    dry_run: bool,
    batch: int,
    report: PurgeReport,
) -> None:
    """A bucket's expired entries removed (or counted) into ``report``: a batch listed,
    then removed with their records declared; the script re-checks each entry is still
    expired. Members that name no record go as orphans. (A dry run counts every expired
    entry: one something else scored while its record lives is set right instead.)"""
    index = ks.index(bucket)
    if dry_run:
        report.expired += int(scripts.run("purge_expired", (index,), ("count",))[1])
        return
    while True:
        _now, listed, dropped = scripts.run("purge_expired", (index,), ("list", batch))
        report.orphans += int(dropped)  # (members that name no record, gone already)
        if listed:
            keys = (index, *(ks.record_base(bucket) + d for d in listed))
            funnel, day = ks.funnels_today(bucket)
            args = ("remove", policy.funnel_keep_ms, day, *listed)
            report.expired += int(scripts.run("purge_expired", (*keys, *funnel), args)[1])
        if len(listed) + int(dropped) < batch:
            return


# Where a row holds the creation time a filtered purge checks before deleting.
CREATED = ROW.index(FIELDS["created_at"])


def purge_walk(
    scripts: ScriptRunner,
    ks: Keyspace,
    selection: Filter,
    *,
    report: PurgeReport,
    batch: int,
    walked: Callable[[int], None],
) -> None:
    orphans: dict[int, list[str]] = {}
    matched: dict[int, list[str]] = {}

    def flush(bucket: int, mode: str, pending: dict[int, list[str]]) -> int:
        args = pending.pop(bucket, [])
        step = 2 if mode == "match" else 1
        if not args or report.dry_run:
            return len(args) // step
        records = (ks.record_base(bucket) + digest for digest in args[::step])
        return int(scripts.run("purge_some", (ks.index(bucket), *records), (mode, *args)))

    for bucket, member, row, now in walk(scripts, ks, PAGE):
        report.scanned += 1
        if report.scanned % PAGE == 0:
            walked(report.scanned)
        if row is None:
            orphans.setdefault(bucket, []).append(member)
            if len(orphans[bucket]) >= batch:
                report.orphans += flush(bucket, "orphan", orphans)
        elif not selection.is_empty and _matches(selection, row, now):
            matched.setdefault(bucket, []).extend((member, row[CREATED] or ""))
            if len(matched[bucket]) >= 2 * batch:
                report.matched += flush(bucket, "match", matched)
    for bucket in list(orphans):
        report.orphans += flush(bucket, "orphan", orphans)
    for bucket in list(matched):
        report.matched += flush(bucket, "match", matched)
