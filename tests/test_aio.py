"""The async manager on real servers: exactly once under gather, and an event loop that
never waits on Redis (the contract suite also runs on it: tests/awaited.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from regctl import AsyncRegistrationManager, StoreUnavailable, VerifyOutcome
from regctl.settings import load_settings
from tests.conftest import SECRET
from tests.servers import RedisProcess


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
