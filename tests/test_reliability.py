"""Faults on real redis-server processes: crashes, lost replies, stalls, full memory, pools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from regctl import (
    AsyncRegistrationManager,
    Filter,
    InvalidInput,
    NotReplicated,
    NotServing,
    Policy,
    PoolExhausted,
    RedisStore,
    RegistrationManager,
    StoreFull,
    StoreTimeout,
    StoreUnavailable,
    Thresholds,
    VerifyOutcome,
)
from regctl.keys import Keyspace, digest
from regctl.settings import load_settings
from regctl.store import NewRegistration
from regctl.target import open_target
from tests.conftest import (
    REGCTL,
    SECRET,
    Cli,
    Points,
    cli_env,
    redis_store,
    started,
    subprocess_env,
)
from tests.servers import RedisProcess, server_version, zset_members


def manager_for(url: str, prefix: str = "rel", **settings: object) -> RegistrationManager:
    loaded = load_settings(
        {"redis_url": url, "prefix": prefix, "code_secret": SECRET, **settings}, environ={}
    )
    return RegistrationManager.from_settings(loaded.settings)


def bulk_load(store: RedisStore, n: int, pw_hash: str, domain: str = "bulk.example") -> None:
    """n registrations through the real add script, pipelined (no validation: set-up only)."""
    for start in range(0, n, 2000):
        batch = [
            (NewRegistration(f"u{i}@{domain}", "U", "S", pw_hash, "0" * 64), f"t{i}")
            for i in range(start, min(n, start + 2000))
        ]
        store.add_many(batch, Policy())


def consistent(store: RedisStore) -> tuple[int, int]:
    """(records, index entries), asserting each record has its entry and vice versa."""
    ks = store.keyspace
    client = store.client
    records = entries = 0
    for bucket in range(ks.buckets):
        members = client.zrange(ks.index(bucket), 0, -1)
        entries += len(members)
        for member in members:
            assert client.exists(ks.record_base(bucket) + member), "index entry without record"
    for key in client.scan_iter(ks.record_pattern(), count=1000):
        records += 1
        d = key.rsplit(":", 1)[1]
        assert client.zscore(ks.index(ks.bucket_of(d)), d) is not None, "record without entry"
    return records, entries


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path / "aof", aof=True).start()
    yield proc
    proc.stop()


# --- crashes and restarts -------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_a_purge_leaves_nothing_half_deleted(aof_redis: RedisProcess, pw_hash):
    store = RedisStore(aof_redis.client(), prefix="crash")
    bulk_load(store, 100_000, pw_hash)
    env = {**os.environ, **cli_env(aof_redis.url, "crash"), "REGCTL_RETRIES": "0"}
    purge = started(env, "purge", "--older-than", "0s", "--yes", "--batch", "200")
    probe = aof_redis.client()
    deadline = time.monotonic() + 60
    while sum(1 for _ in probe.scan_iter(Keyspace("crash").record_pattern(), count=5000)) > 90_000:
        assert time.monotonic() < deadline
        assert purge.poll() is None
        time.sleep(0.05)
    aof_redis.kill()
    _out, err = purge.communicate(timeout=60)
    assert purge.returncode == 69
    assert err.startswith("Error: Redis is unavailable")
    aof_redis.start()
    store = RedisStore(aof_redis.client(), prefix="crash")
    records, entries = consistent(store)
    assert 0 < records == entries < 100_000
    rerun = subprocess.run(
        [REGCTL, "purge", "--older-than", "0s", "--yes", "--wait", "60"],  # the dead run's lease
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert consistent(store) == (0, 0)


def test_acknowledged_records_survive_a_restart_with_their_ttl(aof_redis: RedisProcess, pw_hash):
    manager = manager_for(aof_redis.url)
    for i in range(20):
        manager.add(f"keep{i}@example.com", "K", "P", password_hash=pw_hash)
    before = {r.email: r.expires_at for r in manager.list()}
    aof_redis.kill()
    aof_redis.start()
    after = {r.email: r for r in manager.list()}
    assert {e: r.expires_at for e, r in after.items()} == before
    assert all(0 < r.ttl_ms <= 86_400_000 for r in after.values())
    manager.close()


def test_every_operation_works_after_a_restart(aof_redis: RedisProcess, pw_hash):
    manager = manager_for(aof_redis.url, resend_cooldown=0)
    added = manager.add("r@example.com", "R", "S", password_hash=pw_hash)
    aof_redis.stop()
    aof_redis.start()  # empty script cache, dropped connections
    code = manager.resend("r@example.com").code
    assert manager.verify("r@example.com", code).ok
    assert added.code  # the old one was replaced
    assert manager.purge().total == 0
    manager.close()


# --- a lost reply -----------------------------------------------------------------------


class ReplyDropper:
    """A loopback TCP proxy to a unix-socket Redis that, once armed with a marker, lets
    the command through but drops its reply and cuts the connection."""

    def __init__(self, target: Path):
        self.target = target
        self.marker: bytes | None = None
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self.target))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream, contextlib.suppress(OSError):  # a side closed: this pump ends
            while not self.stopped.is_set():
                data = client.recv(65536)
                if not data:
                    return
                upstream.sendall(data)
                reply = upstream.recv(65536)
                if self.marker is not None and self.marker in data:
                    self.marker = None
                    self.dropped += 1
                    return  # the command ran; its reply is lost with the connection
                client.sendall(reply)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def dropper(redis_proc: RedisProcess) -> Iterator[tuple[ReplyDropper, RegistrationManager]]:
    """A manager whose connection runs through a reply-dropping proxy."""
    proxy = ReplyDropper(redis_proc.socket)
    manager = manager_for(f"redis://127.0.0.1:{proxy.port}", prefix="lost", resend_cooldown=0)
    yield proxy, manager
    manager.close()
    proxy.close()


def _marker(manager: RegistrationManager, operation: str, email: str, token: str) -> bytes:
    """The bytes that only the call (operation, email, token) sends: its marker key."""
    store = manager.store
    assert isinstance(store, RedisStore)
    return store.keyspace.call_marker(operation, digest(email), token).encode()


def test_a_lost_verify_reply_still_verifies_exactly_once(dropper, pw_hash):
    proxy, manager = dropper
    code = manager.add("lost@example.com", "L", "R", password_hash=pw_hash).code
    proxy.marker = _marker(manager, "verify", "lost@example.com", "call-lost-reply")
    result = manager.verify("lost@example.com", code, token="call-lost-reply")
    assert proxy.dropped == 1
    assert result.outcome is VerifyOutcome.VERIFIED
    assert result.registration is not None
    assert result.registration.email == "lost@example.com"
    again = manager.verify("lost@example.com", code)
    assert again.outcome is VerifyOutcome.NOT_FOUND


def test_a_lost_async_verify_reply_still_verifies_exactly_once(dropper, pw_hash):
    """The async manager's scripts, sent on its own connections, are tried again after
    a lost reply as the sync manager's are (its loop's end closes its connections)."""
    proxy, manager = dropper
    code = manager.add("alost@example.com", "L", "R", password_hash=pw_hash).code
    proxy.marker = _marker(manager, "verify", "alost@example.com", "async-lost-reply")
    on_loop = AsyncRegistrationManager(manager)
    result = asyncio.run(on_loop.verify("alost@example.com", code, token="async-lost-reply"))
    assert proxy.dropped == 1
    assert result.outcome is VerifyOutcome.VERIFIED
    assert manager.verify("alost@example.com", code).outcome is VerifyOutcome.NOT_FOUND


def test_a_lost_reply_to_a_wrong_code_counts_one_attempt(dropper, pw_hash):
    proxy, manager = dropper
    code = manager.add("wrong@example.com", "W", "R", password_hash=pw_hash).code
    bad = f"{(int(code) + 1) % 10**6:06d}"
    proxy.marker = _marker(manager, "verify", "wrong@example.com", "wrong-call")
    result = manager.verify("wrong@example.com", bad, token="wrong-call")
    assert proxy.dropped == 1
    assert (result.outcome, result.attempts_left) == (VerifyOutcome.INVALID_CODE, 4)
    reg = manager.get("wrong@example.com")
    assert reg is not None
    assert reg.attempts == 1


def test_a_lost_add_or_resend_reply_hands_back_a_code_that_verifies(dropper, pw_hash):
    proxy, manager = dropper
    proxy.marker = b"add-call-lost"  # the add script carries its token
    added = manager.add("code@example.com", "C", "D", password_hash=pw_hash, token="add-call-lost")
    assert proxy.dropped == 1
    proxy.marker = b"resend-call-lost"
    resent = manager.resend("code@example.com", token="resend-call-lost")
    assert proxy.dropped == 2
    assert resent.registration.resend_count == 1
    assert manager.verify("code@example.com", added.code).outcome is VerifyOutcome.INVALID_CODE
    assert manager.verify("code@example.com", resent.code).outcome is VerifyOutcome.VERIFIED


def test_a_lost_delete_reply_reports_the_deletion(dropper, pw_hash):
    proxy, manager = dropper
    manager.add("gone@example.com", "G", "O", password_hash=pw_hash)
    proxy.marker = _marker(manager, "delete", "gone@example.com", "delete-call")
    assert manager.delete("gone@example.com", token="delete-call") is True
    assert proxy.dropped == 1
    assert manager.get("gone@example.com") is None


# --- stalls, pools, memory -----------------------------------------------------------------


@pytest.fixture
def debug_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    extra = ["--enable-debug-command", "yes"] if server_version() >= (7,) else []
    proc = RedisProcess(tmp_path / "dbg", extra=extra).start()
    yield proc
    proc.stop()


@pytest.mark.slow
def test_a_stalled_server_is_given_up_on_while_it_still_sleeps(cli: Cli, debug_redis: RedisProcess):
    sent = threading.Event()

    def stall() -> None:  # a bare socket: a client library would time out and resend it
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(debug_redis.socket))
            raw.sendall(b"DEBUG SLEEP 4\r\n")
            sent.set()  # before the add connects: the server sleeps before answering it
            raw.recv(100)

    sleeper = threading.Thread(target=stall)
    sleeper.start()
    assert sent.wait(60)
    ran = cli(
        "add",
        "stall@example.com",
        "-f",
        "S",
        "-l",
        "T",
        "--password-stdin",
        input="stall-password\n",
        REGCTL_REDIS_URL=debug_redis.url,
        REGCTL_SOCKET_TIMEOUT="0.5",
        REGCTL_RETRIES="1",
    )
    assert sleeper.is_alive()  # gave up before the stall ended
    assert ran.exit_code == 69
    assert ran.stderr.startswith("Error: Redis timed out")
    # No audit write after it (as long again): said, not tried.
    assert ran.stderr.endswith("Warning: the audit entry was not written: Redis timed out\n")
    sleeper.join()
    # The queued script may run once the server wakes, but only whole: record + index.
    store = RedisStore(debug_redis.client(), prefix=cli.env["REGCTL_PREFIX"])
    records, entries = consistent(store)
    assert records == entries <= 1


@pytest.mark.parametrize(
    "failure", [StoreTimeout, PoolExhausted, StoreUnavailable, NotServing, StoreFull]
)
def test_a_call_the_store_could_not_serve_sends_no_audit_entry(failure: type[StoreUnavailable]):
    """A backend's audited call that the store could not serve (stalled, pool busy,
    down, full): the entry would wait as long again (a call has one deadline), so none
    is sent; a call it served is audited, refused or not, and so is a change made that
    too few replicas acknowledged."""
    from regctl.store import MemoryStore

    class Unserved(MemoryStore):
        def unlock(self, identity: str) -> bool:
            if identity.startswith("unserved"):
                raise failure("Redis cannot serve this call now")
            if identity.startswith("unreplicated"):
                raise NotReplicated("made on the primary only")
            return super().unlock(identity)

    store = Unserved()
    manager = RegistrationManager(store, secret=SECRET, audit_as="signup-api")
    with pytest.raises(failure):
        manager.unlock("unserved@example.com")
    with pytest.raises(NotReplicated):
        manager.unlock("unreplicated@example.com")
    assert manager.unlock("served@example.com") is False
    assert [(e["target"], e["outcome"]) for e in store.audit_read(10)] == [
        ("served@example.com", "not_found"),
        ("unreplicated@example.com", "not_replicated"),
    ]


def test_health_answers_within_its_budget_while_redis_is_stopped(tmp_path: Path, pw_hash):
    """A /health endpoint must answer during a stall: CRITICAL within the timeout
    asked for, not after the socket timeout (30 s here); callers meanwhile share
    the one check still waiting, and the store reads healthy again once it wakes."""
    proc = RedisProcess(tmp_path / "hs").start()
    manager = manager_for(proc.url, prefix="hs", socket_timeout=30, connect_timeout=30)
    try:
        manager.add("h@example.com", "H", "S", password_hash=pw_hash)
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        report = manager.health(timeout=0.3)
        assert time.monotonic() - started < 15  # far below the 30 s socket timeout
        assert report.status == "critical"
        data = report.to_dict()
        assert data["redis"]["status"] == "timeout"
        assert data["redis"]["ping"] is False
        assert data["pending_registrations"] == {"total": None, "redis_connected": False}
        for _ in range(5):
            assert manager.health(timeout=0.05).status == "critical"
        waiting = [t for t in threading.enumerate() if t.name == "regctl-health"]
        assert len(waiting) == 1
        strict = Thresholds(latency_warn_ms=0, latency_crit_ms=0)  # graded apart
        assert manager.health(timeout=0.05, thresholds=strict).status == "critical"
        waiting = [t for t in threading.enumerate() if t.name == "regctl-health"]
        assert len(waiting) == 2
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while (report := manager.health(timeout=5)).status != "ok":
        assert time.monotonic() < deadline, report.to_dict()
        time.sleep(0.05)
    assert report.to_dict()["pending_registrations"]["total"] == 1
    latency = manager.health(timeout=5, thresholds=strict).to_dict()["checks"][0]
    assert (latency["name"], latency["status"]) == ("latency", "critical")
    manager.close()
    proc.stop()


def test_ctrl_c_ends_a_listing_at_once_while_redis_is_stopped(tmp_path: Path, pw_hash):
    """Later pages are read by a helper thread; stalled on a stopped server, it must
    not hold the process at exit: Ctrl-C ends the listing, not the socket timeout."""
    proc = RedisProcess(tmp_path / "ci").start()
    try:
        bulk_load(RedisStore(proc.client(), prefix="ci"), 20_000, pw_hash)  # pages ahead
        env = {**subprocess_env(proc.url, "ci"), "REGCTL_SOCKET_TIMEOUT": "30"}
        listing = subprocess.Popen(
            [REGCTL, "list", "-o", "ndjson"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert listing.stdout is not None
        assert listing.stdout.readline()  # it is reading
        os.kill(proc.pid, signal.SIGSTOP)
        last_byte = [time.monotonic()]

        def drain() -> None:  # a reader that keeps up, so the listing waits on Redis only
            assert listing.stdout is not None
            while os.read(listing.stdout.fileno(), 65536):
                last_byte[0] = time.monotonic()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while time.monotonic() - last_byte[0] < 0.5:  # until the output stalls
            assert time.monotonic() < deadline
            time.sleep(0.05)
        listing.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = listing.wait(timeout=60)
        assert time.monotonic() - started < 15  # far below the 30 s socket timeout
        assert code == 130
        assert listing.stderr is not None
        assert "Traceback" not in listing.stderr.read().decode()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.stop()


def test_a_health_timeout_must_be_positive(redis_proc: RedisProcess):
    manager = manager_for(redis_proc.url)
    wrong: list[Any] = [0, -1, float("nan"), float("inf"), 1e10, True, "1", None]
    for bad in wrong:
        with pytest.raises(InvalidInput, match="health timeout"):
            manager.health(timeout=bad)
    manager.close()


@pytest.mark.parametrize("primary_up", [True, False])
def test_health_and_doctor_call_a_store_on_a_replica_critical(
    tmp_path: Path, unused_port: int, primary_up: bool
):
    """A URL that names a replica: every add, resend and verify is refused (READONLY),
    healthy link or not; health said OK (no checks at all), or failed with exit 70."""
    primary = RedisProcess(tmp_path / "primary", port=unused_port) if primary_up else None
    if primary is not None:
        primary.start()
    replica = RedisProcess(
        tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(unused_port)]
    ).start()
    try:
        cli = Cli(cli_env(replica.url, "replica"))
        health = cli("health", "-o", "json")
        assert health.exit_code == 2, health.stdout + health.stderr
        checks = {c["name"]: c for c in json.loads(health.stdout)["checks"]}
        assert checks["role"]["status"] == "critical"
        assert f"a replica of 127.0.0.1:{unused_port}" in checks["role"]["detail"]
        assert "latency" in checks  # (its other checks too)
        nagios = cli("health", "--nagios")
        assert nagios.exit_code == 2
        assert nagios.stdout.startswith("REGCTL CRITICAL")
        doctor = cli("doctor", "-o", "json")
        assert doctor.exit_code == 1, doctor.stdout + doctor.stderr
        assert "store-is-replica" in {f["code"] for f in json.loads(doctor.stdout)["findings"]}
        replica.client().config_set("replica-read-only", "no")  # (it takes writes: lost)
        loose = cli("health", "-o", "json")
        role = {c["name"]: c for c in json.loads(loose.stdout)["checks"]}["role"]
        assert (role["status"], loose.exit_code) == ("critical", 2)
        assert "what it takes, its primary overwrites" in role["detail"]
        replica.client().config_set("replica-read-only", "yes")
        # A write it refuses ran nothing: said so, not "may or may not have happened".
        verify = cli("-o", "json", "verify", "r@example.com", "000000", REGCTL_TIMEOUT="0.3")
        assert verify.exit_code == 69
        refused = json.loads(verify.stdout)
        assert refused["reason"] == "unavailable", refused
        assert "may or may not" not in refused["message"]
    finally:
        replica.stop()
        if primary is not None:
            primary.stop()


@pytest.mark.slow
def test_a_stopped_server_is_given_up_on_after_one_deadline(tmp_path: Path, pw_hash):
    """SIGSTOP: the kernel still accepts connections, nothing answers. One deadline
    bounds each call (with 2 retries, each waiting its 1 s timeout, it took over 3 s)."""
    proc = RedisProcess(tmp_path / "stop").start()
    opened = manager_for(proc.url, prefix="stop", socket_timeout=1, connect_timeout=1)
    fresh = manager_for(proc.url, prefix="stop", socket_timeout=1, connect_timeout=1)
    try:
        opened.add("first@example.com", "F", "T", password_hash=pw_hash)  # a live connection
        os.kill(proc.pid, signal.SIGSTOP)
        for call in (
            fresh.count,  # connects (accepted by the kernel), then waits
            lambda: opened.add("stop@example.com", "S", "T", password_hash=pw_hash),
        ):
            started = time.monotonic()
            with pytest.raises(StoreTimeout) as caught:
                call()
            elapsed = time.monotonic() - started
            assert elapsed < 2.5, elapsed  # one 1 s deadline, not (retries + 1) of them
        assert "the add of stop@example.com may or may not have happened" in caught.value.message
        assert "regctl inspect stop@example.com" in (caught.value.hint or "")
        started = time.monotonic()
        health = Cli(cli_env(proc.url, "stop"))("health")  # its own budget: 2 s by default
        assert time.monotonic() - started < 5  # with the call's defaults it took over 15 s
        assert health.exit_code == 2
        # (the store's own timeout and the probe's budget are both 2 s: either says it)
        said = ("connection\tcritical\tRedis timed out", "Redis gave no answer within 2 s")
        assert any(text in health.stdout for text in said), health.stdout
        # The add the caller gave no token: the error hands over the one it made, and a
        # retry with it is answered as the first try was (it ran once resumed).
        token = caught.value.token
        assert token
        os.kill(proc.pid, signal.SIGCONT)
        retried = fresh.add("stop@example.com", "S", "T", password_hash=pw_hash, token=token)
        assert fresh.verify("stop@example.com", retried.code).ok
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        opened.close()
        fresh.close()
        proc.stop()


@pytest.mark.parametrize("api", ["sync", "async"])
def test_calls_waiting_for_a_stalled_servers_connections_keep_their_deadline(
    tmp_path: Path, api: str
):
    """Waiting for a pooled connection is part of a call's one deadline: 4 calls on
    one connection to a stopped server each end within about their 1.5 s (each waited
    for the one before it to give the connection back, then its own 1.5 s: up to 6 s)."""
    from tests.awaited import Awaited

    proc = RedisProcess(tmp_path / "wait").start()
    manager = manager_for(
        proc.url, prefix="wait", timeout=1.5, socket_timeout=1.5, max_connections=1, pool_timeout=60
    )
    caller = manager if api == "sync" else cast(RegistrationManager, Awaited(manager))
    took: list[tuple[float, str]] = []

    def call() -> None:
        started = time.monotonic()
        with contextlib.suppress(StoreTimeout, PoolExhausted):
            caller.get("waiting@example.com")
        took.append((time.monotonic() - started, "done"))

    try:
        assert caller.get("waiting@example.com") is None  # (its one connection is open)
        os.kill(proc.pid, signal.SIGSTOP)
        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(took) == 4
        assert max(seconds for seconds, _ in took) < 4.0, took  # (one deadline each)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        manager.close()
        proc.stop()


def test_a_small_pool_under_200_concurrent_operations_never_overflows(
    redis_proc: RedisProcess, pw_hash
):
    manager = manager_for(redis_proc.url, prefix="pool", max_connections=5, pool_timeout=5)
    manager.add("pool@example.com", "P", "L", password_hash=pw_hash)

    def op(_: int) -> str:
        try:
            manager.get("pool@example.com")
        except PoolExhausted:
            return "pool-timeout"
        return "ok"

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(op, range(200)))
    assert set(results) <= {"ok", "pool-timeout"}
    assert results.count("ok") > 0
    clients = [c for c in redis_proc.client().client_list() if c.get("name") == "regctl"]
    assert len(clients) <= 5
    manager.close()


def test_an_exhausted_pool_fails_with_a_pool_timeout(redis_proc: RedisProcess):
    manager = manager_for(redis_proc.url, prefix="pool2", max_connections=1, pool_timeout=0.2)
    store = redis_store(manager)
    held = store.client.connection_pool.get_connection()
    try:
        with pytest.raises(PoolExhausted):
            manager.count()
    finally:
        store.client.connection_pool.release(held)
    assert manager.count() == 0
    manager.close()


def test_closing_a_pools_free_connections_never_closes_one_taken_meanwhile(
    redis_proc: RedisProcess,
):
    """A Cluster client closes every node pool's free connections when it reloads the
    slot map; one another thread takes meanwhile must not be closed under its command.
    The first close is held until the other thread has sent its command (or, as it
    must, could not take a connection while the closing went on)."""
    manager = manager_for(redis_proc.url, prefix="pool3", max_connections=2)
    pool = redis_store(manager).client.connection_pool
    free = [pool.get_connection() for _ in range(2)]
    for conn in free:
        pool.release(conn)
    closing, taken = threading.Event(), threading.Event()

    def held_close(close: Any) -> Any:
        def disconnect(*args: Any, **kwargs: Any) -> Any:
            if not closing.is_set():
                closing.set()
                taken.wait(30)
            return close(*args, **kwargs)

        return disconnect

    for conn in free:
        conn.disconnect = held_close(conn.disconnect)
    reloader = threading.Thread(target=pool.disconnect_free_connections)
    reloader.start()
    assert closing.wait(30)
    replies: list[object] = []

    def command() -> None:
        conn = pool.get_connection()
        try:
            conn.send_command("BLPOP", "pool3:nothing", "0.5")
            taken.set()
            replies.append(conn.read_response())
        except redis.RedisError as exc:
            replies.append(exc)
        finally:
            pool.release(conn)

    user = threading.Thread(target=command)
    user.start()
    user.join(0.5)  # (held out by the closing: then let the closing end)
    taken.set()
    for thread in (reloader, user):
        thread.join(30)
    assert replies == [None]  # BLPOP's timeout, read whole
    manager.close()


def test_a_pooled_connection_left_with_a_reply_unread_is_not_handed_out_as_it_is(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """A connection given back with a reply on its way (or closed by the server while
    idle) is made afresh before the next call uses it: that call reads its own reply."""
    manager = manager_for(redis_proc.url, prefix=prefix, max_connections=1)
    manager.add("unread@example.com", "U", "R", password_hash=pw_hash)
    pool = redis_store(manager).client.connection_pool
    conn = pool.get_connection()
    conn.send_command("ECHO", "a stray reply")
    pool.release(conn)
    assert conn.can_read(timeout=30)
    assert getattr(manager.get("unread@example.com"), "first_name", None) == "U"
    redis_proc.client().client_kill_filter(_type="normal", skipme=True)
    assert getattr(manager.get("unread@example.com"), "first_name", None) == "U"
    manager.close()


def test_a_forked_child_makes_connections_of_its_own(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """After a fork (a pre-forking web server's workers), the child never shares the
    parent's sockets: its calls open connections of its own."""
    manager = manager_for(redis_proc.url, prefix=prefix)
    manager.add("forked@example.com", "F", "K", password_hash=pw_hash)
    pool = redis_store(manager).client.connection_pool
    child = os.fork()
    if child == 0:  # (the child: its verdict is its exit status)
        ok = False
        with contextlib.suppress(BaseException):
            ok = manager.get("forked@example.com") is not None and all(
                conn.pid == os.getpid() for conn in pool._connections
            )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert manager.get("forked@example.com") is not None  # (the parent's own, untouched)
    manager.close()


def test_with_redis_py_telemetry_on_the_pools_connection_counts_stay_balanced(
    tmp_path: Path, telemetry: Callable[..., Points]
):
    """regctl's pool skips redis-py's per-checkout metrics while they are off, and
    records them while they are on: the count of connections in use goes back to where
    it was, for connections taken before they were switched on, and for calls that
    fail to connect (the server down)."""
    from redis.observability.config import MetricGroup

    proc = RedisProcess(tmp_path / "counted").start()
    manager = manager_for(proc.url, prefix="counted", retries=0)
    pool = redis_store(manager).client.connection_pool
    taken = pool.get_connection()  # (taken while nothing is counted)
    manager.get("before@example.com")  # (another, given back uncounted: reused below)
    total = telemetry(MetricGroup.CONNECTION_BASIC)

    def in_use() -> float:
        return total("db.client.connection.count", "db.client.connection.state", "used")

    before = in_use()
    try:
        for n in range(3):
            manager.get(f"counted{n}@example.com")
        pool.release(taken)
        assert in_use() == before
        proc.stop()
        for n in range(3):
            with pytest.raises(StoreUnavailable):
                manager.get(f"down{n}@example.com")
    finally:
        manager.close()
        proc.stop()
    assert in_use() == before


def test_a_full_server_refuses_add_cleanly(tmp_path: Path, pw_hash):
    proc = RedisProcess(
        tmp_path / "full", extra=["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]
    ).start()
    try:
        manager = manager_for(proc.url, prefix="full")
        failed = None
        for i in range(100_000):
            try:
                manager.add(f"f{i}@example.com", "F", "L", password_hash=pw_hash)
            except StoreFull as exc:
                failed = (f"f{i}@example.com", exc)
                break
        assert failed is not None
        email, error = failed
        assert error.exit_code == 69
        assert "out of memory" in error.message
        assert manager.get(email) is None
        records, entries = consistent(redis_store(manager))
        assert records == entries == i
        manager.close()
    finally:
        proc.stop()


def test_a_full_server_is_still_operable(cli: Cli, tmp_path: Path):
    """At maxmemory with noeviction: reads work, nothing writes just to start, delete and
    purge free memory, and verify answers or refuses without counting."""
    proc = RedisProcess(tmp_path / "oom", extra=["--maxmemory-policy", "noeviction"]).start()
    try:
        env = {"REGCTL_REDIS_URL": proc.url}
        added = cli(
            "-o",
            "json",
            "add",
            "full@example.com",
            "-f",
            "F",
            "-l",
            "U",
            "--password-stdin",
            "--show-code",
            input="a long enough pw\n",
            **env,
        )
        code = json.loads(added.stdout)["code"]
        for i in range(3):
            cli(
                "add",
                f"other{i}@example.com",
                "-f",
                "O",
                "-l",
                "T",
                "--password-stdin",
                input="a long enough pw\n",
                **env,
            )
        client = proc.client()
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 65_536)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("probe", "x")  # the server is full
        for command in (
            ["list"],
            ["inspect", "full@example.com"],
            ["stats"],
            ["export"],
            ["audit"],
            ["-o", "json", "config"],
        ):
            ran = cli(*command, **env)
            assert ran.exit_code == 0, (command, ran.stderr)
        health = cli("health", **env)
        assert health.exit_code == 2
        assert "memory\tcritical" in health.stdout
        wrong = cli("verify", "full@example.com", f"{(int(code) + 1) % 10**6:06d}", **env)
        assert wrong.exit_code in (1, 69)
        shown = json.loads(cli("inspect", "full@example.com", "-o", "json", **env).stdout)
        assert shown["attempts"] == (1 if wrong.exit_code == 1 else 0)
        if wrong.exit_code == 69:
            assert "out of memory" in wrong.stderr
        right = cli("verify", "full@example.com", code, **env)
        assert right.exit_code in (0, 69)
        still = cli("inspect", "full@example.com", **env).exit_code
        assert still == (3 if right.exit_code == 0 else 0)  # consumed exactly when it said so
        assert cli("delete", "other0@example.com", **env).exit_code == 0
        assert cli("purge", **env).exit_code == 0
        assert cli("purge", "--domain", "example.com", "--yes", **env).exit_code == 0
        assert cli("list", "-o", "name", **env).stdout == ""  # the filtered purge took all
        client.close()
    finally:
        proc.stop()


def test_a_bulk_add_or_import_on_a_full_server_loses_no_result(tmp_path: Path, pw_hash):
    """Rows the server took are reported as added, the rest as refused: no record is
    stored with its code lost, and no import writes past maxmemory."""
    proc = RedisProcess(tmp_path / "bulk-oom", extra=["--maxmemory-policy", "noeviction"])
    proc.start()
    try:
        manager = manager_for(proc.url, prefix="boom")
        manager.add("warm@example.com", "W", "M", password_hash=pw_hash)
        other = manager_for(proc.url, prefix="boom2")  # its layout recorded before the squeeze
        other.add("warm@example.com", "W", "M", password_hash=pw_hash)
        client = proc.client()
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 150_000)
        rows = [
            {
                "email": f"bulk{i}@example.com",
                "first_name": "A" * 50,
                "last_name": "B" * 50,
                "password_hash": pw_hash,
            }
            for i in range(500)
        ]
        results = list(manager.add_many(rows))
        added = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, StoreFull)]
        assert len(added) + len(refused) == 500
        assert added
        assert refused
        assert manager.count() == 1 + len(added)
        client.config_set("maxmemory", 0)
        for result in added[:20]:  # every code handed back is the stored one
            assert manager.verify(result.registration.email, result.code).ok
        export = [json.dumps(r) for r in manager.export(include_secrets=True)]
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 1024)
        report = other.import_records(export)
        assert report.restored == 0
        assert report.invalid == len(export)  # refused whole, each reported by line
        assert "out of memory" in report.errors[0]
        other.close()
        manager.close()
    finally:
        proc.stop()


