"""`doctor`: what a careful operator would look for, each finding with a one-line fix."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from regctl.acl import AclUnchecked, missing_commands
from regctl.connection import translated_errors
from regctl.diagnostics.health import Thresholds
from regctl.diagnostics.topology import (
    SAFE_POLICIES,
    open_slots_text,
    replica_text,
    split_brain_text,
    topology,
)
from regctl.errors import (
    NotServing,
    StoreUnavailable,
)
from regctl.keys import KINDS, LASTING_KINDS
from regctl.manager import PURGE_LEASE_MS
from regctl.settings import MAX_LIFETIME_S
from regctl.store.base import Helper, chunks, overlapped
from regctl.store.walk import LiveIndex, all_or_raise
from regctl.text import plural

if TYPE_CHECKING:
    from regctl.store.redis_store import RedisStore


MIN_REDIS = (6, 2)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


@dataclass(frozen=True)
class Finding:
    severity: str  # "error", "warning" or "info"
    code: str
    message: str
    fix: str


def doctor(store: RedisStore, scan_limit: int = 1_000_000) -> list[Finding]:
    """What a careful operator would look for, each with a one-line fix."""
    view = topology(store)
    findings: list[Finding] = []
    for facts in view["nodes"]:
        primary = facts["role"] in ("master", "primary")
        if primary or view["kind"] == "standalone":
            findings += _server_findings(facts, len(view["nodes"]) > 1)
        if not primary and view["kind"] == "standalone":
            findings.append(
                Finding(
                    "error",
                    "store-is-replica",
                    replica_text(facts),
                    "point REGCTL_REDIS_URL at the primary (or at Sentinel: redis+sentinel://)",
                )
            )
        elif not primary and facts.get("master_link_status") not in (None, "up"):
            findings.append(
                Finding(
                    "warning",
                    "replica-lagging",
                    f"replica {facts['address']} lost its primary link",
                    "check the replica's log and network; it serves stale data meanwhile",
                )
            )
    if view["kind"] == "cluster" and (view["cluster_state"] != "ok" or view["slots_ok"] < 16384):
        findings.append(
            Finding(
                "error",
                "cluster-not-ok",
                f"cluster state {view['cluster_state']}, {view['slots_ok']}/16384 slots served",
                "run `redis-cli --cluster check` and fix the uncovered slots",
            )
        )
    if view["kind"] == "cluster":
        findings += _cluster_findings(view)
    if view["other_masters"]:
        findings.append(
            Finding(
                "error",
                "split-brain",
                split_brain_text(view["other_masters"]),
                "make it a replica again (`REPLICAOF host port`; on Cluster `CLUSTER "
                "REPLICATE id`); writes it took are lost",
            )
        )
    try:
        findings += _keyspace_findings(store, scan_limit)
        findings += _permission_findings(store)
    except StoreUnavailable as exc:
        if not view.get("unreachable"):
            raise
        findings.append(
            Finding(
                "warning",
                "keys-unchecked",
                f"the keys could not be checked with a node down: {exc.message}",
                "run `regctl doctor` again once every node answers",
            )
        )
    return findings


def _cluster_findings(view: dict[str, Any]) -> list[Finding]:
    findings = [
        Finding(
            "error",
            "node-unreachable",
            f"node {node['address']} does not answer: {node['error']}",
            "bring it back; until then its slots are not served, unless a replica takes over",
        )
        for node in view["unreachable"]
    ]
    if view["open_slots"]:
        findings.append(
            Finding(
                "warning",
                "slots-open",
                f"{open_slots_text(view['open_slots'])} (a reshard under way, or one "
                "that stopped half-way)",
                "if no reshard is running, finish it: `redis-cli --cluster fix`",
            )
        )
    if view["failed_nodes"]:
        findings.append(
            Finding(
                "error",
                "nodes-failed",
                f"marked failed by the cluster: {', '.join(view['failed_nodes'])}",
                "bring them back, or `CLUSTER FORGET` them on every node once replaced",
            )
        )
    if view["primaries_without_replica"]:
        alone = plural(view["primaries_without_replica"], "primary")
        findings.append(
            Finding(
                # A cluster built without replicas is a choice; one losing them is not.
                "warning" if view["any_replica"] else "info",
                "primaries-without-replica",
                f"without a replica: {alone}; a crash there loses its slots' data "
                "and stops them until it returns",
                "add a replica to each primary (`redis-cli --cluster add-node --cluster-slave`)",
            )
        )
    return findings


def _server_findings(facts: dict[str, Any], named: bool) -> list[Finding]:
    where = f" on {facts['address']}" if named else ""
    findings: list[Finding] = []
    version = facts["version"] or "0"
    if _version_tuple(version) < MIN_REDIS:
        findings.append(
            Finding(
                "error",
                "server-too-old",
                f"Redis {version}{where} is older than 6.2",
                "upgrade to Redis 6.2 or newer (7.x recommended)",
            )
        )
    policy = facts["maxmemory_policy"]
    if policy not in SAFE_POLICIES:
        findings.append(
            Finding(
                "warning",
                "eviction-policy",
                f"maxmemory-policy {policy}{where} can evict pending registrations (all have TTLs)",
                "set `maxmemory-policy noeviction` in redis.conf",
            )
        )
    if not facts["aof_enabled"]:
        findings.append(
            Finding(
                "warning",
                "persistence-off",
                f"AOF is off{where}: a restart can lose acknowledged sign-ups",
                "set `appendonly yes` and `appendfsync everysec` in redis.conf",
            )
        )
    ratio = facts["memory_ratio"]
    if ratio is not None and ratio >= Thresholds().memory_warn:
        findings.append(
            Finding(
                "warning",
                "memory-high",
                f"memory{where} at {ratio:.0%} of maxmemory",
                "raise maxmemory or run `regctl purge`",
            )
        )
    return findings


# How long regctl ever lets a key of a kind live: a lease is renewed well within a
# minute; a record lives its lifetime at most (plus a second of clock rounding).
_LONGEST_TTL_MS = {
    "lock": 10 * PURGE_LEASE_MS,
    "record": MAX_LIFETIME_S * 1000 + 1000,
    "limit": MAX_LIFETIME_S * 1000 + 1000,  # a client window is at most a lifetime
}


@dataclass
class _Keys:
    """What one pass over the keys under the prefix found."""

    foreign: list[str] = field(default_factory=list)  # keys regctl never writes
    lost_ttl: list[str] = field(default_factory=list)  # regctl's, should expire, will not
    too_long: list[str] = field(default_factory=list)  # ... will, far later than regctl sets
    wrong_type: list[str] = field(default_factory=list)  # ... hold another kind of value
    records: list[bytearray] = field(default_factory=list)  # this namespace's, per bucket


def _scan_keys(store: RedisStore, scan_limit: int) -> _Keys:
    """Every key under the prefix, its TTL and type, a thousand keys a round trip; and
    which records of this namespace exist, by bucket (their digests packed)."""
    ks = store.keyspace
    found = _Keys(records=[bytearray() for _ in range(ks.buckets)])

    def named(key: str) -> tuple[str | None, tuple[int, str] | None]:
        where = ks.own_record(key)  # most keys are records: one match names them
        return ("record", where) if where is not None else (ks.kind(key), None)

    def batch(chunk: list[str]) -> tuple[list[str], list[tuple[str | None, Any]]]:
        return chunk, [named(key) for key in chunk]

    with translated_errors():
        keys = islice(store.client.scan_iter(match=ks.pattern(), count=1000), scan_limit)
        batches = (batch(chunk) for chunk in chunks(keys, 1000))
        # The server checks a batch while the next one is scanned and named.
        for (chunk, names), facts in overlapped(batches, lambda b: _key_facts(store, b[0])):
            for key, (kind, where), ttl, kind_of in zip(
                chunk, names, facts[::2], facts[1::2], strict=True
            ):
                if kind_of == "none":
                    continue  # gone since the SCAN (verified, expired): nothing to say
                if where is not None:
                    found.records[where[0]] += bytes.fromhex(where[1])
                if kind is None:
                    found.foreign.append(key)
                elif kind_of != KINDS[kind]:
                    found.wrong_type.append(key)
                elif ttl == -1 and kind not in LASTING_KINDS:
                    found.lost_ttl.append(key)
                elif ttl > _LONGEST_TTL_MS.get(kind, ttl):
                    found.too_long.append(key)
    return found


def _key_facts(store: RedisStore, keys: list[str]) -> list[Any]:
    """pttl, type, pttl, type ... of ``keys``. A standalone server answers in one
    script call; on Cluster the keys span slots, so the commands go pipelined."""
    if not store.is_cluster:
        return list(store.scripts.run("keycheck", keys, ()))
    pipe = store.client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.type(key)
    return all_or_raise(pipe.execute(raise_on_error=False))


def _keyspace_findings(store: RedisStore, scan_limit: int) -> list[Finding]:
    # The index is read while the scan reads the keys: the server answers one while
    # the client names the other's keys.
    helper = Helper("regctl-index")
    try:
        index = helper.submit(store.live_index)
        return _key_findings(store, _scan_keys(store, scan_limit), index)
    finally:
        helper.close()


def _key_findings(store: RedisStore, scanned: _Keys, index: Future[LiveIndex]) -> list[Finding]:
    ks, client = store.keyspace, store.client
    foreign, lost_ttl, too_long = scanned.foreign, scanned.lost_ttl, scanned.too_long
    wrong_type = scanned.wrong_type
    findings = []
    if wrong_type:
        findings.append(
            Finding(
                "error",
                "wrong-type",
                f"another kind of value than regctl writes: {plural(len(wrong_type), 'key')} "
                f"({_some(wrong_type)}); the commands that read them fail",
                "something else writes under regctl's prefix: give one of them another "
                "prefix, then remove those keys",
            )
        )
    if too_long:
        findings.append(
            Finding(
                "warning",
                "ttl-too-long",
                f"expiring far later than regctl ever sets: {plural(len(too_long), 'key')} "
                f"({_some(too_long)}); a lock like that keeps purge out (exit 75)",
                "a lock is a lease, not data: once no purge runs, delete it; records "
                "are removed by `regctl purge` when their lifetime ends",
            )
        )
    audit_entries = 0
    if ks.audit not in wrong_type:
        with translated_errors():
            audit_entries = client.xlen(ks.audit)  # 0 when there is none yet
    if lost_ttl:
        findings.append(
            Finding(
                "warning",
                "keys-without-ttl",
                f"lost their TTL and will never expire: {plural(len(lost_ttl), 'key')} of "
                f"regctl's ({_some(lost_ttl)})",
                "something removed it (PERSIST, a restore without TTLs); `regctl purge` "
                "removes records past their lifetime, and PEXPIRE fixes the others",
            )
        )
    if foreign:
        findings.append(
            Finding(
                "info",
                "foreign-keys",
                f"not written by regctl: {plural(len(foreign), 'key')} under the prefix "
                f"({_some(foreign)}); regctl never reads them",
                "if another application owns them, give regctl a prefix of its own (REGCTL_PREFIX)",
            )
        )
    if audit_entries > store.audit_max * 1.1 + 100:  # MAXLEN ~ trims whole nodes
        findings.append(
            Finding(
                "warning",
                "audit-over-cap",
                f"the audit trail holds {audit_entries} entries, over its cap of "
                f"{store.audit_max} (REGCTL_AUDIT_MAX_ENTRIES)",
                "the next audited command trims it; another regctl with a higher cap "
                "writes here too: give them the same setting",
            )
        )
    if wrong_type:
        return findings  # the checks below read those keys: they would only fail
    try:
        orphans, unindexed = store.index_gaps(scanned.records, index.result())
    except NotServing:  # slots on the move: reported as open slots; the index waits
        return findings
    if unindexed:
        findings.append(
            Finding(
                "error",
                "records-unindexed",
                f"missing from the index (evicted?): {plural(unindexed, 'record')}; list, "
                "stats, export and purge do not see them",
                "run `regctl purge --reindex`, and set `maxmemory-policy noeviction`",
            )
        )
    if orphans:
        findings.append(
            Finding(
                "warning",
                "index-orphans",
                f"pointing to no record: {plural(orphans, 'index entry')}",
                "run `regctl purge --orphans`",
            )
        )
    return findings


def _some(keys: list[str], shown: int = 5) -> str:
    """The first few of ``keys``, named (and how many more)."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _permission_findings(store: RedisStore) -> list[Finding]:
    try:
        missing = missing_commands(store.client, store.keyspace)
    except AclUnchecked as exc:
        return [
            Finding(
                "info",
                "permissions-unchecked",
                f"could not check ACL permissions: {exc}",
                "grant `acl|whoami` and `acl|dryrun` (Redis 7+) to let doctor check",
            )
        ]
    return [
        Finding(
            "error",
            "missing-permission",
            f"the Redis user cannot run {cmd.upper()}",
            f"add +{cmd} to the regctl user's ACL",
        )
        for cmd in missing
    ]


# --- selftest -------------------------------------------------------------
