"""regctl against the bare baseline, side by side in one run.

    python benchmarks/run.py            # quick: a laptop minute
    python benchmarks/run.py --full     # 1 000 000-record bulk figures
    python benchmarks/run.py --plot docs/performance.png --json results.json

It starts its own redis-server on a unix socket in a temp dir (no persistence),
and compares each regctl operation with raw redis-py doing the same round trips
(and redis-benchmark for the server's own floor). Every figure is a median or
percentile over many runs on this machine, printed with the ratio to its baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import redis

from regctl import Filter, MemoryStore, Policy, RedisStore, RegistrationManager
from regctl.keys import digest
from regctl.security import hash_password
from regctl.settings import load_settings
from regctl.store import NewRegistration

T = TypeVar("T")

SECRET = "benchmark-secret-0123456789"
HERE = Path(__file__).resolve().parent
RESULTS: dict[str, Any] = {}
# docs/performance.md's tables made by this run, by the name of their markers.
TABLES: dict[str, str] = {}
X = "\u00d7"  # the multiplication sign of a ratio


# --- the server -------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[Path]:
    binary = shutil.which("redis-server")
    if binary is None:
        from regctl.server import find_redis_server

        binary = str(find_redis_server())
    with tempfile.TemporaryDirectory(prefix="rgb") as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
                "--logfile",
                str(Path(tmp) / "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(500):
                with contextlib.suppress(redis.RedisError, FileNotFoundError):
                    if sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping():
                        break
                time.sleep(0.02)
            yield sock
        finally:
            proc.terminate()
            proc.wait(10)


# --- measuring -----------------------------------------------------------------------------


def timings(op: Callable[[int], object], n: int) -> list[float]:
    """Seconds per call of op(i) for i in range(n), after a short warm-up."""
    for i in range(min(200, n)):
        op(-1 - i)
    out = []
    for i in range(n):
        started = time.perf_counter()
        op(i)
        out.append(time.perf_counter() - started)
    return out


def paired(
    ours: Callable[[int], object], base: Callable[[int], object], n: int
) -> tuple[list[float], list[float]]:
    """Both sides timed call by call, interleaved, so a noisy machine hits them alike."""
    for i in range(min(200, n)):
        ours(-1 - i)
        base(-1 - i)
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        first, second = turns(i, ours, base)
        started = time.perf_counter()
        first(i)
        middle = time.perf_counter()
        second(i)
        split(i, (started, middle, time.perf_counter()), a, b)
    return a, b


def turns(i: int, ours: T, base: T) -> tuple[T, T]:
    """Which side goes first in pair ``i``: each in turn, since the second call of a pair
    runs measurably faster (about 7% here, even for two identical calls)."""
    return (ours, base) if i % 2 == 0 else (base, ours)


def split(i: int, marks: tuple[float, float, float], ours: list[float], base: list[float]) -> None:
    """Pair ``i``'s two times (from its start, middle and end) to their sides (``turns``)."""
    started, middle, ended = marks
    first, second = middle - started, ended - middle
    ours.append(first if i % 2 == 0 else second)
    base.append(second if i % 2 == 0 else first)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, samples: tuple[list[float], list[float]]) -> dict[str, float]:
    ours, base = samples
    result = {
        "regctl_p50_ms": pct(ours, 0.5) * 1000,
        "regctl_p99_ms": pct(ours, 0.99) * 1000,
        "baseline_p50_ms": pct(base, 0.5) * 1000,
        "baseline_p99_ms": pct(base, 0.99) * 1000,
    }
    result["ratio_p50"] = result["regctl_p50_ms"] / result["baseline_p50_ms"]
    print(
        f"  {name:<22} {result['regctl_p50_ms']:7.3f} {result['regctl_p99_ms']:7.3f}   "
        f"{result['baseline_p50_ms']:7.3f} {result['baseline_p99_ms']:7.3f}   "
        f"{result['ratio_p50']:5.2f}x"
    )
    return result


# --- per operation --------------------------------------------------------------------------


def regctl_client(sock: Path) -> redis.Redis:
    """The client regctl makes for ``unix://<sock>`` with its default settings: what
    ``from_settings`` gives a backend (its pool, timeouts and retry budget)."""
    from regctl.connection import connect

    url = f"unix://{sock}"
    return cast(redis.Redis, connect(url, load_settings({"redis_url": url}, environ={}).settings))


def raw_settings() -> dict[str, Any]:
    """redis-py's client options as regctl sets them by default (timeouts, health
    checks), for the raw side: the same client, on redis-py's own pool and dispatch."""
    settings = load_settings({}, environ={}).settings
    return {
        "decode_responses": True,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "health_check_interval": settings.health_check_interval,
    }


