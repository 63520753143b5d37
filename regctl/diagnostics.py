"""Health, doctor and selftest: plain functions over a RedisStore that return data.

``health`` keeps the original ``/health`` JSON shape (status, timestamp, version,
redis{status, ping, connected_clients, used_memory_human, uptime_in_seconds},
pending_registrations{total, redis_connected}) and adds latency, memory against
maxmemory, eviction policy, persistence, and a status per check.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

from regctl.acl import AclUnchecked, missing_commands
from regctl.connection import translated_errors
from regctl.errors import (
    InvalidInput,
    NotServing,
    PermissionDenied,
    RegctlError,
    StoreUnavailable,
)
from regctl.keys import KINDS, LASTING_KINDS
from regctl.manager import PURGE_LEASE_MS
from regctl.model import Filter, Policy
from regctl.render import plural
from regctl.settings import MAX_LIFETIME_S
from regctl.store.base import PURGE_BATCH, chunks
from regctl.store.redis_store import node_migrations

if TYPE_CHECKING:
    from regctl.store.redis_store import RedisStore

MIN_REDIS = (6, 2)
SAFE_POLICIES = ("noeviction",)


class Level(enum.IntEnum):
    """Monitoring-plugin states, which are also `health`'s exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Thresholds:
    latency_warn_ms: float = 50.0
    latency_crit_ms: float = 500.0
    memory_warn: float = 0.80
    memory_crit: float = 0.95

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not math.isfinite(value) or value < 0:
                what = name.replace("_ms", "").replace("_", " ")
                raise InvalidInput(f"the {what} threshold must be a number, 0 or more")
        if self.latency_warn_ms > self.latency_crit_ms:
            raise InvalidInput("the latency warning must not be above the critical one")
        if self.memory_warn > self.memory_crit or self.memory_crit > 1:
            raise InvalidInput("memory shares must be warning <= critical <= 1 (of maxmemory)")


@dataclass
class Check:
    name: str
    level: Level
    detail: str