def _an_export(proc: RedisProcess, pw_hash: str, n: int) -> list[str]:
    """The lines of a secrets-included export of ``n`` registrations added on ``proc``."""
    source = manager_for(proc.url, prefix="src")
    rows = [{"email": f"i{i}@example.com", "first_name": "A", "last_name": "B"} for i in range(n)]
    assert all(
        not isinstance(r, Exception)
        for r in source.add_many({**row, "password_hash": pw_hash} for row in rows)
    )
    export = [json.dumps(r) for r in source.export(include_secrets=True)]
    source.close()
    return export


def test_an_import_stops_at_the_first_line_the_server_cannot_take_for_now(
    tmp_path: Path, pw_hash: str
):
    """Too few replicas part-way (min-replicas-to-write): the import stops there and
    says how far it got, instead of waiting out a deadline on every line left (and
    calling them invalid)."""
    proc = RedisProcess(tmp_path / "norepl").start()
    try:
        export = _an_export(proc, pw_hash, 60)
        target = manager_for(proc.url, prefix="dst", socket_timeout=0.5)
        client = proc.client()

        def lines() -> Iterator[str]:
            for n, line in enumerate(export):
                if n == 30:
                    client.config_set("min-replicas-to-write", 1)
                yield line

        with pytest.raises(NotServing) as caught:
            target.import_records(lines())
        client.config_set("min-replicas-to-write", 0)
        assert "NOREPLICAS" in caught.value.message
        restored = target.count()
        assert 0 < restored <= 30
        assert f", {restored} lines restored before it: import the file again" in str(
            caught.value.hint
        )
        assert target.import_records(export).restored == 60 - restored  # the rest, later
        target.close()
    finally:
        proc.stop()


