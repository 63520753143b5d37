"""`health`: Redis and the store graded for monitoring, one level per check.

It keeps the original ``/health`` JSON shape (status, timestamp, version,
redis{status, ping, connected_clients, used_memory_human, uptime_in_seconds},
pending_registrations{total, redis_connected}) and adds latency, memory against
maxmemory, eviction policy, persistence and topology."""

from __future__ import annotations

import copy
import enum
import math
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from regctl.diagnostics.topology import (
    SAFE_POLICIES,
    open_slots_text,
    replica_text,
    split_brain_text,
    topology,
)
from regctl.errors import (
    DamagedRecord,
    InvalidInput,
    PermissionDenied,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from regctl.store.base import Store
    from regctl.store.redis_store import RedisStore


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
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
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
    """A health report: its level, its checks, and ``to_dict()``, the JSON a
    ``/health`` endpoint returns."""

    level: Level
    data: dict[str, Any]
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``ok``, ``warning``, ``critical`` or ``unknown``."""
        return self.level.name.lower()

    @property
    def ok(self) -> bool:
        return self.level is Level.OK

    def to_dict(self) -> dict[str, Any]:
        """The original ``/health`` shape (status, timestamp, version, redis{status,
        ping, connected_clients, used_memory_human, uptime_in_seconds},
        pending_registrations{total, redis_connected}) plus regctl's checks."""
        return copy.deepcopy(self.data)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    data = _head(store, version)
    try:
        view = topology(store)
        total, damaged = _total(store, view)
    except (StoreUnavailable, PermissionDenied) as exc:
        return _disconnected(data, "disconnected", exc.message)
    data["redis"] = {"status": "connected", "ping": True, **_summary(view)}
    data["pending_registrations"] = {"total": total, "redis_connected": True}
    if view["kind"] != "standalone":
        data["topology"] = view
    checks = list(_topology_checks(view, limits))
    if damaged is not None:
        checks.append(Check("store", Level.WARNING, f"{damaged}; pending count unknown"))
    return _report(data, checks)


def _report(data: dict[str, Any], checks: list[Check]) -> Health:
    """The report of ``checks``: graded by the worst, its status and checks in ``data``."""
    level = max((c.level for c in checks), default=Level.OK)
    data["status"] = level.name.lower()
    data["checks"] = [_check_json(c) for c in checks]
    return Health(level, data, checks)


def _head(store: Store, version: str) -> dict[str, Any]:
    return {
        "status": "unknown",
        "timestamp": _now_iso(),
        "version": version,
        "store": store.description,
    }


def _disconnected(data: dict[str, Any], status: str, reason: str) -> Health:
    data["redis"] = {"status": status, "ping": False, "error": reason}
    data["pending_registrations"] = {"total": None, "redis_connected": False}
    return _report(data, [Check("connection", Level.CRITICAL, reason)])


# The longest a health check may be given (a /health endpoint wants seconds).
MAX_HEALTH_TIMEOUT = 3600


class HealthProbe:
    """Health within a time budget, whatever Redis does.

    The checks run in a helper thread; a caller waits for them at most its timeout,
    then gets CRITICAL ("no answer"). While a check is still running (a stalled
    server), later callers wait on that same one: a ``/health`` polled every second
    during a stall never piles up threads or connections.
    """

    def __init__(self, store: Store, version: str) -> None:
        self._store, self._version = store, version
        self._lock = threading.Lock()
        self._running: dict[Thresholds | None, Future[Health]] = {}

    def check(self, timeout: float, thresholds: Thresholds | None = None) -> Health:
        """The report within ``timeout`` seconds (0 < timeout <= MAX_HEALTH_TIMEOUT)."""
        running = self._start(timeout, thresholds)
        try:
            return copy.deepcopy(running.result(timeout))  # each caller its own copy
        except TimeoutError:
            return self._unanswered(timeout)

    async def acheck(self, timeout: float, thresholds: Thresholds | None = None) -> Health:
        """``check`` for asyncio code: the event loop waits, no thread does."""
        import asyncio

        running = self._start(timeout, thresholds)
        try:  # (shielded: a caller's timeout must not cancel the check others share)
            report = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), timeout)
        except TimeoutError:
            return self._unanswered(timeout)
        return copy.deepcopy(report)

    def _start(self, timeout: float, thresholds: Thresholds | None) -> Future[Health]:
        """The check under way with these thresholds, started if none is."""
        if not (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and 0 < timeout <= MAX_HEALTH_TIMEOUT  # (NaN compares false)
        ):
            raise InvalidInput(
                f"the health timeout must be a number of seconds, above 0 and at most "
                f"{MAX_HEALTH_TIMEOUT}"
            )
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise InvalidInput(f"thresholds are a Thresholds, not {type(thresholds).__name__}")
        with self._lock:  # one check under way per set of thresholds
            running = self._running.get(thresholds)
            if running is None or running.done():
                running = self._running[thresholds] = Future()
                threading.Thread(
                    target=self._run,
                    args=(running, thresholds),
                    name="regctl-health",
                    daemon=True,  # a stalled check never holds the process open
                ).start()
        return running

    def _unanswered(self, timeout: float) -> Health:
        reason = f"Redis gave no answer within {timeout:g} s"
        return _disconnected(_head(self._store, self._version), "timeout", reason)

    def _run(self, done: Future[Health], thresholds: Thresholds | None) -> None:
        from regctl.store.redis_store import RedisStore

        if not done.set_running_or_notify_cancel():
            return
        try:
            if isinstance(self._store, RedisStore):
                done.set_result(health(self._store, self._version, thresholds))
            else:
                done.set_result(_in_memory(self._store, self._version))
        except BaseException as exc:  # a fault in the checks themselves: the caller's
            done.set_exception(exc)


def _in_memory(store: Store, version: str) -> Health:
    """An in-process store is as healthy as the process; no Redis is in use."""
    data = _head(store, version)
    data["redis"] = {"status": "not used", "ping": False}
    data["pending_registrations"] = {"total": store.counts().total, "redis_connected": False}
    kept = "in-process memory store: nothing shared, nothing kept"
    return _report(data, [Check("store", Level.OK, kept)])


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


def _total(store: RedisStore, view: dict[str, Any]) -> tuple[int | None, str | None]:
    """Pending registrations, None when a cluster node is down (reported on its own);
    and what is damaged when an index key is not regctl's (then the count is None)."""
    try:
        return store.counts().total, None
    except StoreUnavailable:
        if not view.get("unreachable"):
            raise
        return None, None
    except DamagedRecord as exc:
        return None, exc.message


def _topology_checks(view: dict[str, Any], limits: Thresholds) -> Iterator[Check]:
    many = len(view["nodes"]) > 1
    for node in view["nodes"]:
        primary = node["role"] in ("master", "primary")
        if primary or view["kind"] == "standalone":  # (the one server: whatever it is)
            suffix = f" {node['address']}" if many else ""
            for check in _health_checks(node, limits):
                yield Check(check.name + suffix, check.level, check.detail)
        if not primary and view["kind"] == "standalone":
            yield Check("role", Level.CRITICAL, replica_text(node))
        elif not primary and node.get("master_link_status") not in (None, "up"):
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
                f"{open_slots_text(view['open_slots'])}: calls in them wait for the move",
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
        yield Check("masters", Level.CRITICAL, split_brain_text(view["other_masters"]))
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
