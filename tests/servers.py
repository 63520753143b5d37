"""Private redis-server processes for the tests: unix sockets or free loopback ports in
temp dirs, never shared with anything else. Nothing here touches a server it did not start.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from regctl.server import find_redis_server


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else (0,)


@functools.cache
def redis_server_binary() -> str:
    """The newest redis-server on PATH or shipped by the embedded extra."""
    candidates = {
        str(Path(d) / "redis-server")
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and os.access(Path(d) / "redis-server", os.X_OK)
    }
    with contextlib.suppress(Exception):
        candidates.add(str(find_redis_server()))
    if not candidates:
        raise RuntimeError("no redis-server binary: install one or the [embedded] extra")
    return max(candidates, key=_version)


def server_version() -> tuple[int, ...]:
    return _version(redis_server_binary())


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port whose cluster-bus twin (port + 10000) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20_000, 55_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair found")


class RedisProcess:
    """One redis-server under ``directory``: a unix socket, or a loopback port if given."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        aof: bool = False,
        password: str | None = None,
        extra: list[str] | None = None,
        binary: str | None = None,
    ):
        self.binary = binary  # default: the newest redis-server found
        self.directory = directory
        self.port = port
        self.aof = aof
        self.password = password
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}"
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client that decodes replies, with redis.Redis's other keyword arguments."""
        where: dict[str, Any] = (
            {"host": "127.0.0.1", "port": self.port}
            if self.port is not None
            else {"unix_socket_path": str(self.socket)}
        )
        return redis.Redis(**where, password=self.password, decode_responses=True, **kwargs)

    def args(self) -> list[str]:
        where = (
            ["--port", str(self.port), "--bind", "127.0.0.1"]
            if self.port is not None
            else ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        )
        return [
            self.binary or redis_server_binary(),
            *where,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.directory / "redis.log"),
            "--repl-diskless-sync-delay",
            "0",
            *(["--requirepass", self.password] if self.password else []),
            *self.extra,
        ]

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited: {log[-500:]}")
            with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
                if self.client(socket_timeout=1).ping():
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.port is None:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def zset_members(client: redis.Redis, key: str) -> list[str]:
    """A sorted set's members in order, read by a client that decodes replies
    (RedisProcess.client): redis-py types them as bytes or str either way."""
    members = client.zrange(key, 0, -1)
    assert all(isinstance(m, str) for m in members), members
    return [str(m) for m in members]


class ResettingProxy:
    """A loopback TCP proxy to ``port`` that can reset every connection through it
    (an RST, as a load balancer or a firewall that forgot a connection sends)."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket, threading.Thread]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self._target)
            pump = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            with self._lock:
                self._pairs.append((client, server, pump))
            pump.start()

    @staticmethod
    def _pump(client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):  # (reset or closed: done)
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.05)
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    (server if end is client else client).sendall(data)

    def reset_all(self) -> None:
        """Reset every connection; when it returns, the resets are sent (a socket a
        pump still selects on is torn down only when the select returns)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server, pump in pairs:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # with a zero linger: an RST
            server.close()
            pump.join(5)

    def close(self) -> None:
        self.reset_all()
        self._listener.close()


class RedisCluster:
    """A cluster of ``primaries`` nodes (plus ``replicas`` per primary) on loopback ports."""

    def __init__(
        self, directory: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 3000
    ):
        self.nodes = [
            RedisProcess(
                directory / f"n{i}",
                port=free_port(),
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
            for i in range(primaries * (1 + replicas))
        ]
        self.primaries = primaries

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])
        return f"redis+cluster://{hosts}"

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        clients = [n.client() for n in self.nodes]
        per = 16384 // self.primaries
        for i in range(self.primaries):
            last = 16383 if i == self.primaries - 1 else (i + 1) * per - 1
            clients[i].execute_command("CLUSTER", "ADDSLOTS", *range(i * per, last + 1))
        for node, client in zip(self.nodes[1:], clients[1:], strict=True):
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(
            lambda: all(
                len(c.execute_command("CLUSTER", "NODES").splitlines()) == len(self.nodes)
                for c in clients
            )
        )
        for i, client in enumerate(clients[self.primaries :]):
            primary_id = clients[i % self.primaries].execute_command("CLUSTER", "MYID")
            client.execute_command("CLUSTER", "REPLICATE", primary_id)
        self._wait(lambda: all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients))
        if len(self.nodes) > self.primaries:
            # Every node must see every replica (gossip), as clients discover them there.
            copies = len(self.nodes) // self.primaries
            self._wait(
                lambda: all(
                    all(len(r) == 2 + copies for r in c.execute_command("CLUSTER", "SLOTS"))
                    for c in clients
                )
            )
        return self

    @staticmethod
    def _wait(ready: Callable[[], object], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not come up")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup:
    """A master, a replica and three sentinels watching them, all on loopback ports."""

    service = "regctl-test"

    def __init__(self, directory: Path):
        self.master = RedisProcess(directory / "master", port=free_port())
        self.replica = RedisProcess(directory / "replica", port=free_port())
        self.sentinels = [RedisProcess(directory / f"s{i}", port=free_port()) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> SentinelGroup:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SentinelGroup:
        self.master.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        RedisCluster._wait(
            lambda: self.replica.client().info("replication").get("master_link_status") == "up"
        )
        for sentinel in self.sentinels:
            conf = sentinel.directory / "sentinel.conf"
            conf.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 2000\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
            sentinel.proc = subprocess.Popen(
                [redis_server_binary(), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        RedisCluster._wait(
            lambda: all(
                int(self._master_state(s)["num-other-sentinels"]) == 2
                and int(self._master_state(s)["num-slaves"]) == 1
                for s in self.sentinels
            )
        )
        return self

    def _master_state(self, sentinel: RedisProcess) -> dict[str, Any]:
        # redis-py types the reply "dict | bool": a bool only from redis.Sentinel's
        # fan-out over several sentinels, never from one sentinel asked directly.
        state = sentinel.client().sentinel_master(self.service)
        assert isinstance(state, dict), state
        return state

    def current_master(self) -> tuple[str, int]:
        address = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.service)
        # None if the sentinel knew no such master; a bool only from redis.Sentinel's fan-out
        assert isinstance(address, tuple), address
        host, port = address
        assert isinstance(host, str), host  # the client decodes replies
        return host, int(port)

    def stop(self) -> None:
        for process in (*self.sentinels, self.replica, self.master):
            process.stop()


def make_tls_material(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.crt")}
    run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=directory)
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=regctl test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]
    )
    run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]
    )
    return paths