def test_an_import_that_loses_its_server_says_how_far_it_got(tmp_path: Path, pw_hash: str):
    """A whole batch's failure (the server gone) carried no count: only the
    connection error, while thousands of lines had been restored."""
    proc = RedisProcess(tmp_path / "gone").start()
    try:
        export = _an_export(proc, pw_hash, 90)
        target = manager_for(proc.url, prefix="dst", socket_timeout=0.5)

        def lines() -> Iterator[str]:
            for n, line in enumerate(export):
                if n == 80:
                    proc.kill()
                yield line

        with pytest.raises(StoreUnavailable) as caught:
            target.import_records(lines())
        target.close()
        said = re.search(
            r"stopped with at least (\d+) lines restored: import the file again",
            str(caught.value.hint),
        )
        assert said is not None, caught.value.hint
        assert 25 <= int(said[1]) <= 75  # (the batches of 25 answered before the kill)
    finally:
        proc.stop()


def test_an_evicting_policy_is_reported_by_health_and_doctor(cli: Cli, tmp_path: Path):
    proc = RedisProcess(
        tmp_path / "ev", extra=["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"]
    ).start()
    try:
        ran = cli("health", REGCTL_REDIS_URL=proc.url)
        assert ran.exit_code == 1
        assert "volatile-lru can evict pending registrations" in ran.stdout
        doctor = cli("doctor", REGCTL_REDIS_URL=proc.url)
        assert "eviction-policy" in doctor.stdout
    finally:
        proc.stop()