@dataclass
class Health:
    level: Level
    data: dict[str, Any]
    checks: list[Check] = field(default_factory=list)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def node_facts(client: Any) -> dict[str, Any]:
    """Round-trip time (median of 5 pings) and the INFO fields regctl reports on."""
    with translated_errors():
        client.ping()  # connects; the samples below time round trips only
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            client.ping()
            samples.append((time.perf_counter() - started) * 1000)
        info = client.info()
    maxmemory = int(info.get("maxmemory", 0))
    used = int(info.get("used_memory", 0))
    return {
        "latency_ms": round(sorted(samples)[len(samples) // 2], 3),
        "version": info.get("redis_version"),
        "mode": info.get("redis_mode", "standalone"),
        "role": info.get("role"),
        "connected_clients": info.get("connected_clients"),
        "used_memory": used,
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory": maxmemory,
        "maxmemory_human": info.get("maxmemory_human"),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "memory_ratio": round(used / maxmemory, 4) if maxmemory else None,
        "aof_enabled": bool(int(info.get("aof_enabled", 0))),
        "rdb_last_save_time": info.get("rdb_last_save_time"),
        "uptime_in_seconds": info.get("uptime_in_seconds"),
        "master_link_status": info.get("master_link_status"),
    }


def unseen_after_eviction(store: RedisStore) -> int:
    """Records an eviction left outside the index (0 when the server cannot evict and
    never has: then the walk costs nothing). Whole-store readers check it afterwards."""
    with translated_errors():
        nodes = _per_node(store.client.info())  # the default sections: memory and stats
    at_risk = any(
        (n.get("maxmemory_policy") not in SAFE_POLICIES and int(n.get("maxmemory", 0)))
        or int(n.get("evicted_keys", 0))
        for n in nodes
    )
    return sum(1 for _ in store.unindexed()) if at_risk else 0


def _per_node(info: dict[str, Any]) -> list[dict[str, Any]]:
    """INFO's fields per server (a cluster client answers {node: fields})."""
    nested = [v for v in info.values() if isinstance(v, dict)]
    return nested if nested and len(nested) == len(info) else [info]


def topology(store: RedisStore) -> dict[str, Any]:
    """Every server behind the store: one for standalone and Sentinel's master, each node
    of a Cluster (with its slots and links), plus the Sentinel view where there is one."""
    client = store.client
    if store.is_cluster:
        with translated_errors():
            described = client.cluster_nodes()
            state = client.cluster_info()
        nodes = []
        open_slots = []
        unreachable = []  # reported, not raised: one node down is what doctor is for
        other_masters = []
        for node in client.get_nodes():
            try:
                facts = node_facts(node.redis_connection)
                migrations = node_migrations(node.redis_connection)
            except StoreUnavailable as exc:
                unreachable.append({"address": node.name, "error": exc.message})
                continue
            meta = described.get(node.name, {})
            if facts["role"] == "master" and "slave" in meta.get("flags", ""):
                other_masters.append(node.name)
            open_slots += [
                {"slot": int(m["slot"]), "state": m["state"], "node": node.name} for m in migrations
            ]
            facts.update(
                address=node.name,
                role=node.server_type,
                slots=sum(int(b) - int(a) + 1 for a, b in meta.get("slots", [])),
                link=(meta.get("connected") and "connected") or "disconnected",
            )
            nodes.append(facts)
        primaries = {m["node_id"] for m in described.values() if "master" in m["flags"]}
        backed = {m["master_id"] for m in described.values() if "slave" in m["flags"]}
        return {
            "kind": "cluster",
            "nodes": nodes,
            "cluster_state": state.get("cluster_state"),
            "slots_ok": int(state.get("cluster_slots_ok", 0)),
            # A reshard under way, or one that stopped half-way and left slots open.
            "open_slots": open_slots,
            "failed_nodes": [a for a, m in described.items() if "fail" in m["flags"]],
            "unreachable": unreachable,
            "other_masters": other_masters,
            "primaries_without_replica": len(primaries - backed),
            "any_replica": bool(backed),
        }
    facts = node_facts(client)
    # Split brain: a node the topology holds for a replica that takes writes (promoted
    # by hand, or an old master never told); whatever it takes is lost.
    view: dict[str, Any] = {"kind": "standalone", "nodes": [facts], "other_masters": []}
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        service = client.connection_pool.service_name
        with translated_errors():
            master = manager.discover_master(service)
            replicas = manager.discover_slaves(service)
            state = manager.sentinels[0].sentinel_master(service)
            known = manager.sentinels[0].sentinel_slaves(service)
        facts["address"] = f"{master[0]}:{master[1]}"
        silent = [_address(s) for s in manager.sentinels if not _answers(s)]
        view.update(
            kind="sentinel",
            sentinel={
                "service": service,
                "master": facts["address"],
                "replicas": [f"{h}:{p}" for h, p in replicas],
                "quorum": int(state.get("quorum", 0)),
                # Counted by asking each (one sentinel's view lags a death by seconds).
                "sentinels_seen": len(manager.sentinels) - len(silent),
                "sentinels_down": silent,
                "replicas_down": [
                    f"{r['ip']}:{r['port']}"
                    for r in known
                    if r.get("is_sdown") or r.get("is_odown") or r.get("is_disconnected")
                ],
            },
            other_masters=[
                f"{r['ip']}:{r['port']}"
                for r in known
                if _claims_master(r["ip"], int(r["port"]), manager.connection_kwargs)
            ],
        )
    return view


def _claims_master(host: str, port: int, kwargs: dict[str, Any]) -> bool:
    import redis

    node = redis.Redis(host=host, port=port, **{**kwargs, "retry": None})
    try:
        return bool(node.info("replication").get("role") == "master")
    except Exception:  # down or refusing: the sentinels' own view reports that
        return False
    finally:
        node.close()


def _answers(sentinel: Any) -> bool:
    try:
        return bool(sentinel.ping())
    except Exception:  # down, refusing, or not a sentinel: it does not answer
        return False


def _address(sentinel: Any) -> str:
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _summary(view: dict[str, Any]) -> dict[str, Any]:
    """The original /health `redis` fields, summed or worst-of over the nodes."""
    nodes = view["nodes"]
    if len(nodes) == 1:
        return dict(nodes[0])
    used = sum(n["used_memory"] for n in nodes)
    return {
        "mode": "cluster",
        "version": min(n["version"] for n in nodes),
        "latency_ms": max(n["latency_ms"] for n in nodes),
        "connected_clients": sum(int(n["connected_clients"]) for n in nodes),
        "used_memory": used,
        "used_memory_human": f"{used / 1048576:.2f}M",
        "uptime_in_seconds": min(int(n["uptime_in_seconds"]) for n in nodes),
        "aof_enabled": all(n["aof_enabled"] for n in nodes),
    }


def health(store: RedisStore, version: str, thresholds: Thresholds | None = None) -> Health:
    """The health report; never raises for an unreachable server (that is CRITICAL)."""
    limits = thresholds or Thresholds()
    data: dict[str, Any] = {
        "status": "unknown",
        "timestamp": _now_iso(),
        "version": version,
        "store": store.description,
    }
    try:
        view = topology(store)
        total = _total(store, view)
    except (StoreUnavailable, PermissionDenied) as exc:
        data["redis"] = {"status": "disconnected", "ping": False, "error": exc.message}
        data["pending_registrations"] = {"total": None, "redis_connected": False}
        checks = [Check("connection", Level.CRITICAL, exc.message)]
        data["status"] = Level.CRITICAL.name.lower()
        data["checks"] = [_check_json(c) for c in checks]
        return Health(Level.CRITICAL, data, checks)
    data["redis"] = {"status": "connected", "ping": True, **_summary(view)}
    data["pending_registrations"] = {"total": total, "redis_connected": True}
    if view["kind"] != "standalone":
        data["topology"] = view
    checks = list(_topology_checks(view, limits))
    level = max((c.level for c in checks), default=Level.OK)
    data["status"] = level.name.lower()
    data["checks"] = [_check_json(c) for c in checks]
    return Health(level, data, checks)


def nagios_line(report: Health, limits: Thresholds) -> str:
    """The monitoring-plugin form: one status line with performance data, as Nagios,
    Icinga and Sensu read it (`REGCTL OK - 12 pending, 0.31 ms | latency_ms=0.31;50;500`)."""
    redis_facts = report.data.get("redis", {})
    total = report.data.get("pending_registrations", {}).get("total")
    problems = [f"{c.name}: {c.detail}" for c in report.checks if c.level is not Level.OK]
    if problems:
        text = "; ".join(problems)
    else:
        text = f"{total} pending, {redis_facts.get('latency_ms', 0):.2f} ms round trip"
    perf = []
    if "latency_ms" in redis_facts:
        perf.append(
            f"latency_ms={redis_facts['latency_ms']};"
            f"{limits.latency_warn_ms:g};{limits.latency_crit_ms:g};0"
        )
    if total is not None:
        perf.append(f"pending={total};;;0")
    if redis_facts.get("memory_ratio") is not None:
        perf.append(
            f"memory_pct={redis_facts['memory_ratio'] * 100:.1f};"
            f"{limits.memory_warn * 100:g};{limits.memory_crit * 100:g};0;100"
        )
    if "used_memory" in redis_facts:
        perf.append(f"memory_used={redis_facts['used_memory']}B;;;0")
    text = " ".join(text.replace("|", "/").split())  # "|" would start the performance data
    line = f"REGCTL {report.level.name} - {text}"
    return f"{line} | {' '.join(perf)}" if perf else line


def _total(store: RedisStore, view: dict[str, Any]) -> int | None:
    """Pending registrations; None when a cluster node is down (reported on its own)."""
    try:
        return store.counts().total
    except StoreUnavailable:
        if not view.get("unreachable"):
            raise
        return None


def _topology_checks(view: dict[str, Any], limits: Thresholds) -> Iterator[Check]:
    many = len(view["nodes"]) > 1
    for node in view["nodes"]:
        if node["role"] in ("master", "primary"):
            suffix = f" {node['address']}" if many else ""
            for check in _health_checks(node, limits):
                yield Check(check.name + suffix, check.level, check.detail)
        elif node.get("master_link_status") not in (None, "up"):
            yield Check(f"replica {node['address']}", Level.WARNING, "link to its primary is down")
    if view["kind"] == "cluster":
        ok = view["cluster_state"] == "ok" and view["slots_ok"] == 16384
        yield Check(
            "cluster",
            Level.OK if ok else Level.CRITICAL,
            f"state {view['cluster_state']}, {view['slots_ok']}/16384 slots served",
        )
        if view["open_slots"]:
            yield Check(
                "slots",
                Level.WARNING,
                f"{_open_slots_text(view['open_slots'])}: calls in them wait for the move",
            )
        if view["failed_nodes"]:
            yield Check(
                "nodes",
                Level.WARNING,
                f"marked failed: {', '.join(view['failed_nodes'])}",
            )
        for node in view["unreachable"]:
            yield Check(f"node {node['address']}", Level.CRITICAL, node["error"])
    if view["other_masters"]:
        yield Check("masters", Level.CRITICAL, _split_brain_text(view["other_masters"]))
    if view["kind"] == "sentinel":
        sentinel = view["sentinel"]
        enough = sentinel["sentinels_seen"] >= sentinel["quorum"]
        down = [f"sentinel {a} does not answer" for a in sentinel["sentinels_down"]]
        down += [f"replica {a} is down" for a in sentinel["replicas_down"]]
        level = Level.WARNING if down or not enough else Level.OK
        yield Check(
            "sentinel",
            level,
            f"master {sentinel['master']}, {len(sentinel['replicas'])} replicas, "
            f"{sentinel['sentinels_seen']} sentinels (quorum {sentinel['quorum']})"
            + "".join(f"; {d}" for d in down),
        )


def _check_json(check: Check) -> dict[str, str]:
    return {"name": check.name, "status": check.level.name.lower(), "detail": check.detail}


def _grade(value: float, warn: float, crit: float) -> Level:
    return Level.CRITICAL if value >= crit else Level.WARNING if value >= warn else Level.OK


def _health_checks(facts: dict[str, Any], limits: Thresholds) -> Iterator[Check]:
    latency = facts["latency_ms"]
    level = _grade(latency, limits.latency_warn_ms, limits.latency_crit_ms)
    yield Check("latency", level, f"{latency:.2f} ms round trip")
    ratio = facts["memory_ratio"]
    if ratio is None:
        yield Check("memory", Level.OK, f"{facts['used_memory_human']} used, no maxmemory")
    else:
        level = _grade(ratio, limits.memory_warn, limits.memory_crit)
        used = f"{facts['used_memory_human']} of {facts['maxmemory_human']} ({ratio:.0%})"
        yield Check("memory", level, used)
    policy = facts["maxmemory_policy"]
    if policy not in SAFE_POLICIES and facts["maxmemory"]:
        yield Check("eviction", Level.WARNING, f"{policy} can evict pending registrations")
    else:
        yield Check("eviction", Level.OK, f"{policy}")
    # Persistence is a configuration choice, not a live fault: reported here, flagged by doctor.
    yield Check(
        "persistence",
        Level.OK,
        "AOF on" if facts["aof_enabled"] else "AOF off (see `regctl doctor`)",
    )


# --- doctor ---------------------------------------------------------------


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
        if facts["role"] in ("master", "primary"):
            findings += _server_findings(facts, len(view["nodes"]) > 1)
        elif facts.get("master_link_status") not in (None, "up"):
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
                _split_brain_text(view["other_masters"]),
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


def _split_brain_text(addresses: list[str]) -> str:
    return f"held for replicas but acting as master: {', '.join(addresses)}"


def _open_slots_text(open_slots: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{o['slot']} {o['state']} on {o['node']}" for o in open_slots[:4])
    more = f" and {len(open_slots) - 4} more" if len(open_slots) > 4 else ""
    return f"open: slot {shown}{more}"


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
                f"{_open_slots_text(view['open_slots'])} (a reshard under way, or one "
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
_LONGEST_TTL_MS = {"lock": 10 * PURGE_LEASE_MS, "record": MAX_LIFETIME_S * 1000 + 1000}


def _keyspace_findings(store: RedisStore, scan_limit: int) -> list[Finding]:
    ks = store.keyspace
    client = store.client
    foreign: list[str] = []  # keys regctl never writes
    lost_ttl: list[str] = []  # regctl's own keys that should expire and will not
    too_long: list[str] = []  # ... that will, but much later than regctl ever sets
    wrong_type: list[str] = []  # ... that hold another kind of value than regctl's
    with translated_errors():
        keys = islice(client.scan_iter(match=ks.pattern(), count=1000), scan_limit)
        for chunk in chunks(keys, 1000):  # one pipelined round trip per thousand keys
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.pttl(key)
                pipe.type(key)
            replies = pipe.execute()
            for key, ttl, kind_of in zip(chunk, replies[::2], replies[1::2], strict=True):
                kind = ks.kind(key)
                if kind is None:
                    foreign.append(key)
                elif kind_of != KINDS[kind]:
                    wrong_type.append(key)
                elif ttl == -1 and kind not in LASTING_KINDS:
                    lost_ttl.append(key)
                elif ttl > _LONGEST_TTL_MS.get(kind, ttl):
                    too_long.append(key)
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
    unindexed = sum(1 for _ in store.unindexed())
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
    try:
        report = store.purge(Filter(), Policy(), dry_run=True, batch=PURGE_BATCH)
    except NotServing:  # slots on the move: reported as open slots; orphans wait for it
        return findings
    if report.orphans:
        findings.append(
            Finding(
                "warning",
                "index-orphans",
                f"pointing to no record: {plural(report.orphans, 'index entry')}",
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


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str


def selftest(
    store: RedisStore, version: str, on_step: Callable[[Step], None] | None = None
) -> list[Step]:
    """The original 8-step connection test, in a throwaway namespace that is always removed.

    Cleanup runs in ``finally``, so an interrupt (Ctrl-C) leaves nothing behind either.
    """
    run = _SelfTest(store, version)
    steps: list[Step] = []
    try:
        for name, action in run.plan():
            started = time.perf_counter()
            try:
                detail, ok = action(), True
            except (RegctlError, AssertionError) as exc:
                detail, ok = getattr(exc, "message", str(exc)), False
            step = Step(name, ok, (time.perf_counter() - started) * 1000, detail)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        _drop_namespace(store, run.scratch_prefix)
    return steps


class _SelfTest:
    """The steps of `selftest`; writes go to a scratch prefix, reads to the real one."""

    def __init__(self, store: RedisStore, version: str) -> None:
        import secrets

        from regctl.manager import RegistrationManager
        from regctl.security import generate_secret
        from regctl.store.redis_store import RedisStore as Store

        self.store = store
        self.version = version
        # Under the real prefix, so an ACL limited to `~prefix:*` covers it too.
        self.scratch_prefix = f"{store.keyspace.prefix}:selftest:{secrets.token_hex(4)}"
        self.scratch = RegistrationManager(
            Store(store.client, prefix=self.scratch_prefix, description=store.description),
            secret=generate_secret(),
            policy=Policy(resend_cooldown_ms=0),
        )
        self.real = RegistrationManager(store, secret=None)
        self.email = f"selftest-{secrets.token_hex(4)}@example.com"
        self.password = generate_secret()
        self.code = ""

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("health", self.health),
            ("list pending", self.list_pending),
            ("create", self.create),
            ("read", self.read),
            ("new code", self.new_code),
            ("verify", self.verify),
            ("purge", self.purge),
            ("stats", self.stats),
        ]

    def health(self) -> str:
        report = health(self.store, self.version)
        facts = report.data["redis"]
        if not facts.get("ping"):
            raise StoreUnavailable(facts.get("error", "no answer"))
        return (
            f"Redis {facts['version']}, {facts['connected_clients']} clients, "
            f"{facts['used_memory_human']}, up {facts['uptime_in_seconds']}s"
        )

    def list_pending(self) -> str:
        shown = sum(1 for _ in self.real.list(limit=5))
        return f"listed {shown} of {self.real.count()} pending"

    def create(self) -> str:
        self.code = self.scratch.add(self.email, "Self", "Test", password=self.password).code
        return "test record created"

    def read(self) -> str:
        reg = self.scratch.get(self.email)
        if reg is None:
            raise AssertionError("the test record is missing")
        return f"read back, expires in {reg.ttl_ms // 1000}s"

    def new_code(self) -> str:
        self.code = self.scratch.resend(self.email).code
        return "code replaced"

    def verify(self) -> str:
        if not self.code:
            raise AssertionError("no code: an earlier step failed")
        bad = f"{(int(self.code) + 1) % 10**6:06d}"
        if self.scratch.verify(self.email, bad).ok:
            raise AssertionError("a wrong code was accepted")
        right = self.scratch.verify(self.email, self.code)
        if not right.ok:
            raise AssertionError(f"the right code gave {right.outcome}")
        return "wrong code refused, right code accepted"

    def purge(self) -> str:
        return f"{self.scratch.purge(Filter()).total} leftovers removed"

    def stats(self) -> str:
        return f"{self.real.count()} pending in {self.store.keyspace.prefix}"


def _drop_namespace(store: RedisStore, prefix: str) -> None:
    """Delete every key of a throwaway namespace (selftest's own, never the real one)."""
    client = store.client
    with translated_errors():
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            pipe.delete(key)  # one key per command: the keys span many cluster slots
        pipe.execute()
