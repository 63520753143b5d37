"""Private redis-server processes for the tests: unix sockets in temp dirs, never shared.

Nothing here touches a server it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from regctl.server import EmbeddedServer


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the embedded extra ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    return str(EmbeddedServer(Path(".")).binary())


class RedisProcess:
    """One redis-server on a unix socket under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        password: str | None = None,
        extra: list[str] | None = None,
    ):
        self.directory = directory
        self.password = password
        self.aof = aof
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket),
            password=self.password,
            decode_responses=True,
            **kwargs,  # type: ignore[arg-type]
        )

    def start(self) -> RedisProcess:
        args = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
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
            *(["--requirepass", self.password] if self.password else []),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited: {log[-500:]}")
            with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
                if self.socket.exists() and self.client().ping():
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
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