def test_a_down_server_gives_a_clear_error(tmp_path: Path, pw_hash):
    proc = RedisProcess(tmp_path / "gone").start()
    manager = manager_for(proc.url, retries=0)
    proc.stop()
    with pytest.raises(StoreUnavailable) as caught:
        manager.add("x@example.com", "X", "Y", password_hash=pw_hash)
    assert "unavailable" in caught.value.message
    with contextlib.suppress(Exception):
        manager.close()


def test_purge_of_a_filter_is_consistent_per_registration(redis_proc: RedisProcess, pw_hash):
    store = RedisStore(redis_proc.client(), prefix="pc")
    bulk_load(store, 3000, pw_hash, "a.example")
    bulk_load(store, 10, pw_hash, "b.example")
    manager = RegistrationManager(store, secret=SECRET)
    assert manager.purge(Filter(domain="a.example"), batch=7).matched == 3000
    assert consistent(store) == (10, 10)
    target = open_target(
        load_settings({"redis_url": redis_proc.url, "prefix": "pc"}, environ={}).settings
    )
    assert target.store.counts().total == 10


def test_script_flushes_in_a_loop_never_surface(redis_proc: RedisProcess, pw_hash):
    """NOSCRIPT (a SCRIPT FLUSH, a failover to a server without the scripts) is reloaded
    and retried everywhere: single calls, pipelines, list pages, purge batches."""
    manager = manager_for(redis_proc.url, prefix="noscript", resend_cooldown=0)
    store = manager.store
    assert isinstance(store, RedisStore)
    bulk_load(store, 3000, pw_hash, domain="ns.example")
    stop = threading.Event()
    flushes = 0

    def flusher() -> None:
        nonlocal flushes
        client = redis_proc.client()
        while not stop.is_set():
            client.script_flush()
            flushes += 1
            # (200 a second: hundreds of calls lose their script. Every 1 ms, on a
            # machine three times slower, one call lost it five times running, as this
            # thread, woken between its load and its run, flushed it each time.)
            time.sleep(0.005)
        client.close()

    def lost() -> int:  # calls the server answered NOSCRIPT (each was run again)
        stats = redis_proc.client().info("errorstats")
        return int(stats.get("errorstat_NOSCRIPT", {}).get("count", 0))

    lost_before = lost()
    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for _ in range(3):
            assert sum(1 for _ in manager.list()) == 3000
            assert manager.count() == 3000
            assert manager.stats().total == 3000
        code = manager.add("ns@example.com", "N", "S", password_hash=pw_hash).code
        resent = manager.resend("ns@example.com").code
        assert manager.verify("ns@example.com", code).outcome is VerifyOutcome.INVALID_CODE
        assert manager.verify("ns@example.com", resent).ok
        report = manager.purge(Filter(domain="ns.example"))
        assert report.matched == 3000
    finally:
        stop.set()
        thread.join()
        manager.close()
    assert flushes > 10
    assert lost() - lost_before > 100


