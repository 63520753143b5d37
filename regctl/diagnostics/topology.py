"""What stands behind a store: its servers, a Cluster's nodes and slots, a Sentinel's view."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from regctl.connection import translated_errors
from regctl.errors import (
    StoreUnavailable,
)
from regctl.store.walk import node_migrations

if TYPE_CHECKING:
    from regctl.store.redis_store import RedisStore


SAFE_POLICIES = ("noeviction",)


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
        "read_only": info.get("slave_read_only"),  # (a replica's replica-read-only)
        # (a replica's primary, as INFO names it)
        "primary": f"{info['master_host']}:{info['master_port']}" if "master_host" in info else "",
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
                # (a range of one slot comes as [slot], not [first, last])
                slots=sum(int(r[-1]) - int(r[0]) + 1 for r in meta.get("slots", [])),
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
    facts["address"] = _address(client)
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


def _address(client: Any) -> str:
    """Where ``client`` connects: host:port, or a unix socket's path."""
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")


def replica_text(facts: dict[str, Any]) -> str:
    """The store's one server is a replica: what that means for the sign-ups."""
    of = f" of {facts['primary']}" if facts.get("primary") else ""
    link = facts.get("master_link_status")
    lost = f" (its link to the primary is {link})" if link not in (None, "up") else ""
    if facts.get("read_only") == 0:  # (replica-read-only no)
        return f"the server is a replica{of}{lost}: what it takes, its primary overwrites"
    return f"the server is a replica{of}{lost}: it refuses add, resend and verify"


def split_brain_text(addresses: list[str]) -> str:
    return f"held for replicas but acting as master: {', '.join(addresses)}"


def open_slots_text(open_slots: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{o['slot']} {o['state']} on {o['node']}" for o in open_slots[:4])
    more = f" and {len(open_slots) - 4} more" if len(open_slots) > 4 else ""
    return f"open: slot {shown}{more}"
