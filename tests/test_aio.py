"""The async manager on real servers: exactly once under gather, and an event loop that
never waits on Redis (the contract suite also runs on it: tests/awaited.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from regctl import (
    AsyncRegistrationManager,
    PermissionDenied,
    StoreUnavailable,
    VerifyOutcome,
    bridge,
    security,
)
from regctl.settings import load_settings
from tests.conftest import SECRET
from tests.servers import RedisCluster, RedisProcess, ResettingProxy, free_port


def async_manager(url: str, prefix: str, **settings: object) -> AsyncRegistrationManager:
    loaded = load_settings(
        {"redis_url": url, "prefix": prefix, "code_secret": SECRET, **settings}, environ={}
    )
    return AsyncRegistrationManager.from_settings(loaded.settings)


def test_of_50_concurrent_right_codes_exactly_one_verifies(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    async def main() -> list[VerifyOutcome]:
        async with async_manager(redis_proc.url, prefix) as manager:
            added = await manager.add("race@example.com", "R", "C", password_hash=pw_hash)
            results = await asyncio.gather(
                *(manager.verify("race@example.com", added.code) for _ in range(50))
            )
            return [r.outcome for r in results]

    outcomes = asyncio.run(main())
    assert outcomes.count(VerifyOutcome.VERIFIED) == 1
    assert set(outcomes) == {VerifyOutcome.VERIFIED, VerifyOutcome.NOT_FOUND}


def test_the_event_loop_runs_on_while_redis_is_stopped(tmp_path: Path, pw_hash: str):
    """Calls stalled on a stopped server wait on their sockets, never hold the loop: a
    ticker keeps ticking, health answers CRITICAL within its timeout even with every
    connection taken, and the calls end with the store's own error at their deadline."""
    proc = RedisProcess(tmp_path / "aio").start()

    async def main() -> tuple[float, float, str, list[object]]:
        manager = async_manager(proc.url, "aio", socket_timeout=2, max_connections=2)
        await manager.add("first@example.com", "F", "S", password_hash=pw_hash)  # connected
        os.kill(proc.pid, signal.SIGSTOP)
        gaps: list[float] = []
        stalled = [
            asyncio.ensure_future(manager.get(f"s{i}@example.com")) for i in range(2)
        ]  # both connections of the pool now wait on Redis
        last, waited, status = time.monotonic(), 0.0, ""
        while not all(call.done() for call in stalled):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            if len(gaps) == 5:
                status = (await manager.health(timeout=0.3)).status
                waited = time.monotonic() - now
                last = time.monotonic()
        errors: list[object] = list(await asyncio.gather(*stalled, return_exceptions=True))
        os.kill(proc.pid, signal.SIGCONT)
        await manager.aclose()
        return max(gaps), waited, status, errors

    try:
        longest_gap, health_waited, status, errors = asyncio.run(main())
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.stop()
    assert longest_gap < 1.0  # the loop never waited out the 2 s socket timeout
    assert status == "critical"
    assert health_waited < 1.5  # not for a connection of the pool (both wait 2 s on Redis)
    assert all(isinstance(e, StoreUnavailable) for e in errors), errors