def per_operation(sock: Path, n: int, pw_hash: str) -> None:
    """Each regctl call against raw redis-py sending the same script, keys and arguments
    (EVALSHA with everything precomputed): the difference is regctl's own work."""
    print(f"\nper operation, one thread, {n} calls each (ms)")
    print(f"  {'operation':<22} {'p50':>7} {'p99':>7}   {'raw p50':>7} {'raw p99':>7}   ratio")
    client = regctl_client(sock)
    raw = redis.Redis(unix_socket_path=str(sock), **raw_settings())
    policy = Policy(resend_cooldown_ms=0, max_resends=10**9)
    store = RedisStore(client, prefix="bench")
    manager = RegistrationManager(store, secret=SECRET, policy=policy)
    # One real call first: it records the layout and settles which script form the
    # server takes (Redis 6 knows no script flags), so raw sends exactly the same.
    manager.add("warmup@bench.example", "W", "U", password_hash=pw_hash)
    ks = store.keyspace
    sha = {name: store.scripts.script(name).sha for name in ("add", "get", "resend", "verify")}
    for name in sha:
        raw.script_load(store.scripts.script(name).script)
    codes: dict[int, str] = {}
    out: dict[str, Any] = {}
    keep = policy.funnel_keep_ms  # funnel counters are kept this long
    day = int(time.time()) // 86_400  # the counting scripts declare this day's counters

    def evalsha(name: str, keys: tuple[str, ...], *args: str | int) -> object:
        return raw.evalsha(sha[name], len(keys), *keys, *args)

    def funnel(d: str) -> tuple[str, str, str]:
        return ks.funnel_around(ks.bucket_of(d), day)

    def raw_keys(i: int) -> tuple[str, tuple[str, str]]:
        d = digest(f"r{abs(i) % n}@bench.example")
        return d, ks.keys_for(d)

    def add(i: int) -> None:
        codes[i] = manager.add(f"a{i}@bench.example", "B", "E", password_hash=pw_hash).code

    def raw_add(i: int) -> None:
        d = digest(f"r{i}@bench.example")
        evalsha(
            "add",
            (*ks.keys_for(d), ks.gone(d), *funnel(d)),
            d,
            f"r{i}@bench.example",
            "B",
            "E",
            pw_hash,
            "0" * 64,
            86_400_000,
            900_000,
            1,
            f"t{i}",
            3_600_000,
            keep,
            day,
        )

    out["add"] = row("add (hash excluded)", paired(add, raw_add, n))
    out["get"] = row(
        "get",
        paired(
            lambda i: manager.get(f"a{abs(i) % n}@bench.example"),
            lambda i: evalsha("get", (raw_keys(i)[1][0],)),
            n,
        ),
    )

    def resend(i: int) -> None:
        codes[abs(i) % n] = manager.resend(f"a{abs(i) % n}@bench.example").code

    def raw_resend(i: int) -> None:
        d, (record, _index) = raw_keys(i)
        args = ("0" * 64, 900_000, 0, 10**9, f"r{i}", keep, day, "", "", "", "")  # ("": keep names)
        evalsha("resend", (record, *funnel(d)), *args)

    out["resend"] = row("resend", paired(resend, raw_resend, n))

    def verify(i: int) -> None:
        if i >= 0:
            assert manager.verify(f"a{i}@bench.example", codes[i]).ok

    def raw_verify(i: int) -> None:
        if i >= 0:
            d, (record, index) = raw_keys(i)
            marker = ks.call_marker("verify", d, f"v{i}")
            # the right code's HMAC (raw_add stored "0" * 64): the consuming path
            keys = (record, index, marker, ks.gone(d), *funnel(d))
            evalsha("verify", keys, d, "0" * 64, 5, 300_000, keep, day)

    out["verify"] = row("verify (consumes)", paired(verify, raw_verify, n))
    hashing = timings(lambda i: hash_password("correct horse battery"), max(20, n // 100))
    out["argon2id_hash_p50_ms"] = pct(hashing, 0.5) * 1000
    print(
        f"  {'argon2id hash (m=19MiB)':<22} {out['argon2id_hash_p50_ms']:7.1f} ms p50 "
        "(paid once per add with a clear password)"
    )
    memory = RegistrationManager(MemoryStore(), secret=SECRET, policy=policy)
    mem = timings(lambda i: memory.add(f"m{i}@bench.example", "B", "E", password_hash=pw_hash), n)
    out["memory_add_p50_ms"] = pct(mem, 0.5) * 1000
    print(f"  {'add on MemoryStore':<22} {out['memory_add_p50_ms']:7.3f} ms p50 (no network)")
    RESULTS["per_operation"] = out
    manager.close()


# --- regctl's own work per call ----------------------------------------------------------------


class _Recording:
    """A client that passes each script call to the server and keeps its last reply."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.replies: dict[str, Any] = {}

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        reply = self.client.evalsha(sha, numkeys, *args)
        self.replies[sha] = reply
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class _Replaying:
    """A client that answers each script with the reply the server once gave it: a
    call's client side alone, no socket and no server."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        return self.replies[sha]


def own_work(sock: Path, pw_hash: str, calls: int = 20_000) -> None:
    """The Python each call runs on the client (validation, HMAC, keys, the script
    runner, decoding), timed in a tight loop against replies recorded from the server:
    what the per-operation ratios above come from, without the network's noise."""
    print(f"\nregctl's own work per call, no server (best of 5 x {calls} calls, µs)")
    policy = Policy(resend_cooldown_ms=0, max_resends=10**9)
    store = RedisStore(redis.Redis(unix_socket_path=str(sock), decode_responses=True), prefix="own")
    manager = RegistrationManager(store, secret=SECRET, policy=policy)
    recording = _Recording(store.scripts.client)
    store.scripts.client = recording
    code = manager.add("own@bench.example", "O", "W", password_hash=pw_hash).code
    manager.get("own@bench.example")
    code = manager.resend("own@bench.example").code
    assert manager.verify("own@bench.example", code).ok
    store.scripts.client = _Replaying(recording.replies)
    fresh = (f"o{i}@bench.example" for i in itertools.count())
    ops: dict[str, Callable[[], object]] = {
        "add": lambda: manager.add(next(fresh), "Alice", "Smith", password_hash=pw_hash),
        "get": lambda: manager.get("own@bench.example"),
        "resend": lambda: manager.resend("own@bench.example"),
        "verify": lambda: manager.verify("own@bench.example", code),
    }
    out = {}
    for name, op in ops.items():
        out[name] = min(timeit.repeat(op, number=calls, repeat=5)) / calls * 1e6
        print(f"  {name:<22} {out[name]:7.1f}")
    RESULTS["own_work_us"] = out
    store.scripts.client = recording.client
    manager.close()


# --- asyncio ------------------------------------------------------------------------------


def async_operations(sock: Path, n: int, pw_hash: str) -> None:
    """The async manager against raw redis.asyncio sending the same script (EVALSHA,
    everything precomputed), interleaved call by call as per_operation does."""
    import asyncio

    import redis.asyncio as aioredis

    from regctl import AsyncRegistrationManager

    print(f"\nasync manager vs raw redis.asyncio EVALSHA, {n} calls each (ms)")
    print(f"  {'operation':<22} {'p50':>7} {'p99':>7}   {'raw p50':>7} {'raw p99':>7}   ratio")
    policy = Policy(resend_cooldown_ms=0, max_resends=10**9)
    store = RedisStore(regctl_client(sock), prefix="aio")
    manager = AsyncRegistrationManager(RegistrationManager(store, secret=SECRET, policy=policy))
    ks = store.keyspace
    day = int(time.time()) // 86_400

    async def main() -> dict[str, Any]:
        raw = aioredis.Redis(unix_socket_path=str(sock), **raw_settings())
        codes = {}
        for i in range(n):  # records to verify: regctl's, and raw ones with a known hash
            codes[i] = (
                await manager.add(f"v{i}@aio.example", "A", "B", password_hash=pw_hash)
            ).code
            store.scripts.run(
                "add",
                *store._add_call(
                    NewRegistration(f"r{i}@aio.example", "A", "B", pw_hash, "0" * 64),
                    policy,
                    f"t{i}",
                ),
            )
        sha = {name: store.scripts.script(name).sha for name in ("get", "verify")}
        keep = policy.funnel_keep_ms

        async def get(i: int) -> None:
            await manager.get(f"v{i}@aio.example")

        async def raw_get(i: int) -> None:
            await raw.evalsha(sha["get"], 1, ks.record(digest(f"r{i}@aio.example")))

        async def verify(i: int) -> None:
            assert (await manager.verify(f"v{i}@aio.example", codes[i])).ok

        async def raw_verify(i: int) -> None:
            d = digest(f"r{i}@aio.example")
            marker = ks.call_marker("verify", d, f"v{i}")
            keys = (*ks.keys_for(d), marker, ks.gone(d), *ks.funnel_around(ks.bucket_of(d), day))
            await raw.evalsha(sha["verify"], len(keys), *keys, d, "0" * 64, 5, 300_000, keep, day)

        samples = {
            "get": await apaired(get, raw_get, n),
            "verify": await apaired(verify, raw_verify, n),
        }
        await raw.aclose()
        await manager.aclose()
        return {name: row(f"async {name}", pair) for name, pair in samples.items()}

    RESULTS["async_operations"] = asyncio.run(main())


async def apaired(
    ours: Callable[[int], Awaitable[None]], base: Callable[[int], Awaitable[None]], n: int
) -> tuple[list[float], list[float]]:
    """``paired`` for coroutines (the records to call exist: no warm-up calls)."""
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        first, second = turns(i, ours, base)
        started = time.perf_counter()
        await first(i)
        middle = time.perf_counter()
        await second(i)
        split(i, (started, middle, time.perf_counter()), a, b)
    return a, b


def async_stall(sock: Path, samples: int = 500) -> None:
    """examples/fastapi_app.py's Redis-free endpoint, idle and while 20 sign-ups wait
    on a stopped Redis: the event loop must not wait with them."""
    import asyncio
    import signal

    try:
        import httpx

        sys.path.insert(0, str(HERE.parent))
        from examples.fastapi_app import create_app
    except ImportError:
        print("\nasync stall: fastapi or httpx not installed (the test extra), skipped")
        return
    from regctl import AsyncRegistrationManager, Mailer, PendingRegistration
    from regctl.mail import MailConfig
    from regctl.settings import load_settings

    settings = load_settings(
        {
            "redis_url": f"unix://{sock}",
            "prefix": "stall",
            "code_secret": SECRET,
            "socket_timeout": 3,
        },
        environ={},
    ).settings
    pid = int(redis.Redis(unix_socket_path=str(sock)).info("server")["process_id"])

    async def create_user(_registration: PendingRegistration) -> None:
        return None

    async def main() -> tuple[list[float], list[float]]:
        manager = AsyncRegistrationManager.from_settings(settings)
        mailer = Mailer(MailConfig(url="none", sender="a@bench.example", subject="code"))
        app = create_app(manager, mailer, create_user)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def latencies() -> list[float]:
                out = []
                for _ in range(samples):
                    started = time.perf_counter()
                    await client.get("/")
                    out.append(time.perf_counter() - started)
                return out

            idle = await latencies()
            os.kill(pid, signal.SIGSTOP)
            try:
                body = {"first_name": "S", "last_name": "T", "password": "stall password 1"}
                waiting = [
                    asyncio.ensure_future(
                        client.post("/register", json={**body, "email": f"s{i}@bench.example"})
                    )
                    for i in range(20)
                ]
                await asyncio.sleep(0.05)
                stalled = await latencies()
                assert not all(w.done() for w in waiting), "the stall ended too soon"
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.gather(*waiting)
        await manager.aclose()
        return idle, stalled

    idle, stalled = asyncio.run(main())
    out = {
        "idle_p99_ms": pct(idle, 0.99) * 1000,
        "stalled_p99_ms": pct(stalled, 0.99) * 1000,
    }
    out["ratio"] = out["stalled_p99_ms"] / out["idle_p99_ms"]
    RESULTS["async_stall"] = out
    print(
        f"\nRedis-free endpoint while 20 sign-ups wait on a stopped Redis: p99 "
        f"{out['stalled_p99_ms']:.2f} ms vs {out['idle_p99_ms']:.2f} ms idle "
        f"({out['ratio']:.2f}x)"
    )


# --- throughput ---------------------------------------------------------------------------


def throughput(sock: Path, seconds: float, pw_hash: str) -> None:
    print(f"\nthroughput of get vs raw EVALSHA of the same script, {seconds:g} s a point (ops/s)")
    out = {}
    for threads in (1, 8, 32):
        store = RedisStore(regctl_client(sock), prefix="tp")  # (a pool of 50, as raw's)
        manager = RegistrationManager(store, secret=SECRET)
        with contextlib.suppress(Exception):
            manager.add("tp@bench.example", "T", "P", password_hash=pw_hash)
        raw = redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
                f"unix://{sock}", max_connections=50, **raw_settings()
            )
        )
        key = store.keyspace.record(digest("tp@bench.example"))
        sha = store.scripts.script("get").sha
        # In turns, a quarter of the time each, so a noisy machine hits both alike.
        ours = base = 0.0
        for _ in range(4):
            ours += rate(functools.partial(manager.get, "tp@bench.example"), threads, seconds / 4)
            base += rate(functools.partial(raw.evalsha, sha, 1, key), threads, seconds / 4)
        ours, base = ours / 4, base / 4
        out[threads] = {"regctl": ours, "baseline": base, "ratio": base / ours}
        print(
            f"  {threads:>2} threads: regctl {ours:9.0f}   raw redis-py {base:9.0f}   "
            f"raw/regctl {base / ours:4.2f}x"
        )
        manager.close()
    RESULTS["throughput_get"] = out