def test_eviction_never_hides_records_silently(cli: Cli, tmp_path: Path, pw_hash):
    """allkeys-lru evicts index entries and records alike; doctor finds the records left
    outside the index, export says it missed them, and purge --reindex brings them back."""
    proc = RedisProcess(tmp_path / "lru", extra=["--maxmemory-policy", "allkeys-lru"]).start()
    env = {"REGCTL_REDIS_URL": proc.url, "REGCTL_PREFIX": "lru"}
    store = RedisStore(proc.client(), prefix="lru")
    try:
        bulk_load(store, 3000, pw_hash, domain="lru.example")
        admin = proc.client()
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) * 3 // 4)
        admin.set("pressure", "x" * 200_000)  # a write under maxmemory: keys get evicted
        admin.config_set("maxmemory", 0)
        ks = store.keyspace
        kept = [  # and surely a few: entries whose record survived
            (b, m)
            for b in range(ks.buckets)
            for m in zset_members(admin, ks.index(b))
            if admin.exists(ks.record_base(b) + m)
        ][:5]
        for bucket, member in kept:
            admin.zrem(ks.index(bucket), member)

        def outside_index() -> int:
            located = [ks.own_record(k) for k in admin.scan_iter(ks.record_pattern())]
            return sum(1 for w in located if w and admin.zscore(ks.index(w[0]), w[1]) is None)

        missing = outside_index()
        assert missing >= 5
        findings = json.loads(cli("doctor", "-o", "json", **env).stdout)["findings"]
        unindexed = [f for f in findings if f["code"] == "records-unindexed"]
        assert unindexed
        assert unindexed[0]["message"].startswith(
            f"missing from the index (evicted?): {missing} records"
        )
        export = cli("export", **env)
        assert f"Warning: not in this export: {missing} records whose index" in export.stderr
        ran = json.loads(cli("-o", "json", "purge", "--reindex", **env).stdout)
        assert ran["reindexed"] == missing
        assert outside_index() == 0
        records = sum(1 for _ in admin.scan_iter(ks.record_pattern()))
        assert len(cli("export", **env).stdout.splitlines()) == records
        after = json.loads(cli("doctor", "-o", "json", **env).stdout)["findings"]
        assert "records-unindexed" not in {f["code"] for f in after}
    finally:
        store.close()
        proc.stop()


