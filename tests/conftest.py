from __future__ import annotations

import itertools
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from regctl import MemoryStore, Policy, RedisStore, RegistrationManager
from tests.servers import RedisCluster, RedisProcess

SECRET = "test-secret-0123456789abcdef"
_prefixes = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background by a shell without job control (`pytest &` in a
    script) has SIGINT ignored, and so would every regctl it starts (an ignored signal
    stays ignored across exec): the tests of Ctrl-C would wait for nothing. Heard
    here, the signal is back to its default in the processes started from here."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server shared by the session; tests isolate by key prefix."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server of this test alone (for whole-keyspace assertions)."""
    proc = RedisProcess(tmp_path / "redis").start()
    yield proc
    proc.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A private Redis Cluster: 3 primaries, one replica each."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1).start()
    yield cluster
    cluster.stop()


def cluster_client(cluster: RedisCluster) -> Any:
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster as Client

    node = cluster.nodes[0]
    return Client(startup_nodes=[ClusterNode("127.0.0.1", node.port)], decode_responses=True)


@pytest.fixture(params=["redis", "memory", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeManager = Callable[..., RegistrationManager]


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    """The manager the contract runs on: the sync one, or the async one awaited."""
    return str(request.param)


@pytest.fixture
def make_manager(
    store_kind: str, api: str, request: pytest.FixtureRequest, prefix: str
) -> Iterator[MakeManager]:
    """Build managers over the parametrised store kind with a given policy."""
    opened: list[RegistrationManager] = []

    def make(policy: Policy | None = None) -> RegistrationManager:
        store: RedisStore | MemoryStore
        if store_kind == "redis":
            store = RedisStore(request.getfixturevalue("redis_proc").client(), prefix=prefix)
        elif store_kind == "cluster":
            client = cluster_client(request.getfixturevalue("redis_cluster"))
            store = RedisStore(client, prefix=prefix)
        else:
            store = MemoryStore()
        manager = RegistrationManager(store, secret=SECRET, policy=policy or Policy())
        if api == "async":
            from tests.awaited import Awaited

            manager = cast(RegistrationManager, Awaited(manager))
        opened.append(manager)
        return manager

    yield make
    for manager in opened:
        manager.close()


@pytest.fixture
def manager(make_manager: MakeManager) -> RegistrationManager:
    return make_manager()


def redis_store(manager: RegistrationManager) -> RedisStore:
    """The manager's store as the RedisStore it is, for a test that reaches its keys,
    client or scripts (``manager.store`` is typed as any ``Store``)."""
    assert isinstance(manager.store, RedisStore), manager.store
    return manager.store


@pytest.fixture(scope="session")
def _metric_reader() -> Any:
    """OpenTelemetry's meter provider, with a reader held in memory: set once for the
    session, since OpenTelemetry allows no second one in a process."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


Points = Callable[[str, str, str], float]


@pytest.fixture
def telemetry(_metric_reader: Any) -> Iterator[Callable[..., Points]]:
    """Switches redis-py's own OpenTelemetry metrics on (``telemetry(MetricGroup.X)``);
    what it returns sums a metric's points whose attribute has a value (a counter's
    value, a histogram's count): cumulative over the session, so a test compares
    before and after. They are switched off again after the test."""
    from opentelemetry.sdk.metrics.export import HistogramDataPoint
    from redis.observability.config import OTelConfig
    from redis.observability.providers import (
        get_observability_instance,
        reset_observability_instance,
    )
    from redis.observability.recorder import reset_collector

    def total(name: str, attribute: str, value: str) -> float:
        data = _metric_reader.get_metrics_data()
        return sum(
            point.count if isinstance(point, HistogramDataPoint) else point.value
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
            if (point.attributes or {}).get(attribute) == value
        )

    def switch_on(*groups: Any) -> Points:
        get_observability_instance().init(OTelConfig(metric_groups=list(groups)))
        return total

    try:
        yield switch_on
    finally:
        reset_observability_instance()
        reset_collector()


@pytest.fixture(scope="session")
def pw_hash() -> str:
    """One real Argon2id hash, so tests need not pay for hashing on every add."""
    from regctl.security import hash_password

    return hash_password("correct horse battery")


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str


class Cli:
    """Drives the real Typer app in-process with a private environment."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def with_env(self, **env: str) -> Cli:
        return Cli({**self.env, **env})

    def __call__(self, *args: str, input: str | bytes | None = None, **env: str) -> Ran:
        from typer.testing import CliRunner

        from regctl.cli.app import build_app

        runner = CliRunner()
        result = runner.invoke(
            build_app(), list(args), input=input, env={**self.env, **env}, catch_exceptions=False
        )
        return Ran(result.exit_code, result.stdout, result.stderr)


def cli_env(redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "REGCTL_REDIS_URL": redis_url,
        "REGCTL_PREFIX": prefix,
        "REGCTL_CODE_SECRET": SECRET,
        "REGCTL_MAIL_URL": "none",
        "NO_COLOR": "1",
    }


@pytest.fixture
def cli(
    redis_proc: RedisProcess, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Cli:
    monkeypatch.chdir(tmp_path)  # no stray .env file
    for name in list(os.environ):
        if name.startswith("REGCTL_") or name.startswith("REDIS_"):
            monkeypatch.delenv(name)
    return Cli(cli_env(redis_proc.url, prefix))


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[object]:
    from tests.smtp import SmtpServer

    with SmtpServer() as server:
        yield server


REGCTL = str(Path(sys.executable).parent / "regctl")


def regctl(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `regctl` in a subprocess (bounded in time)."""
    return run([REGCTL, *args], env, stdin=stdin)


def started(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The installed `regctl` running in the background, its output piped."""
    return subprocess.Popen(
        [REGCTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def run(
    argv: Sequence[str], env: dict[str, str], *, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A program in a subprocess, its output captured, bounded in time."""
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@dataclass
class Seen:
    exit_code: int
    output: str  # stdout and stderr, as the terminal showed them


def at_terminal(
    args: Sequence[str], env: dict[str, str], *, keys: bytes = b"", stdout: Path | None = None
) -> Seen:
    """What a person would see: the installed regctl on a real pseudo-terminal (its
    stdin, stdout and stderr; stdout into a file instead when given, as with `>`), with
    ``keys`` typed once output starts."""
    primary, secondary = pty.openpty()
    out_file = None if stdout is None else stdout.open("wb")
    proc = subprocess.Popen(
        [REGCTL, *args],
        stdin=secondary,
        stdout=secondary if out_file is None else out_file,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if keys:
                os.write(primary, keys)
                keys = b""
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=30)
    os.close(primary)
    if out_file is not None:
        out_file.close()
    return Seen(code, out.decode(errors="replace"))


def subprocess_env(redis_url: str, prefix: str) -> dict[str, str]:
    """This environment without any regctl or Redis setting, plus the test ones."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REGCTL_", "REDIS_"))}
    return {**base, **cli_env(redis_url, prefix)}