def rate(op: Callable[[], object], threads: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def work(k: int) -> None:
        while time.monotonic() < stop:
            op()
            counts[k] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return sum(counts) / seconds


def redis_benchmark(sock: Path) -> None:
    tool = shutil.which("redis-benchmark")
    if tool is None:
        print("\nredis-benchmark: not installed, skipped")
        return
    ran = subprocess.run(
        [tool, "-s", str(sock), "-n", "50000", "-c", "1", "-q", "-t", "ping,hset"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    text = ran.stdout.replace("\r", "\n")
    found = dict(re.findall(r"^([A-Z_]+): ([\d.]+) requests per second", text, re.MULTILINE))
    RESULTS["redis_benchmark_one_client_rps"] = {k: float(v) for k, v in found.items()}
    print("\nredis-benchmark, one client, no pipelining (the server's floor, requests/s):")
    for name, value in found.items():
        print(f"  {name:<8} {float(value):9.0f}  = {1000 / float(value):.3f} ms per round trip")


# --- bulk -----------------------------------------------------------------------------------


def bulk(sock: Path, records: int, pw_hash: str, rounds: int) -> None:
    print(f"\nbulk, {records} records (list, stats, doctor: median of {rounds} runs in turns)")
    client = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    manager = RegistrationManager(RedisStore(client, prefix="bulk"), secret=SECRET)
    rows = (
        {
            "email": f"u{i}@d{i % 50}.example",
            "first_name": "U",
            "last_name": "S",
            "password_hash": pw_hash,
        }
        for i in range(records)
    )
    started = time.perf_counter()
    added = sum(1 for r in manager.add_many(rows) if not isinstance(r, Exception))
    ours = added / (time.perf_counter() - started)
    assert added == records
    raw = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    started = time.perf_counter()
    for start in range(0, records, 1000):
        pipe = raw.pipeline(transaction=False)
        for i in range(start, min(records, start + 1000)):
            key = f"raw:{{b{i % 64:02d}}}:reg:{i}"
            pipe.hset(key, mapping={"email": f"u{i}@d.example", "pw": pw_hash, "e": 1})
            pipe.pexpire(key, 86_400_000)
            pipe.zadd(f"raw:{{b{i % 64:02d}}}:idx", {str(i): 1})
        pipe.execute()
    base = records / (time.perf_counter() - started)
    RESULTS["bulk_add_per_s"] = {"regctl": ours, "baseline": base, "ratio": base / ours}
    print(
        f"  bulk add (add_many)     regctl {ours:9.0f}/s   raw pipelined {base:9.0f}/s   "
        f"raw/regctl {base / ours:4.2f}x"
    )

    env = {
        **os.environ,
        "REGCTL_REDIS_URL": f"unix://{sock}",
        "REGCTL_PREFIX": "bulk",
        "REGCTL_CODE_SECRET": SECRET,
    }
    regctl = [sys.executable, "-m", "regctl"]
    RESULTS["bulk_rounds"] = rounds
    timed = in_turns(
        {
            "list": [*regctl, "list", "-o", "ndjson"],
            "raw export": [sys.executable, "-c", RAW_EXPORT, str(sock)],
            "stats": [*regctl, "stats", "-o", "json"],
            "doctor": [*regctl, "doctor", "-o", "json"],
            "raw scan": [sys.executable, "-c", RAW_TTL_SCAN, str(sock)],
        },
        env,
        rounds,
    )
    (ours_s, ours_rss), (base_s, base_rss) = timed["list"], timed["raw export"]
    RESULTS["export_ndjson"] = {
        "regctl_per_s": records / ours_s,
        "regctl_peak_rss_mb": ours_rss,
        "baseline_per_s": records / base_s,
        "baseline_peak_rss_mb": base_rss,
        "ratio": ours_s / base_s,
    }
    print(
        f"  list -o ndjson          regctl {records / ours_s:9.0f}/s ({ours_rss:.0f} MB peak)   "
        f"raw scan+hgetall {records / base_s:9.0f}/s ({base_rss:.0f} MB)   "
        f"{ours_s / base_s:4.2f}x"
    )
    stats_s, stats_rss = timed["stats"]
    RESULTS["stats"] = {
        "seconds": stats_s,
        "peak_rss_mb": stats_rss,
        "list_ndjson_seconds": ours_s,
        "ratio_to_list": stats_s / ours_s,
    }
    print(
        f"  stats                   regctl {stats_s:6.2f} s ({stats_rss:.0f} MB peak)   "
        f"list -o ndjson {ours_s:6.2f} s   stats/list {stats_s / ours_s:4.2f}x"
    )
    doctor_s, scan_s = timed["doctor"][0], timed["raw scan"][0]
    RESULTS["doctor"] = {
        "seconds": doctor_s,
        "baseline_seconds": scan_s,
        "ratio": doctor_s / scan_s,
    }
    print(
        f"  doctor                  regctl {doctor_s:6.2f} s   raw SCAN + pipelined PTTL "
        f"{scan_s:6.2f} s   {doctor_s / scan_s:4.2f}x"
    )

    # import: the export of those records (secrets included) restored under another
    # prefix, as a process, against the same raw pipelined baseline as bulk add.
    with tempfile.TemporaryDirectory() as tmp:
        backup = Path(tmp) / "backup.ndjson"
        with backup.open("wb") as out:
            export = [sys.executable, "-m", "regctl", "export", "--include-secrets"]
            subprocess.run(export, env=env, stdout=out, check=True)
        import_s, import_rss = run_measured(
            [sys.executable, "-m", "regctl", "import", str(backup)],
            {**env, "REGCTL_PREFIX": "restored"},
        )
    imported = records / import_s
    RESULTS["import"] = {
        "per_s": imported,
        "peak_rss_mb": import_rss,
        "baseline_per_s": base,
        "ratio": base / imported,
    }
    print(
        f"  import (a process)      regctl {imported:9.0f}/s ({import_rss:.0f} MB peak)   "
        f"raw pipelined {base:9.0f}/s   raw/regctl {base / imported:4.2f}x"
    )
    restored = RegistrationManager(RedisStore(client, prefix="restored"), secret=SECRET)
    restored.purge(Filter(older_than_ms=0))

    expired = RegistrationManager(
        RedisStore(client, prefix="exp"), secret=SECRET, policy=Policy(lifetime_ms=1000)
    )
    rows = (
        {"email": f"e{i}@x.example", "first_name": "E", "last_name": "X", "password_hash": pw_hash}
        for i in range(records)
    )
    for _ in expired.add_many(rows, batch=1000):
        pass
    time.sleep(1.2)
    # PING from a process of its own: a thread here would also wait for this
    # process's interpreter lock while the purge holds it.
    watcher = subprocess.Popen(
        [sys.executable, "-c", PING_WATCH, str(sock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()
    report = expired.purge(batch=1000)
    purge_s = time.perf_counter() - started
    worst_ping_ms = float(watcher.communicate("")[0])  # (stdin closed: it stops, says)
    assert report.expired == records, report
    started = time.perf_counter()
    pipe = raw.pipeline(transaction=False)
    for b in range(64):
        pipe.zremrangebyscore(f"raw:{{b{b:02d}}}:idx", "-inf", "+inf")
    pipe.execute()
    floor_s = time.perf_counter() - started
    RESULTS["purge_expired"] = {
        "seconds": purge_s,
        "per_s": records / purge_s,
        "max_ping_ms": worst_ping_ms,
        "baseline_seconds": floor_s,
    }
    print(
        f"  purge of expired        {purge_s:6.2f} s ({records / purge_s:9.0f}/s), max PING "
        f"latency meanwhile {worst_ping_ms:.1f} ms; raw ZREMRANGEBYSCORE floor "
        f"{floor_s:.2f} s"
    )
    manager.purge(Filter(older_than_ms=0))


PING_WATCH = """
import select, sys, time, redis
r = redis.Redis(unix_socket_path=sys.argv[1])
worst = 0.0
while not select.select([sys.stdin], [], [], 0.001)[0]:
    started = time.perf_counter()
    r.ping()
    worst = max(worst, time.perf_counter() - started)
print(worst * 1000)
"""


RAW_TTL_SCAN = """
import sys, redis
r = redis.Redis(unix_socket_path=sys.argv[1], decode_responses=True)
keys = []
for key in r.scan_iter("bulk:*", count=1000):
    keys.append(key)
    if len(keys) == 1000:
        pipe = r.pipeline(transaction=False)
        for k in keys: pipe.pttl(k)
        pipe.execute()
        keys = []
pipe = r.pipeline(transaction=False)
for k in keys: pipe.pttl(k)
pipe.execute()
"""


RAW_EXPORT = """
import json, sys, redis
r = redis.Redis(unix_socket_path=sys.argv[1], decode_responses=True)
out = sys.stdout
keys = []
for key in r.scan_iter("bulk:*:reg:*", count=1000):
    keys.append(key)
    if len(keys) == 500:
        pipe = r.pipeline(transaction=False)
        for k in keys: pipe.hgetall(k)
        for h in pipe.execute(): out.write(json.dumps(h) + "\\n")
        keys = []
pipe = r.pipeline(transaction=False)
for k in keys: pipe.hgetall(k)
for h in pipe.execute(): out.write(json.dumps(h) + "\\n")
"""


def in_turns(
    jobs: dict[str, list[str]], env: dict[str, str], rounds: int
) -> dict[str, tuple[float, float]]:
    """Each job run ``rounds`` times as a process, in turns (the order reversed every
    other round, so a noisy machine hits all alike): its median wall seconds and its
    largest peak RSS (MB). Doctor may exit 1: it reports what it finds."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    peaks: dict[str, float] = dict.fromkeys(jobs, 0.0)
    for turn in range(rounds):
        for name in list(jobs) if turn % 2 == 0 else list(reversed(jobs)):
            took, rss = run_measured(jobs[name], env, allowed=(0, 1) if name == "doctor" else (0,))
            seconds[name].append(took)
            peaks[name] = max(peaks[name], rss)
    return {name: (statistics.median(seconds[name]), peaks[name]) for name in jobs}


def run_measured(
    argv: list[str], env: dict[str, str], allowed: tuple[int, ...] = (0,)
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child, its stdout thrown away; its exit
    status must be one of ``allowed`` (doctor exits 1 when it finds something)."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(time.perf_counter() - t, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env, check=True
    )
    seconds, rss_kb, status = ran.stdout.split()
    assert int(status) in allowed, (argv, status)
    return float(seconds), int(rss_kb) / 1024


# --- one-shot commands at scale ----------------------------------------------------------------

# Every read command, timed as a whole process at each store size: which grow with the
# store (only whole-store work may, and linearly) and which do not.
SCALE_COMMANDS = {
    "inspect": ["inspect", "u7@d7.example", "-o", "json"],
    "list --limit 20": ["list", "--limit", "20", "-o", "json"],
    "health": ["health", "-o", "json"],
    "audit": ["audit", "-o", "json"],
    "stats": ["stats", "-o", "json"],
    "list -o ndjson": ["list", "-o", "ndjson"],
    "export": ["export"],
    "doctor": ["doctor", "-o", "json"],
}


def scale(sock: Path, sizes: list[int], pw_hash: str) -> None:
    print(f"\none-shot commands at scale (wall seconds, start-up included): {sizes}")
    client = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    client.flushdb()  # (this run's own server) SCAN's cost is the whole keyspace's
    store = RedisStore(client, prefix="scale")
    env = {
        **os.environ,
        "REGCTL_REDIS_URL": f"unix://{sock}",
        "REGCTL_PREFIX": "scale",
        "REGCTL_CODE_SECRET": SECRET,
    }
    out: dict[str, dict[int, float]] = {name: {} for name in SCALE_COMMANDS}
    loaded = 0
    for size in sorted(sizes):
        # Through the real add script, pipelined (set-up, not measured: no validation).
        for start in range(loaded, size, 2000):
            batch = [
                (NewRegistration(f"u{i}@d{i % 50}.example", "U", "S", pw_hash, "0" * 64), f"t{i}")
                for i in range(start, min(size, start + 2000))
            ]
            store.add_many(batch, Policy())
        loaded = size
        for name, argv in SCALE_COMMANDS.items():
            seconds, _rss = run_measured([sys.executable, "-m", "regctl", *argv], env, (0, 1))
            out[name][size] = seconds
        print("  " + "  ".join(f"{name} {out[name][size]:.2f}" for name in SCALE_COMMANDS))
    RESULTS["scale"] = {name: {str(k): v for k, v in by.items()} for name, by in out.items()}
    TABLES["scale"] = scale_table(out, sorted(sizes))
    print(TABLES["scale"])


def scale_table(out: dict[str, dict[int, float]], sizes: list[int]) -> str:
    """The markdown table of docs/performance.md: seconds per size, and how the largest
    compares with the smallest (1 does not grow; 100 grows linearly over 100 times)."""
    head = "| command | " + " | ".join(f"{num(n)} records" for n in sizes)
    lines = [head + " | largest / smallest |", "|---|" + "---|" * (len(sizes) + 1)]
    for name, by in out.items():
        cells = " | ".join(f"{by[n]:.2f} s" for n in sizes)
        lines.append(f"| `regctl {name}` | {cells} | {by[sizes[-1]] / by[sizes[0]]:.1f}{X} |")
    return "\n".join(lines) + "\n"


# --- CLI start-up ------------------------------------------------------------------------------


def startup(sock: Path, runs: int) -> None:
    print(f"\nCLI start-up, median of {runs} runs (ms)")
    env = {**os.environ, "REGCTL_REDIS_URL": f"unix://{sock}", "REGCTL_CODE_SECRET": SECRET}
    regctl = [sys.executable, "-m", "regctl"]
    floor = f"import redis; redis.Redis(unix_socket_path={str(sock)!r}).hgetall('x')"
    eager = "import typer, rich, redis, pydantic_settings, email_validator, argon2"
    cases = {
        "regctl --help": [*regctl, "--help"],
        "regctl --version": [*regctl, "--version"],
        "regctl inspect": [*regctl, "inspect", "nobody@example.com"],
        "regctl inspect -o json": [*regctl, "-o", "json", "inspect", "nobody@example.com"],
        "floor: python + redis": [sys.executable, "-c", floor],
        "eager import of deps": [sys.executable, "-c", eager],
        "bare python": [sys.executable, "-c", "pass"],
    }
    out = {}
    for name, argv in cases.items():
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )
            samples.append(time.perf_counter() - started)
        out[name] = statistics.median(samples) * 1000
    for name, ms in out.items():
        ratio = ms / out["floor: python + redis"]
        print(f"  {name:<24} {ms:7.1f}   {ratio:4.2f}x the python+redis floor")
    RESULTS["startup_ms"] = out


# --- docs/performance.md -------------------------------------------------------------------------


def num(value: float) -> str:
    """A whole number with a thin space between thousands: 1 000 000."""
    return f"{value:,.0f}".replace(",", " ")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def per_operation_table() -> str:
    ops = RESULTS["per_operation"]
    named = {"add": "add (password pre-hashed)", "get": "get", "resend": "resend"}
    named["verify"] = "verify (right code, consumes)"
    measured = [(name, ops[key]) for key, name in named.items()]
    measured += [
        (f"async {key} (vs raw redis.asyncio)", r)
        for key, r in RESULTS.get("async_operations", {}).items()
    ]
    rows = [
        [
            name,
            *(f"{r[k]:.3f} ms" for k in ("regctl_p50_ms", "regctl_p99_ms")),
            *(f"{r[k]:.3f} ms" for k in ("baseline_p50_ms", "baseline_p99_ms")),
            f"{r['ratio_p50']:.2f}{X}",
        ]
        for name, r in measured
    ]
    argon, memory = ops["argon2id_hash_p50_ms"], ops["memory_add_p50_ms"]
    rows.append(["Argon2id hash (m=19 MiB, t=2)", f"{argon:.1f} ms", "", "", "", "per clear pw"])
    rows.append(["add on MemoryStore", f"{memory:.3f} ms", "", "", "", "no network"])
    own = RESULTS.get("own_work_us", {})
    rows += [
        [f"{name}: regctl's own work", f"{us:.1f} µs", "", "", "", "no server (tight loop)"]
        for name, us in own.items()
    ]
    header = ["operation", "regctl p50", "p99", "raw p50", "p99", "ratio p50"]
    return md_table(header, rows)


def throughput_table() -> str:
    tp = RESULTS["throughput_get"]
    rows = [
        [str(t), f"{num(v['regctl'])}/s", f"{num(v['baseline'])}/s", f"{v['ratio']:.2f}{X}"]
        for t, v in sorted(tp.items(), key=lambda item: int(item[0]))
    ]
    return md_table(["threads", "regctl", "raw EVALSHA", "raw/regctl"], rows)


def bulk_table() -> str:
    r = RESULTS
    add, restore, ndjson, stats, doctor, purge = (
        r["bulk_add_per_s"],
        r["import"],
        r["export_ndjson"],
        r["stats"],
        r["doctor"],
        r["purge_expired"],
    )
    median = f" (median of {r['bulk_rounds']})"
    rows = [
        [
            "bulk add (`add_many`, validated)",
            f"{num(add['regctl'])}/s",
            f"raw pipelined HSET+PEXPIRE+ZADD: {num(add['baseline'])}/s",
            f"{add['ratio']:.2f}{X} the time",
        ],
        [
            "`regctl import` of their export (a process)",
            f"{num(restore['per_s'])}/s, {restore['peak_rss_mb']:.0f} MB peak",
            f"raw pipelined HSET+PEXPIRE+ZADD: {num(restore['baseline_per_s'])}/s",
            f"{restore['ratio']:.2f}{X} the time",
        ],
        [
            f"`regctl list -o ndjson`{median}",
            f"{num(ndjson['regctl_per_s'])}/s, {ndjson['regctl_peak_rss_mb']:.0f} MB peak",
            f"raw SCAN + pipelined HGETALL: {num(ndjson['baseline_per_s'])}/s",
            f"{ndjson['ratio']:.2f}{X} the time",
        ],
        [
            f"`regctl stats`{median}",
            f"{stats['seconds']:.2f} s, {stats['peak_rss_mb']:.0f} MB peak",
            f"`regctl list -o ndjson`: {stats['list_ndjson_seconds']:.2f} s",
            f"{stats['ratio_to_list']:.2f}{X} the time",
        ],
        [
            f"`regctl doctor`{median}",
            f"{doctor['seconds']:.2f} s",
            f"raw SCAN + pipelined PTTL: {doctor['baseline_seconds']:.2f} s",
            f"{doctor['ratio']:.2f}{X} the time",
        ],
        [
            "purge of as many expired",
            f"{purge['seconds']:.2f} s",
            f"raw ZREMRANGEBYSCORE: {purge['baseline_seconds']:.2f} s",
            f"max PING meanwhile {purge['max_ping_ms']:.1f} ms",
        ],
    ]
    return md_table(["job", "regctl", "baseline", ""], rows)


def startup_table() -> str:
    out = RESULTS["startup_ms"]
    floor = out["floor: python + redis"]
    rows = [[f"`{name}`", f"{ms:.0f} ms", f"{ms / floor:.2f}{X}"] for name, ms in out.items()]
    return md_table(["command", "median", "vs python + redis floor"], rows)


def stall_line() -> str:
    r = RESULTS["async_stall"]
    return (
        f"p99 {r['stalled_p99_ms']:.2f} ms while 20 sign-ups wait on a stopped Redis, "
        f"{r['idle_p99_ms']:.2f} ms idle ({r['ratio']:.2f}{X})\n"
    )


def write_docs(path: Path) -> None:
    """Every table this run made, between its markers in docs/performance.md."""
    machine = RESULTS["machine"]
    TABLES["machine"] = (
        f"{machine['cores']} cores, Python {machine['python']}, redis-py "
        f"{machine['redis_py']} (hiredis), redis-server {machine['redis']}; "
        f"{num(machine['ops'])} calls per operation\n"
    )
    makers = {"per-op": per_operation_table, "throughput": throughput_table}
    makers.update(bulk=bulk_table, startup=startup_table, stall=stall_line)
    needs = {"bulk": "bulk_add_per_s", "stall": "async_stall"}
    for name, make in makers.items():
        if needs.get(name, "per_operation") in RESULTS:
            TABLES[name] = make()
    text = path.read_text()
    for name, table in TABLES.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{table}{end}{tail}"
    path.write_text(text)
    print(f"\ntables written to {path}")


# --- plot ----------------------------------------------------------------------------------------


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = RESULTS["per_operation"]
    names = ["add", "get", "resend", "verify"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    left.bar(
        [i - 0.2 for i in x], [ops[n]["regctl_p50_ms"] * 1000 for n in names], 0.4, label="regctl"
    )
    left.bar(
        [i + 0.2 for i in x],
        [ops[n]["baseline_p50_ms"] * 1000 for n in names],
        0.4,
        label="raw redis-py, same round trips",
    )
    left.set_xticks(list(x), names)
    left.set_ylabel("p50 latency (µs)")
    left.set_title("one operation, one thread, unix socket")
    left.legend()
    tp = RESULTS["throughput_get"]
    threads = sorted(tp)
    right.plot(threads, [tp[t]["regctl"] for t in threads], "o-", label="regctl get")
    right.plot(
        threads, [tp[t]["baseline"] for t in threads], "s--", label="raw EVALSHA, same script"
    )
    right.set_ylim(bottom=0)
    right.set_xscale("log", base=2)
    right.set_xlabel("threads")
    right.set_ylabel("operations per second")
    right.set_title("throughput")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nplot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1 000 000-record bulk figures")
    parser.add_argument("--records", type=int, help="bulk size (default 100 000; --full 1M)")
    parser.add_argument("--ops", type=int, default=3000, help="calls per operation")
    parser.add_argument("--skip-bulk", action="store_true", help="per-operation figures only")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each whole-store job (median)"
    )
    parser.add_argument(
        "--scale",
        type=lambda text: [int(n) for n in text.split(",")],
        metavar="N,N,...",
        help="time every read command at these store sizes (--full: 10000,100000,1000000) "
        "(its table goes into docs/performance.md with --full or --write-docs)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG plot here (needs matplotlib)")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="write this run's tables into docs/performance.md (--full always does)",
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    records = args.records or (1_000_000 if args.full else 100_000)
    pw_hash = hash_password("correct horse battery")
    print(
        f"regctl benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"redis-py {redis.__version__}"
    )
    with redis_server() as sock:
        server = redis.Redis(unix_socket_path=str(sock)).info("server")
        print(f"redis-server {server['redis_version']} on a unix socket")
        RESULTS["machine"] = {
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "redis": server["redis_version"],
            "redis_py": redis.__version__,
            "ops": args.ops,
        }
        per_operation(sock, args.ops, pw_hash)
        own_work(sock, pw_hash)
        async_operations(sock, args.ops, pw_hash)
        async_stall(sock)
        throughput(sock, 2.0, pw_hash)
        redis_benchmark(sock)
        if not args.skip_bulk:
            bulk(sock, records, pw_hash, args.rounds)
        sizes = args.scale or ([10_000, 100_000, 1_000_000] if args.full else None)
        if sizes:
            scale(sock, sizes, pw_hash)
        startup(sock, 15)
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2, default=str))
    if args.plot:
        plot(args.plot)
    if args.full or args.write_docs:
        write_docs(HERE.parent / "docs" / "performance.md")


if __name__ == "__main__":
    main()