def test_a_bulk_add_whose_connection_is_cut_between_batches_adds_each_row_once(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """add_batches sends a batch before it reads the last one's replies; a connection
    cut meanwhile replays what was sent and unanswered (tokens make a replay safe):
    every row is added once, and every code handed back verifies."""
    client = redis_proc.client()
    store = RedisStore(client, prefix=prefix)
    admin = redis_proc.client()

    def batches() -> Iterator[list[tuple[NewRegistration, str]]]:
        for b in range(6):
            if b == 3:  # batches 1 and 2 sent, 2 unread: cut every other connection
                admin.client_kill_filter(_type="normal", skipme=True)
            yield [
                (
                    NewRegistration(f"cut{b}-{i}@example.com", "C", "T", pw_hash, "0" * 64),
                    f"t{b}{i}",
                )
                for i in range(40)
            ]

    results = [r for batch in store.add_batches(batches(), Policy()) for r in batch]
    assert len(results) == 240
    assert all(not isinstance(r, Exception) for r in results), results
    assert store.counts().total == 240


def test_a_bulk_add_stopped_early_leaves_no_reply_on_a_pooled_connection(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """Stopped with a batch sent and its replies not in yet (the server holds it: CLIENT
    PAUSE), the connection is not handed to the next call, which would read them."""
    store = RedisStore(redis_proc.client(max_connections=1), prefix=prefix)  # one connection
    admin = redis_proc.client()

    def batches() -> Iterator[list[tuple[NewRegistration, str]]]:
        for b in range(3):
            if b == 2:  # sent next, and held until the pause ends
                admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
            yield [
                (NewRegistration(f"e{b}-{i}@example.com", "E", "S", pw_hash, "0" * 64), f"e{b}{i}")
                for i in range(30)
            ]

    results = cast(Generator[Any, None, None], store.add_batches(batches(), Policy()))
    next(results)
    next(results)  # the last batch is sent, its replies still to come
    results.close()
    assert store.get("nobody@example.com") is None
    assert store.get("e0-1@example.com") is not None


def test_a_bulk_add_whose_rows_fail_midway_reports_every_row_it_stored(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """The rows' own error comes after the results of the batches already sent: each
    stored registration is reported, with its code."""
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)

    def rows() -> Iterator[dict[str, str]]:
        for i in range(60):
            yield {
                "email": f"mid{i}@example.com",
                "first_name": "M",
                "last_name": "W",
                "password_hash": pw_hash,
            }
        raise ValueError("the rows' source broke")

    reported: list[Any] = []
    with pytest.raises(ValueError, match="source broke"):
        reported.extend(manager.add_many(rows(), batch=25))  # (extend keeps what came)
    # (the batch the error broke off is never sent: 50 of the 60 rows)
    assert len(reported) == manager.count() == 50
    assert manager.verify("mid49@example.com", reported[-1].code).ok
    manager.close()


def test_a_bulk_add_on_one_connection_outlives_a_script_flush_and_invalid_rows(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """A pool of one connection, a batch of invalid rows first, the script cache flushed
    midway: the calls that did not run are run again on the connection given back, not
    left waiting for a second one (PoolExhausted)."""
    client = redis.Redis(
        connection_pool=redis.BlockingConnectionPool(
            path=str(redis_proc.socket),
            connection_class=redis.UnixDomainSocketConnection,
            max_connections=1,
            timeout=0.5,
            decode_responses=True,
        )
    )
    manager = RegistrationManager(RedisStore(client, prefix=prefix), secret=SECRET)
    admin = redis_proc.client()

    def rows() -> Iterator[dict[str, str]]:
        for i in range(200):
            if i == 100:
                admin.script_flush()
            valid = i >= 25
            yield {
                "email": f"f{i}@example.com" if valid else "not an address",
                "first_name": "F",
                "last_name": "S",
                "password_hash": pw_hash,
            }

    results = list(manager.add_many(rows(), batch=25))
    assert [type(r).__name__ for r in results[:25]] == ["InvalidInput"] * 25
    assert [r for r in results[25:] if isinstance(r, Exception)] == []
    assert manager.count() == 175
    manager.close()