def test_a_cancelled_call_leaves_the_manager_usable(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    async def main() -> bool:
        async with async_manager(redis_proc.url, prefix) as manager:
            call = asyncio.ensure_future(
                manager.add("gone@example.com", "G", "C", password="a long enough password")
            )
            await asyncio.sleep(0)
            call.cancel()  # the client went away
            added = await manager.add("next@example.com", "N", "C", password_hash=pw_hash)
            return (await manager.verify("next@example.com", added.code)).ok

    assert asyncio.run(main())


def test_a_closed_manager_says_so(redis_proc: RedisProcess, prefix: str):
    async def main() -> None:
        manager = async_manager(redis_proc.url, prefix)
        await manager.aclose()
        for call in (manager.get("a@example.com"), manager.health()):
            with pytest.raises(StoreUnavailable, match="closed"):
                await call

    asyncio.run(main())


def test_a_call_cancelled_while_redis_stalls_leaves_no_reply_behind(tmp_path: Path, pw_hash: str):
    """A call cancelled while it waits on a stopped server: once the server is back, the
    next calls on the same pool get their own replies, never the cancelled one's."""
    proc = RedisProcess(tmp_path / "cancel").start()

    async def main() -> tuple[object, object]:
        async with async_manager(proc.url, "cancel", max_connections=1) as manager:
            added = await manager.add("kept@example.com", "K", "P", password_hash=pw_hash)
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                waiting = asyncio.ensure_future(manager.get("kept@example.com"))
                await asyncio.sleep(0.2)  # sent, and waiting for its reply
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            missing = await manager.get("nobody@example.com")
            result = await manager.verify("kept@example.com", added.code)
            return missing, result.outcome

    try:
        missing, outcome = asyncio.run(main())
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.stop()
    assert missing is None
    assert outcome is VerifyOutcome.VERIFIED


def test_one_manager_serves_two_event_loops_in_turn_and_at_once(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """asyncio clients belong to the loop that made them: each loop (a second
    asyncio.run, a thread with its own loop) gets its own, made on its first call."""
    manager = async_manager(redis_proc.url, prefix, max_connections=2)

    async def calls(tag: str) -> int:
        added = [
            await manager.add(f"{tag}{i}@example.com", "L", "T", password_hash=pw_hash)
            for i in range(3)
        ]
        results = await asyncio.gather(
            *(manager.verify(a.registration.email, a.code) for a in added)
        )
        return sum(r.ok for r in results)

    assert asyncio.run(calls("first")) == 3
    assert asyncio.run(calls("second")) == 3  # the first loop is closed by now
    outcomes: list[object] = []
    threads = [
        threading.Thread(target=lambda t=t: outcomes.append(asyncio.run(calls(t))))
        for t in ("left", "right")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == [3, 3]
    asyncio.run(manager.aclose())


def test_a_fresh_cluster_manager_takes_a_burst_of_calls(
    redis_cluster: RedisCluster, prefix: str, pw_hash: str
):
    """The first calls of a new manager, all at once: a fresh asyncio cluster client
    would send them to one node, and its handling of the MOVED replies closed the
    connections of calls under way (AttributeError)."""

    async def burst(round_: int) -> list[object]:
        async with async_manager(redis_cluster.url, f"{prefix}.r{round_}") as manager:
            return list(
                await asyncio.gather(
                    *(
                        manager.add(f"b{i}@example.com", "B", "U", password_hash=pw_hash)
                        for i in range(60)
                    ),
                    return_exceptions=True,
                )
            )

    for round_ in range(4):
        failed = [r for r in asyncio.run(burst(round_)) if isinstance(r, BaseException)]
        assert failed == []


@contextlib.asynccontextmanager
async def one_idle_connection(cluster: RedisCluster) -> AsyncIterator[tuple[Any, Any]]:
    """(node, its one idle connection): the node of key "k", on regctl's async twin of
    a sync client of ``cluster``."""
    from regctl.connection import async_twin
    from tests.conftest import cluster_client

    sync = cluster_client(cluster)
    twin = async_twin(sync)
    try:
        await twin.initialize()
        node = twin.get_node_from_key("k")
        await node.execute_command("PING")
        (idle,) = node._free
        yield node, idle
    finally:
        await twin.aclose()
        sync.close()


def test_a_cluster_nodes_idle_connections_are_closed_without_cutting_a_call_that_took_one(
    redis_cluster: RedisCluster,
):
    """redis.asyncio closes a node's idle connections after any error from it: it
    lists them, then closes each in a task of its own. A call that takes one in between
    and sends on it reads its reply whole; the connection is closed when it comes back.
    (It was closed under the read: a write that ran, reported as failed.)"""

    async def main() -> tuple[object, bool]:
        async with one_idle_connection(redis_cluster) as (node, idle):
            closing = asyncio.create_task(node.disconnect_free_connections())
            await asyncio.sleep(0)  # (it has listed the idle one, and not closed it yet)
            reply = await node.execute_command("ECHO", "whole")
            await closing
            return reply, idle.is_connected

    assert asyncio.run(main()) == ("whole", False)


def test_a_call_taking_a_connection_whose_close_is_under_way_reads_its_reply_whole(
    redis_cluster: RedisCluster,
):
    """An idle connection's close that waits for its socket to end: a call takes the
    connection meanwhile, connects it anew and sends. The close's end dropped the new
    socket under the call's read (the script ran; the call failed)."""
    busy_100ms = (
        "local t = redis.call('TIME') local t0 = t[1] * 1e6 + t[2] "
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - t0 > 100000 return 'whole'"
    )

    async def main() -> object:
        async with one_idle_connection(redis_cluster) as (node, idle):
            ends = idle._writer.wait_closed

            async def slow_end() -> None:  # (a socket slow to end: a wider window)
                await asyncio.sleep(0.05)
                await ends()

            idle._writer.wait_closed = slow_end
            closing = asyncio.create_task(node.disconnect_free_connections())
            await asyncio.sleep(0.01)  # (the close is under way, waiting)
            reply = await node.execute_command("EVAL", busy_100ms, 0)
            await closing
            return reply

    assert asyncio.run(main()) == "whole"


def test_calls_go_through_while_redis_py_keeps_closing_the_nodes_idle_connections(
    redis_cluster: RedisCluster, prefix: str, pw_hash: str
):
    """The same, under traffic: 300 sign-ups and verifies while every node's idle
    connections are closed every millisecond (as after node errors). None fails (about
    one call in ten did, "Connection closed by server")."""

    async def main() -> list[object]:
        async with async_manager(redis_cluster.url, prefix, max_connections=4) as manager:
            await manager.get("first@example.com")  # (the twin is made on a first call)
            (state,) = manager._loops.values()
            twin = state.manager.store.client.target  # type: ignore[attr-defined]
            done = asyncio.Event()

            async def close_idle_ones() -> None:
                while not done.is_set():
                    for node in twin.get_nodes():
                        await node.disconnect_free_connections()
                    await asyncio.sleep(0.001)

            async def sign_up(i: int) -> bool:
                email = f"kept{i}@example.com"
                added = await manager.add(email, "K", "U", password_hash=pw_hash)
                return (await manager.verify(email, added.code)).ok

            closing = asyncio.create_task(close_idle_ones())
            try:
                return list(
                    await asyncio.gather(*(sign_up(i) for i in range(300)), return_exceptions=True)
                )
            finally:
                done.set()
                await closing

    assert [r for r in asyncio.run(main()) if r is not True] == []


@pytest.mark.slow
def test_a_cluster_manager_closes_its_connections_after_a_node_failed_its_calls(
    tmp_path: Path,
):
    """redis.asyncio's cluster client closed nothing at aclose() after a node had
    failed a call (it means to learn the slot map again first): every connection
    stayed open on the servers."""
    cluster = RedisCluster(tmp_path / "c", primaries=2, replicas=0).start()
    emails = [f"c{i}@example.com" for i in range(12)]  # (keys on both nodes)

    async def main() -> list[object]:
        manager = async_manager(cluster.url, "closes", socket_timeout=1)
        await asyncio.gather(*(manager.get(e) for e in emails))
        stalled = cluster.nodes[0]
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            failed: list[object] = list(
                await asyncio.gather(*(manager.get(e) for e in emails), return_exceptions=True)
            )
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        await manager.aclose()
        return failed

    try:
        failed = asyncio.run(main())
        assert any(isinstance(f, StoreUnavailable) for f in failed)
        watchers = [node.client() for node in cluster.nodes]  # (their own connection only)
        deadline = time.monotonic() + 30  # (a server notices a closed socket soon, not at once)
        while (left := [len(w.client_list()) - 1 for w in watchers]) != [0, 0]:
            assert time.monotonic() < deadline, f"connections left open: {left}"
            time.sleep(0.05)
    finally:
        cluster.stop()


def test_connection_errors_are_named_as_the_sync_manager_names_them(tmp_path: Path):
    proc = RedisProcess(tmp_path / "auth", password="right-password").start()
    try:
        url = proc.url.replace("unix://", "unix://:wrong-password@")

        async def main() -> None:
            async with async_manager(url, "auth") as manager:
                await manager.get("a@example.com")

        with pytest.raises(PermissionDenied, match="refused the credentials"):
            asyncio.run(main())
    finally:
        proc.stop()


def test_a_write_the_socket_cannot_take_at_once_is_sent_whole_or_times_out(tmp_path: Path):
    """The async twin's connections skip redis-py's wait on a write the socket takes
    whole; one it cannot (8 MB on a unix socket) is still waited for, and given up at
    the socket timeout when the server reads nothing."""
    import redis.asyncio as aioredis
    import redis.exceptions as rex
    from redis.asyncio.connection import UnixDomainSocketConnection

    from regctl.connection import quick_writes

    proc = RedisProcess(tmp_path / "big").start()
    big = "x" * 8_000_000

    async def main() -> int:
        pool = aioredis.ConnectionPool(
            connection_class=quick_writes(UnixDomainSocketConnection),
            path=str(proc.socket),
            socket_timeout=1,
        )
        client = aioredis.Redis(connection_pool=pool)
        try:
            await client.set("big", big)
            length = await client.strlen("big")
            os.kill(proc.pid, signal.SIGSTOP)
            # (Python 3.12.0-3.12.8 and 3.13.0-3.13.1 leave writelines without flow
            # control, CPython gh-127655: there no write waits, and the read times out)
            version = sys.version_info[:3]
            unchecked = (3, 12) <= version < (3, 12, 9) or (3, 13) <= version < (3, 13, 2)
            with pytest.raises(rex.TimeoutError, match="Timeout" if unchecked else "writing"):
                await client.set("big-too", big)
            return int(length)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            await client.aclose()

    try:
        assert asyncio.run(main()) == len(big)
    finally:
        proc.stop()


def test_a_connection_reset_while_idle_is_replaced_before_a_call_uses_it(tmp_path: Path):
    """A pooled connection the network reset while it sat idle is closed and made anew
    when a call takes it (nothing was sent on it): the call goes through, with no retry.
    (On Python 3.12 a write to it raised, and it went back to the pool: every call
    failed.)"""
    port = free_port()
    proc = RedisProcess(tmp_path / "rst", port=port).start()
    proxy = ResettingProxy(port)

    async def main() -> list[object]:
        url = f"redis://127.0.0.1:{proxy.port}"
        async with async_manager(url, "rst", retries=0, max_connections=1) as manager:
            await manager.get("idle@example.com")
            proxy.reset_all()
            await asyncio.sleep(0.1)  # (the event loop reads the reset)
            return [await manager.get("idle@example.com") for _ in range(2)]

    try:
        assert asyncio.run(main()) == [None, None]
    finally:
        proxy.close()
        proc.stop()


def test_a_cancelled_call_writes_no_audit_entry_and_ends_at_once(tmp_path: Path, pw_hash: str):
    proc = RedisProcess(tmp_path / "audit").start()
    loaded = load_settings(
        {"redis_url": proc.url, "prefix": "audit", "code_secret": SECRET, "socket_timeout": 3},
        environ={},
    )

    async def main() -> tuple[float, list[dict[str, str]]]:
        manager = AsyncRegistrationManager.from_settings(loaded.settings, audit_as="api@test")
        added = await manager.add("audited@example.com", "A", "T", password_hash=pw_hash)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(manager.verify("audited@example.com", "000000"), 0.2)
            waited = time.monotonic() - started
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert (await manager.verify("audited@example.com", added.code)).ok
        trail = await asyncio.to_thread(manager.sync.audit_trail, 10)
        await manager.aclose()
        return waited, trail

    try:
        waited, trail = asyncio.run(main())
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.stop()
    assert waited < 2.0  # not the 3 s socket timeout of an audit write to a stopped server
    assert [(e["command"], e["outcome"]) for e in trail] == [("verify", "ok"), ("add", "ok")]


def test_an_idle_worker_keeps_no_password_or_code(redis_proc: RedisProcess, prefix: str):
    password = "a password nobody else has"

    async def main() -> tuple[str, list[object]]:
        async with async_manager(redis_proc.url, prefix) as manager:
            added = await manager.add("kept@example.com", "K", "P", password=password)
            workers = bridge._idle.__dict__.get("workers", [])
            held = [
                value
                for worker in workers
                for value in (worker.job, worker.outcome, *worker.gr_frame.f_locals.values())
            ]
            return added.code, held

    code, held = asyncio.run(main())
    text = repr(held)
    assert password not in text
    assert code not in text


def test_aclose_lets_the_calls_under_way_finish_and_leaves_no_connection(
    tmp_path: Path, pw_hash: str
):
    proc = RedisProcess(tmp_path / "aclose").start()  # its own: no other test's clients

    async def main() -> list[object]:
        manager = async_manager(proc.url, "aclose", max_connections=4)
        await manager.get("warm@example.com")
        calls = [
            asyncio.ensure_future(
                manager.add(f"late{i}@example.com", "L", "C", password_hash=pw_hash)
            )
            for i in range(20)
        ]
        await asyncio.sleep(0)
        await manager.aclose()
        return list(await asyncio.gather(*calls, return_exceptions=True))

    try:
        results = asyncio.run(main())
        names = [c.get("name") for c in proc.client().client_list()]
    finally:
        proc.stop()
    assert all(not isinstance(r, BaseException) or isinstance(r, StoreUnavailable) for r in results)
    assert "regctl" not in names


def _closed_while_other_loops_call(manager: AsyncRegistrationManager, loops: int) -> None:
    """``loops`` threads' loops calling until the manager is closed, then ending at once,
    while one more loop closes it."""
    going = threading.Barrier(loops + 1)

    async def caller(tag: int) -> None:
        going.wait(60)
        with contextlib.suppress(StoreUnavailable):  # closed: refused, and it ends
            for n in range(100_000):
                await manager.get(f"busy{tag}-{n}@example.com")

    async def closer() -> None:
        going.wait(60)
        await asyncio.sleep(0.05)  # (while the callers' calls are under way)
        await manager.aclose()

    threads = [threading.Thread(target=asyncio.run, args=(caller(t),)) for t in range(loops)]
    threads.append(threading.Thread(target=asyncio.run, args=(closer(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_aclose_on_one_loop_closes_other_loops_connections_as_they_end(tmp_path: Path):
    """A close scheduled on a loop and cut short by its end (it cancels every task) is
    done again as the loop closes its keeper: no connection is left open."""
    proc = RedisProcess(tmp_path / "others").start()
    try:
        for _ in range(5):
            _closed_while_other_loops_call(async_manager(proc.url, "others", max_connections=2), 3)
            names = [c.get("name") for c in proc.client().client_list()]
            assert "regctl" not in names
    finally:
        proc.stop()


def test_a_loop_that_ends_takes_its_connections_with_it(tmp_path: Path):
    """A sync caller running ``asyncio.run`` per request: each run's twin is closed when
    its loop shuts down, so connections and loops do not pile up."""
    proc = RedisProcess(tmp_path / "loops").start()
    try:
        manager = async_manager(proc.url, "loops")
        for _ in range(12):
            assert asyncio.run(manager.get("nobody@example.com")) is None
        names = [c.get("name") for c in proc.client().client_list()]
        kept = len(manager._loops)
        asyncio.run(manager.aclose())
    finally:
        proc.stop()
    assert names.count("regctl") <= 1  # the sync manager's own, if any
    assert kept <= 1  # the last loop's, ended (dropped when the next loop calls)


def test_hashing_a_password_holds_no_connection(
    redis_proc: RedisProcess, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """One connection, 8 sign-ups with clear passwords at once, each hash taking half a
    second (on threads): the hashes do not queue for the connection, only Redis does. A
    connection held while hashing would keep the last sign-up waiting 3.5 s, past the
    pool's 1.5 s; Redis alone serves 8 calls well within it on a slow machine. (With
    real hashes of 30 ms and a 0.2 s wait, a loaded machine failed it.)"""
    real_hash = security.hash_password

    def slow_hash(password: str) -> str:
        time.sleep(0.5)
        return real_hash(password)

    monkeypatch.setattr(security, "hash_password", slow_hash)

    async def main() -> list[object]:
        manager = async_manager(redis_proc.url, prefix, max_connections=1, pool_timeout=1.5)
        async with manager:
            return list(
                await asyncio.gather(
                    *(
                        manager.add(f"h{i}@example.com", "H", "P", password="a long password")
                        for i in range(8)
                    ),
                    return_exceptions=True,
                )
            )

    assert [r for r in asyncio.run(main()) if isinstance(r, BaseException)] == []


def test_a_missing_password_fails_at_once_not_at_the_deadline(tmp_path: Path):
    proc = RedisProcess(tmp_path / "nopw", password="the-password").start()

    async def main() -> float:
        async with async_manager(proc.url, "nopw", socket_timeout=5) as manager:
            started = time.monotonic()
            with pytest.raises(PermissionDenied, match="requires a password"):
                await manager.get("a@example.com")
            return time.monotonic() - started

    try:
        waited = asyncio.run(main())
    finally:
        proc.stop()
    assert waited < 2.5  # not the 5 s budget spent retrying a refusal


def test_a_cancelled_aclose_still_closes_the_connections(tmp_path: Path):
    """aclose cancelled while a call is under way (a shutdown with a timeout): the
    connections are closed anyway, and the loop takes no new call."""
    proc = RedisProcess(tmp_path / "cancelclose").start()

    async def main() -> None:
        manager = async_manager(proc.url, "cc", max_connections=2)
        await manager.get("warm@example.com")
        proc.client().execute_command("CLIENT", "PAUSE", 1000, "ALL")
        under_way = asyncio.ensure_future(manager.get("paused@example.com"))
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(manager.aclose(), 0.1)
        await asyncio.gather(under_way, return_exceptions=True)
        with pytest.raises(StoreUnavailable):
            await manager.get("after@example.com")

    try:
        asyncio.run(main())
        names = [(c.get("name"), c.get("cmd"), c.get("age")) for c in proc.client().client_list()]
    finally:
        proc.stop()
    assert [n for n in names if n[0] == "regctl"] == [], names


def test_the_connection_gate_serves_waiters_in_turn_and_loses_no_place():
    """The gate before the async client's pool: places taken without an await while
    free, waiters served first come first, a waiter given up (timed out, cancelled after
    it was handed a place) neither keeps a place nor skips one."""
    from regctl.aio import _Pool
    from regctl.errors import PoolExhausted

    async def main() -> None:
        gate = _Pool(1, None)
        assert gate.take()
        assert not gate.take()
        served: list[str] = []

        async def call(name: str) -> None:
            await gate.enter()
            served.append(name)
            gate.leave()

        first = asyncio.create_task(call("first"))
        given_up = asyncio.create_task(call("cancelled"))
        second = asyncio.create_task(call("second"))
        await asyncio.sleep(0)  # all three wait in line
        given_up.cancel()
        gate.leave()  # the place goes to the first in line
        await asyncio.gather(first, second)
        assert served == ["first", "second"]
        with pytest.raises(asyncio.CancelledError):
            await given_up

        for waits in (None, 5.0):  # (a bounded wait once lost this cancellation)
            gate = _Pool(1, waits)
            assert gate.take()
            handed = asyncio.create_task(gate.enter())
            await asyncio.sleep(0)
            gate.leave()  # the place is handed to a waiter that is cancelled before it runs
            handed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await handed
            assert gate.take()  # ... which passed it on
            assert not gate.take()

        hurried = _Pool(1, 0.01)
        assert hurried.take()
        with pytest.raises(PoolExhausted):
            await hurried.enter()

        async def swallows_a_cancel_then_waits() -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # (and no uncancel())
                await asyncio.sleep(0)
            with pytest.raises(PoolExhausted):  # a timeout still, not a cancellation
                await hurried.enter()

        await asyncio.create_task(swallows_a_cancel_then_waits())
        hurried.leave()
        assert hurried.take()
        assert not hurried.waiting

    asyncio.run(main())


def test_aclose_scheduled_on_a_loop_that_ends_first_leaves_no_coroutine(tmp_path: Path):
    """Another loop's close is scheduled from ``aclose``; when that loop stops and is
    closed before it runs the callback, nothing was made that is never awaited (a
    coroutine made here and dropped there warned "never awaited" as it was collected).
    (A server of its own: the closed loop's connections stay open until collected.)"""
    proc = RedisProcess(tmp_path / "unshut").start()
    manager = async_manager(proc.url, "unshut")
    loop = asyncio.new_event_loop()
    joined, scheduled = threading.Event(), threading.Event()

    async def first_call() -> None:
        await manager.get("first@example.com")

    def hold_then_stop() -> None:  # (a callback: the close lands in the next batch)
        joined.set()
        assert scheduled.wait(60)
        loop.stop()

    def run() -> None:
        loop.run_until_complete(first_call())
        loop.call_soon(hold_then_stop)
        loop.run_forever()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert joined.wait(60)
        asyncio.run(manager.aclose())
    finally:
        scheduled.set()
        thread.join(60)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop.close()  # (without running the scheduled close, nor shutting down)
            gc.collect()
    finally:
        proc.stop()
    # (the loop's connections, closed with it unshut, may warn as unclosed: not this)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_the_async_pool_hands_a_given_back_connection_to_the_call_waiting_for_it(
    redis_proc: RedisProcess,
):
    """The async twin's pool gives out and takes back connections without its lock
    while no one waits; a call that waits for one (the pool full) is woken when one
    is given back, and a connection given back with a reply unread is made afresh."""
    from redis.asyncio.client import Redis as AsyncRedis

    from regctl.connection import async_twin, connect

    loaded = load_settings(
        {"redis_url": redis_proc.url, "max_connections": 1, "pool_timeout": None}, environ={}
    )

    async def stray(pool: Any, conn: Any) -> None:
        """``conn`` given back with a reply unread, once it is there to be found."""
        await conn.send_command("ECHO", "a stray reply")
        for _ in range(3000):
            if await conn.can_read():
                break
            await asyncio.sleep(0.01)
        await pool.release(conn)

    async def main() -> list[object]:
        client = async_twin(connect(redis_proc.url, loaded.settings))
        pool = client.connection_pool
        held = await pool.get_connection()
        waiter = asyncio.ensure_future(AsyncRedis(connection_pool=pool).echo("woken"))
        for _ in range(3000):  # (until it waits: the pool's one connection is held)
            if pool._condition._waiters:
                break
            await asyncio.sleep(0.01)
        await stray(pool, held)
        replies: list[object] = [await asyncio.wait_for(waiter, 30)]
        held = await pool.get_connection()  # (no one waits now: taken without the lock)
        await stray(pool, held)
        replies.append(await AsyncRedis(connection_pool=pool).echo("next"))
        await pool.disconnect()
        return replies

    assert asyncio.run(main()) == ["woken", "next"]
