"""Every setting from every source reaches what uses it; nothing is silently ignored."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from regctl import ConfigError, InvalidInput, RegistrationManager
from regctl.cli.reference import EXAMPLE_CONFIG
from regctl.connection import connect
from regctl.mail import MailConfig
from regctl.security import CodeHasher
from regctl.server import EmbeddedServer
from regctl.settings import ENV_PREFIX, LoadedSettings, Settings, env_names, load_settings
from regctl.urls import check_url
from tests.conftest import REGCTL, SECRET, Cli, redis_store
from tests.servers import RedisProcess

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "settingstest"
SECRETS = ("a" * 16 + "-one", "b" * 16 + "-two", "c" * 16 + "-three", "d" * 16 + "-four")
FLAGS = {"redis_url", "prefix", "wait_replicas"}  # the settings with a global flag


@dataclass(frozen=True)
class Probe:
    """Four distinct valid values of a setting, and how to see it where it is used."""

    values: tuple[str, str, str, str]
    seen: Callable[[Settings, Path], Any]
    expected: Callable[[str], Any] = str


def _manager(settings: Settings) -> RegistrationManager:
    return RegistrationManager.from_settings(settings)


def _pool(settings: Settings) -> Any:
    with _manager(settings) as manager:
        return redis_store(manager).client.connection_pool


def _kwarg(name: str) -> Callable[[Settings, Path], Any]:
    return lambda s, _tmp: _pool(s).connection_kwargs[name]


def _tls(name: str) -> Callable[[Settings, Path], Any]:
    def seen(settings: Settings, _tmp: Path) -> Any:
        client = connect(f"rediss://127.0.0.1:{_closed_port()}/0", settings)
        try:
            return client.connection_pool.connection_kwargs[name]
        finally:
            client.close()

    return seen


def _sentinel(name: str) -> Callable[[Settings, Path], Any]:
    def seen(settings: Settings, _tmp: Path) -> Any:
        client = connect(f"redis+sentinel://127.0.0.1:{_closed_port()}/mymaster", settings)
        sentinel = client.connection_pool.sentinel_manager.sentinels[0]
        return sentinel.connection_pool.connection_kwargs[name]

    return seen


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _policy(name: str, scale: int = 1) -> Probe:
    def seen(settings: Settings, _tmp: Path) -> Any:
        with _manager(settings) as manager:
            return getattr(manager.policy, name)

    values = {"lifetime_ms": ("7200", "3600", "5400", "9000")}.get(
        name, ("61", "62", "63", "64") if scale == 1000 else ("7", "8", "9", "10")
    )
    return Probe(values, seen, lambda v: int(float(v) * scale))


def _file_secret(setting: str) -> Callable[[Settings, Path], Any]:
    def seen(settings: Settings, _tmp: Path) -> Any:
        return getattr(settings, f"{setting}_value")()

    return seen


_PW_HASH: list[str] = []
SECRET_FILES = ("s1.txt", "s2.txt", "s3.txt", "s4.txt")


def _landed(settings: Settings, pattern: str) -> list[tuple[int, str]]:
    """Add a record through a manager on these settings; which (db, prefix) holds it?

    The keys found are deleted, so the next probe starts clean."""
    import redis

    with _manager(settings) as manager:
        manager.add("probe@example.com", "P", "Q", password_hash=_PW_HASH[0])
    found = set()
    for db in range(7):
        client = redis.Redis.from_url(f"{settings.redis_url}".partition("?")[0] + f"?db={db}")
        try:
            for key in client.scan_iter(pattern):
                found.add((db, key.decode().split(":", 1)[0]))
                client.delete(key)
        finally:
            client.close()
    return sorted(found)


def _health_budget(settings: Settings, _tmp: Path) -> float:
    """The call budget of the store `regctl health` checks."""
    from regctl.cli.state import State

    state = State()
    state._loaded = LoadedSettings(settings, {})
    try:
        client = state.store_within(settings.health_timeout).client
        return float(client.connection_pool.connection_kwargs["retry"].budget_s)
    finally:
        state.close()


def _audit_label(settings: Settings, _tmp: Path) -> str:
    """The label on the audit entry a CLI invocation writes (after the OS account)."""
    from regctl.cli.state import State

    state = State()
    state._loaded = LoadedSettings(settings, {})
    try:
        state.audit("unlock", "label", "ok")
        who = state.manager.audit_trail(1)[0]["who"]
        state.store.client.delete(state.store.keyspace.audit)
    finally:
        state.close()
    return who.rpartition(" [")[2].removesuffix("]")


def _audit_cap(settings: Settings, _tmp: Path) -> int:
    """The audit trail's cap on the store a CLI invocation opens."""
    from regctl.cli.state import State

    state = State()
    state._loaded = LoadedSettings(settings, {})
    try:
        return state.store.audit_max
    finally:
        state.close()


def _buckets(settings: Settings, _tmp: Path) -> int:
    with _manager(settings) as manager:
        store = redis_store(manager)
        buckets = store.keyspace.buckets  # records the layout of a new namespace
        store.client.delete(store.keyspace.meta)
        return buckets


PROBES: dict[str, Probe] = {
    "redis_url": Probe(
        ("?db=1", "?db=2", "?db=3", "?db=4"),
        lambda s, _t: _landed(s, f"{s.prefix}:*"),
        lambda v: [(int(v.rpartition("=")[2]), PREFIX)],
    ),
    "redis_password": Probe(SECRETS, _kwarg("password")),
    "redis_password_file": Probe(
        SECRET_FILES, _file_secret("redis_password"), lambda v: f"secret read from {v}"
    ),
    "tls_ca_file": Probe(("/ca1", "/ca2", "/ca3", "/ca4"), _tls("ssl_ca_certs")),
    "tls_cert_file": Probe(("/c1", "/c2", "/c3", "/c4"), _tls("ssl_certfile")),
    "tls_key_file": Probe(("/k1", "/k2", "/k3", "/k4"), _tls("ssl_keyfile")),
    "sentinel_username": Probe(("u1", "u2", "u3", "u4"), _sentinel("username")),
    "sentinel_password": Probe(SECRETS, _sentinel("password")),
    "sentinel_password_file": Probe(
        SECRET_FILES, _file_secret("sentinel_password"), lambda v: f"secret read from {v}"
    ),
    "wait_replicas": Probe(
        ("1", "2", "3", "4"), lambda s, _t: redis_store(_manager(s)).scripts.wait_replicas, int
    ),
    "wait_timeout": Probe(
        ("0.5", "1.5", "2", "3"),
        lambda s, _t: redis_store(_manager(s)).scripts.wait_timeout_ms,
        lambda v: int(float(v) * 1000),
    ),
    "max_connections": Probe(("7", "8", "9", "10"), lambda s, _t: _pool(s).max_connections, int),
    "socket_timeout": Probe(("1.5", "2", "3", "4"), _kwarg("socket_timeout"), float),
    "connect_timeout": Probe(("1.5", "2", "3", "4"), _kwarg("socket_connect_timeout"), float),
    "timeout": Probe(("1.5", "2", "3", "4"), lambda s, _t: _kwarg("retry")(s, _t).budget_s, float),
    "health_timeout": Probe(("1", "1.5", "2.5", "3"), _health_budget, float),
    "pool_timeout": Probe(("1.5", "2", "3", "4"), lambda s, _t: _pool(s).timeout, float),
    "retries": Probe(("0", "1", "3", "4"), lambda s, _t: _kwarg("retry")(s, _t).get_retries(), int),
    "health_check_interval": Probe(("0", "10", "20", "40"), _kwarg("health_check_interval"), int),
    "prefix": Probe(
        ("probe-a", "probe-b", "probe-c", "probe-d"),
        lambda s, _t: _landed(s, "probe-[abcd]:*"),
        lambda v: [(0, v)],
    ),
    "buckets": Probe(("65", "66", "67", "68"), _buckets, int),
    "code_secret": Probe(
        SECRETS,
        lambda s, _t: _manager(s).codes.fingerprint(),
        lambda v: CodeHasher(v).fingerprint(),
    ),
    "code_secret_file": Probe(
        SECRET_FILES,
        lambda s, _t: _manager(s).codes.fingerprint(),
        lambda v: CodeHasher(f"secret read from {v}").fingerprint(),
    ),
    "lifetime": _policy("lifetime_ms", 1000),
    "code_lifetime": _policy("code_lifetime_ms", 1000),
    "code_length": _policy("code_length"),
    "max_attempts": _policy("max_attempts"),
    "resend_cooldown": _policy("resend_cooldown_ms", 1000),
    "max_resends": _policy("max_resends"),
    "funnel_days": _policy("funnel_days"),
    "signups_per_client": _policy("signups_per_client"),
    "codes_per_client": _policy("codes_per_client"),
    "client_window": _policy("client_window_ms", 1000),
    "mail_url": Probe(
        ("none", "console", "smtp://h1:25", "smtps://h2:465"),
        lambda s, _t: MailConfig.from_settings(s).url,
    ),
    "mail_from": Probe(
        ("a <a@x.org>", "b@x.org", "c@x.org", "d@x.org"),
        lambda s, _t: MailConfig.from_settings(s).sender,
    ),
    "mail_subject": Probe(
        ("Code", "Your code", "Hello", "Verify"),
        lambda s, _t: MailConfig.from_settings(s).subject,
    ),
    "mail_template": Probe(
        ("/t1", "/t2", "/t3", "/t4"),
        lambda s, _t: str(MailConfig.from_settings(s).template),
    ),
    "mail_timeout": Probe(
        ("1", "2", "3", "4"), lambda s, _t: MailConfig.from_settings(s).timeout, float
    ),
    "audit_label": Probe(("deploy-1", "deploy-2", "cron", "manual"), _audit_label),
    "audit_max_entries": Probe(("100", "200", "300", "400"), _audit_cap, int),
    "env": Probe(("development", "staging", "production", "staging"), lambda s, _t: s.env),
    "data_dir": Probe(
        ("/d1", "/d2", "/d3", "/d4"),
        lambda s, _t: str(EmbeddedServer.from_settings(s).data_dir),
    ),
    "redis_server": Probe(
        ("/b1", "/b2", "/b3", "/b4"),
        lambda s, _t: str(EmbeddedServer.from_settings(s).binary_override),
    ),
}


def test_every_setting_has_a_probe():
    assert set(PROBES) == set(Settings.model_fields)


@pytest.fixture
def base(
    redis_proc: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pw_hash: str
) -> dict[str, str]:
    """A working environment (server, secret) that each case overrides one setting of."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    _PW_HASH[:] = [pw_hash]
    for n in range(1, 5):
        (tmp_path / f"s{n}.txt").write_text(f"secret read from s{n}.txt\n")
        (tmp_path / f"s{n}.txt").chmod(0o600)  # secret files must be private
    return {
        "REGCTL_REDIS_URL": redis_proc.url,
        "REGCTL_CODE_SECRET": SECRET,
        "REGCTL_PREFIX": PREFIX,
    }


def _value(name: str, raw: str, base: dict[str, str]) -> str:
    """The value as a user writes it: URLs are the test server's with a db."""
    return base["REGCTL_REDIS_URL"] + raw if name == "redis_url" else raw


def _toml_literal(raw: str) -> str:
    try:
        float(raw)
    except ValueError:
        return json.dumps(raw)
    return raw


def _load(
    layers: dict[str, tuple[str, str]], name: str, base: dict[str, str], tmp_path: Path
) -> LoadedSettings:
    """Load with ``name`` set in the given layers: layer -> (variable name, raw value)."""
    # A secret and its file are never both set.
    taken = {*env_names(name), f"{ENV_PREFIX}{name.removesuffix('_file').upper()}"}
    environ = {k: v for k, v in base.items() if k not in taken}
    overrides: dict[str, Any] = {}
    env_file = config_file = None
    for layer, (variable, raw) in layers.items():
        value = _value(name, raw, base)
        if layer == "flag":
            overrides[name] = value
        elif layer == "environment":
            environ[variable] = value
        elif layer == "env file":
            env_file = tmp_path / "settings.env"
            env_file.write_text(f"# regctl\n{variable}={value}\n")
            env_file.chmod(0o600)  # (it may hold a secret)
        else:
            config_file = tmp_path / "regctl.toml"
            config_file.write_text(f"{name} = {_toml_literal(value)}\n")
            config_file.chmod(0o600)
    return load_settings(overrides, env_file=env_file, config_file=config_file, environ=environ)


SOURCES = ["config file", "env file", "environment", "flag"]
CASES = [
    pytest.param(name, layer, variable, id=f"{name}-{layer}-{variable}")
    for name in Settings.model_fields
    for layer in SOURCES
    if layer != "flag" or name in FLAGS
    for variable in (env_names(name) if layer in ("environment", "env file") else [name])
]


@pytest.mark.parametrize(("name", "layer", "variable"), CASES)
def test_a_setting_from_each_source_reaches_what_uses_it(
    name: str, layer: str, variable: str, base: dict[str, str], tmp_path: Path
):
    probe = PROBES[name]
    raw = probe.values[1]
    loaded = _load({layer: (variable, raw)}, name, base, tmp_path)
    assert probe.seen(loaded.settings, tmp_path) == probe.expected(raw)
    source = loaded.sources[name]
    assert source.startswith(layer)
    assert variable in source or layer in ("flag", "config file")


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_flags_beat_environment_beat_env_file_beat_config_file(
    name: str, base: dict[str, str], tmp_path: Path
):
    probe = PROBES[name]
    variable = env_names(name)[0]
    layers = [layer for layer in SOURCES if layer != "flag" or name in FLAGS]
    for top in range(len(layers)):
        given = {layer: (variable, probe.values[i]) for i, layer in enumerate(layers[: top + 1])}
        loaded = _load(given, name, base, tmp_path)
        assert probe.seen(loaded.settings, tmp_path) == probe.expected(probe.values[top]), given


def test_the_regctl_name_beats_the_legacy_name_in_one_layer(base: dict[str, str]):
    loaded = load_settings(
        environ={**base, "REDIS_MAX_CONNECTIONS": "9", "REGCTL_MAX_CONNECTIONS": "7"}
    )
    assert loaded.settings.max_connections == 7
    assert loaded.ignored["max_connections"] == ["environment REDIS_MAX_CONNECTIONS (overridden)"]


def test_a_bad_value_a_higher_layer_overrides_is_refused(tmp_path: Path, base: dict[str, str]):
    """It would take effect, unchecked until then, the day the higher one goes."""
    (tmp_path / "regctl.toml").write_text("max_attempts = 7.5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(
            config_file=tmp_path / "regctl.toml", environ={**base, "REGCTL_MAX_ATTEMPTS": "5"}
        )
    assert caught.value.message == (
        f"bad setting max_attempts (from config file {tmp_path / 'regctl.toml'} line 1, "
        "overridden by environment REGCTL_MAX_ATTEMPTS): must be a whole number"
    )
    assert "applies as soon as the other is unset" in str(caught.value.hint)


def test_a_bad_secret_its_file_overrides_is_refused_naming_the_file_setting(
    tmp_path: Path, base: dict[str, str]
):
    """(A secret's file replaces the secret given lower down: the override was looked
    up under the secret's own name, a KeyError, exit 70.)"""
    config = tmp_path / "regctl.toml"
    config.write_text('code_secret = "short"\n')
    config.chmod(0o600)
    environ = {**base, "REGCTL_CODE_SECRET_FILE": str(tmp_path / "s1.txt")}
    environ.pop("REGCTL_CODE_SECRET", None)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config, environ=environ)
    assert caught.value.message.startswith(
        f"bad setting code_secret (from config file {config} line 1, "
        "overridden by environment REGCTL_CODE_SECRET_FILE): "
    )


def test_an_overridden_value_is_held_to_its_own_bounds_not_to_rules_between_settings(
    tmp_path: Path, base: dict[str, str]
):
    """Two hours is a valid code lifetime, though longer than the record lifetime that
    overrides the config file's: that rule is checked on the values in effect."""
    (tmp_path / "regctl.toml").write_text("code_lifetime = 7200\nlifetime = 86400\n")
    environ = {**base, "REGCTL_CODE_LIFETIME": "600", "REGCTL_LIFETIME": "3600"}
    loaded = load_settings(config_file=tmp_path / "regctl.toml", environ=environ)
    assert (loaded.settings.code_lifetime, loaded.settings.lifetime) == (600, 3600)


def test_a_legacy_variable_a_regctl_one_overrides_is_left_to_its_program(base: dict[str, str]):
    """REDIS_URL may be set for another program, in a form regctl does not take."""
    environ = {**base, "REDIS_URL": "memcached://cache:11211", "REGCTL_REDIS_URL": "redis://r"}
    assert load_settings(environ=environ).settings.redis_url == "redis://r"


# --- empty means unset --------------------------------------------------------------


def test_an_empty_variable_does_not_override_a_lower_layer(base: dict[str, str], tmp_path: Path):
    (tmp_path / ".env").write_text(f"REDIS_URL={base['REGCTL_REDIS_URL']}?db=3\n")
    environ = {**base, "REGCTL_REDIS_URL": ""}
    loaded = load_settings(environ=environ)
    assert loaded.settings.redis_url == base["REGCTL_REDIS_URL"] + "?db=3"
    assert loaded.sources["redis_url"] == "env file ./.env line 1 (REDIS_URL)"
    assert loaded.ignored["redis_url"] == ["environment REGCTL_REDIS_URL (empty)"]


def test_an_empty_url_does_not_select_the_embedded_store(cli: Cli, tmp_path: Path):
    real_url = cli.env["REGCTL_REDIS_URL"]
    add = ["add", "empty@example.com", "-f", "E", "-l", "U", "--password-stdin"]
    assert cli(*add, input="a long enough password\n").exit_code == 0
    ran = cli(
        "list",
        "-o",
        "name",
        REGCTL_REDIS_URL="",
        REDIS_URL=real_url,
        REGCTL_DATA_DIR=str(tmp_path / "emb"),
    )
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout == "empty@example.com\n"
    assert not (tmp_path / "emb").exists()


def test_config_says_an_empty_variable_was_ignored(cli: Cli):
    ran = cli("config", REGCTL_MAX_ATTEMPTS="")
    row = next(line for line in ran.stdout.splitlines() if line.startswith("max_attempts\t"))
    assert row == "max_attempts\t5\tdefault; ignored: environment REGCTL_MAX_ATTEMPTS (empty)"


# --- unknown names ---------------------------------------------------------------------


def test_an_unknown_regctl_variable_exits_78_with_a_suggestion(cli: Cli):
    ran = cli("list", REGCTL_REDIS_ULR="redis://x")
    assert ran.exit_code == 78
    assert ran.stderr == (
        "Error: unknown setting REGCTL_REDIS_ULR (environment) — did you mean REGCTL_REDIS_URL?\n"
    )


def test_an_unknown_regctl_key_in_the_env_file_exits_78(cli: Cli, tmp_path: Path):
    (tmp_path / ".env").write_text("OTHER_APP=1\nREGCTL_PREFIX=x\nREGCTL_MAX_ATEMPTS=3\n")
    ran = cli("list")
    assert ran.exit_code == 78
    assert (
        "unknown setting REGCTL_MAX_ATEMPTS (env file ./.env line 3 (REGCTL_MAX_ATEMPTS))"
        in ran.stderr
    )
    assert "did you mean REGCTL_MAX_ATTEMPTS?" in ran.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_atempts = 3\n", "unknown key 'max_atempts' in config file"),
        ("[redis]\nurl = 'redis://x'\n", "unknown table 'redis' in config file"),
        ("prefix = \n", "cannot read config file"),
    ],
)
def test_an_unknown_or_broken_config_file_exits_78(
    cli: Cli, tmp_path: Path, text: str, message: str
):
    (tmp_path / "regctl.toml").write_text(text)
    ran = cli("--config", str(tmp_path / "regctl.toml"), "list")
    assert ran.exit_code == 78
    assert message in ran.stderr
    assert ran.stderr.count("\n") == 1


def test_the_example_config_file_is_complete_and_loads(tmp_path: Path):
    text = (ROOT / EXAMPLE_CONFIG).read_text()
    assert load_settings(config_file=ROOT / EXAMPLE_CONFIG, environ={}).settings == Settings()
    secrets = ("redis_password", "sentinel_password", "code_secret")  # their _file forms are on
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(
        "\n".join(
            line[2:]
            if line.startswith("# ") and " = " in line and line[2:].split()[0] not in secrets
            else line
            for line in text.splitlines()
        )
    )
    loaded = load_settings(config_file=uncommented, environ={})
    assert set(loaded.sources) == set(Settings.model_fields) - set(secrets)
    assert loaded.settings.redis_url == "redis://localhost:6379/0"


# --- bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REGCTL_LIFETIME", "1e300"),
        ("REGCTL_LIFETIME", "inf"),
        ("REGCTL_CODE_LIFETIME", "nan"),
        ("REGCTL_RESEND_COOLDOWN", "-1"),
        ("REGCTL_SOCKET_TIMEOUT", "0"),
        ("REGCTL_MAX_CONNECTIONS", "1000000"),
        ("REGCTL_CODE_LIFETIME", "90000"),
    ],
)
def test_numeric_settings_are_bounded(variable: str, value: str):
    with pytest.raises(ConfigError, match=rf"\(from environment {variable}\)"):
        load_settings(environ={variable: value})


def test_a_code_lifetime_longer_than_the_record_is_refused():
    with pytest.raises(ConfigError, match="code_lifetime must not exceed lifetime"):
        load_settings(environ={"REGCTL_LIFETIME": "600", "REGCTL_CODE_LIFETIME": "900"})


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path):
    environ = {"REGCTL_CODE_SECRET": SECRET, "REGCTL_CODE_SECRET_FILE": str(tmp_path / "s")}
    with pytest.raises(ConfigError, match="set code_secret or code_secret_file, not both"):
        load_settings(environ=environ)


def test_an_empty_flag_is_invalid_input():
    with pytest.raises(InvalidInput, match="--url must not be empty"):
        load_settings({"redis_url": ""}, environ={})


# --- the library ------------------------------------------------------------------------


def test_the_library_never_starts_the_embedded_store_implicitly(tmp_path: Path):
    settings = load_settings({"data_dir": str(tmp_path / "emb")}, environ={}).settings
    with pytest.raises(ConfigError, match="no Redis URL is configured"):
        RegistrationManager.from_settings(settings)
    assert not (tmp_path / "emb").exists()


def test_the_library_checks_the_code_secret_at_construction(redis_proc: RedisProcess):
    settings = load_settings({"redis_url": redis_proc.url}, environ={}).settings
    with pytest.raises(ConfigError, match="no code secret"):
        RegistrationManager.from_settings(settings)
    with pytest.raises(InvalidInput, match="at least 16 bytes"):  # (refused as it is read)
        load_settings({"redis_url": redis_proc.url, "code_secret": "short"}, environ={})
    RegistrationManager.from_settings(settings, read_only=True).close()


def _bare(
    tmp_path: Path, command: list[str], stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with nothing but what a container would set: HOME, and ``env``."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    variables = [f"{k}={v}" for k, v in {"HOME": str(home), **env}.items()]
    return subprocess.run(
        ["env", "-i", *variables, *command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


def _keys_in(redis_proc: RedisProcess, db: int) -> int:
    """How many keys database ``db`` holds (then empties it)."""
    client = redis_proc.client(db=db)
    try:
        return int(client.dbsize())
    finally:
        client.flushdb()
        client.close()


def test_the_installed_command_reads_plain_redis_url(redis_proc: RedisProcess, tmp_path: Path):
    ran = _bare(
        tmp_path,
        [REGCTL, "add", "envi@example.com", "-f", "E", "-l", "I", "--password-stdin"],
        "a long enough password\n",
        REDIS_URL=redis_proc.url + "?db=5",
        REGCTL_CODE_SECRET=SECRET,
        REGCTL_MAIL_URL="none",
    )
    assert ran.returncode == 0, ran.stderr
    assert _keys_in(redis_proc, 5) > 0
    assert not any((tmp_path / "home").rglob("redis.sock"))  # no embedded server


def test_the_library_reads_plain_redis_url_in_a_fresh_interpreter(
    redis_proc: RedisProcess, tmp_path: Path
):
    code = (
        "from regctl import RegistrationManager\n"
        "m = RegistrationManager.from_settings()\n"
        "m.add('lib@example.com', 'L', 'B', password='a long enough password')\n"
        "print(m.count())\n"
    )
    ran = _bare(
        tmp_path,
        [sys.executable, "-c", code],
        REDIS_URL=redis_proc.url + "?db=6",
        REGCTL_CODE_SECRET=SECRET,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "1\n"
    assert _keys_in(redis_proc, 6) > 0
    assert not any((tmp_path / "home").rglob("redis.sock"))


# --- the store in use --------------------------------------------------------------------


def test_the_readme_settings_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{env_names(name)[0]}`" in readme


# --- what an attacker or a slip could feed in ------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REGCTL_MAIL_URL", "smtp//mail.example.com", "bad setting mail_url"),
        ("REGCTL_MAIL_URL", "smtp://mail:port/", "port must be a number from 1 to 65535"),
        ("REGCTL_MAIL_SUBJECT", "Code\nBcc: x@example.com", "must be one line"),
        ("REGCTL_MAIL_FROM", "a@example.com\r\nBcc: x@example.com", "must be one line"),
        ("REGCTL_MAIL_TEMPLATE", "/nonexistent/template.txt", "cannot read mail template"),
        ("REGCTL_MAIL_FROM", "not an address <<", "the sender must be one address"),
        (
            "REGCTL_MAIL_FROM",
            "shop <a@shop.example>, b@x.example",
            "the sender must be one address",
        ),
        ("REGCTL_MAIL_TEMPLATE", b"Hello {first_name}", "has no {code}"),
        ("REGCTL_MAIL_TEMPLATE", b"{code} {first_name.__class__}", "unknown placeholder"),
        ("REGCTL_MAIL_TEMPLATE", b"{code} \xff\xfe", "is not UTF-8 text"),
    ],
)
def test_mail_settings_are_checked_before_anything_is_written(
    cli: Cli, variable: str, value: str | bytes, message: str, tmp_path: Path
):
    if isinstance(value, bytes):  # a template's content
        (tmp_path / "template.txt").write_bytes(value)
        value = str(tmp_path / "template.txt")
    add = ["add", "mail@example.com", "-f", "M", "-l", "S", "--password-stdin"]
    ran = cli(
        *add, input="a long enough password\n", **{"REGCTL_MAIL_URL": "console", variable: value}
    )
    assert ran.exit_code == 78
    assert message in ran.stderr
    assert cli("list", "-o", "name").stdout == ""


def test_a_wait_timeout_must_be_shorter_than_the_socket_timeout():
    with pytest.raises(ConfigError, match="wait_timeout must be shorter than socket_timeout"):
        load_settings(
            environ={
                "REGCTL_WAIT_REPLICAS": "1",
                "REGCTL_WAIT_TIMEOUT": "10",
                "REGCTL_SOCKET_TIMEOUT": "5",
            }
        )


def test_a_sub_millisecond_wait_timeout_never_means_wait_forever(redis_proc: RedisProcess):
    loaded = load_settings(
        {"redis_url": redis_proc.url, "code_secret": SECRET},
        environ={"REGCTL_WAIT_TIMEOUT": "0.0004"},
    )
    with RegistrationManager.from_settings(loaded.settings) as manager:
        assert redis_store(manager).scripts.wait_timeout_ms == 1  # WAIT n 0 would block forever


@pytest.mark.parametrize(
    "url",
    [
        "redis://app:pa/ss-hunter2@localhost:6379/0",
        "redis://app:pa#ss-hunter2@localhost:6379/0",
        "redis://app:pa?ss-hunter2@localhost:6379/0",
        "unix:///tmp/r.sock?password=hunter2&db=1",
        "redis://localhost/0?password=hunter2",
        "redis://localhost/0?username=u&password=hunter2",
        "redis://:hunter2@localhost/0",
        "redis+sentinel://app:hunter2@127.0.0.1:1,127.0.0.1:2/mymaster",
        "redis+cluster://app:pa/hunter2@127.0.0.1:1,127.0.0.1:2",
        "rediss://app:hunter2@localhost:abc/0",
        "unix://app:pa/hunter2@/tmp/r.sock",
        "redis+sentinel://app:hunter2/x@127.0.0.1:1/mymaster",
        "redis://app:x@localhost/0;password=hunter2",
        "redis://localhost:6379/0?password=se@hunter2",  # (an @ in a query value)
        "unix:///tmp/r.sock?password=se@hunter2",
        "redis+sentinel://:pw@127.0.0.1:1/mymaster/hunter2",  # (a password as the database)
        "redis+cluster://127.0.0.1:1/hunter2",
        "redis+sentinel://:hunter2?Qk9=@127.0.0.1:1/mymaster",  # (a base64 password)
        "redis://:hunter2/Qk9=@localhost:6379/0",
        "redis://:1234?x=hunter2@localhost",
        "redis://localhost:6379/0?password=hun&hunter2",  # (an & in a password, unencoded)
        "redis://localhost:6379/0?password=hun&hunter2=k2",  # (and an = after it)
        "redis://localhost:6379/0?password=Qz9?k2X@hunter2",  # (a ? and an @ in the query)
        "redis://u:1234?x=hunter2@localhost",  # (a host and port, then a query)
    ],
)
def test_no_form_of_redis_url_shows_its_password(cli: Cli, url: str):
    for args in (("config",), ("-o", "json", "config"), ("list",), ("-o", "json", "health")):
        ran = cli(*args, REGCTL_REDIS_URL=url, REGCTL_RETRIES="0", REGCTL_CONNECT_TIMEOUT="0.5")
        assert "hunter2" not in ran.stdout + ran.stderr, (args, ran.stdout, ran.stderr)


@pytest.mark.parametrize(
    ("query", "said"),
    [("foo=bar", "(shown as ***)"), ("socket_timeot=3", "did you mean socket_timeout?")],
)
def test_a_url_parameter_no_connection_takes_is_a_setting_error(
    cli: Cli, redis_proc: RedisProcess, query: str, said: str
):
    """(It was a TypeError at the first command: exit 70, "report the traceback".) Its
    name is not shown: it may be a password's tail after an unencoded &."""
    ran = cli("list", REGCTL_REDIS_URL=f"{redis_proc.url}?{query}&password=hunter2")
    assert ran.exit_code == 78, ran.stderr
    assert "invalid Redis URL" in ran.stderr
    assert "a query parameter no connection takes" in ran.stderr
    assert said in ran.stderr
    assert query.partition("=")[0] not in ran.stderr
    assert "hunter2" not in ran.stderr


@pytest.mark.parametrize(
    ("query", "said"),
    [("protocol=4", "the protocol is 2 or 3"), ("encoding=bogus", "no text encoding is named")],
)
def test_a_url_parameter_redis_py_would_fail_on_at_the_first_command_is_refused(
    cli: Cli, redis_proc: RedisProcess, query: str, said: str
):
    """(An unexpected ConnectionError, a LookupError from the parser: exit 70.)"""
    ran = cli("list", REGCTL_REDIS_URL=f"{redis_proc.url}?{query}")
    assert ran.exit_code == 78, ran.stderr
    assert said in ran.stderr


def test_a_question_mark_in_a_url_fragment_is_no_query():
    check_url("redis://localhost/0#frag?x")  # (as redis-py reads it: no query)


def test_a_url_query_word_without_a_value_is_refused_not_dropped(
    cli: Cli, redis_proc: RedisProcess
):
    """redis-py drops ``?password=hun&ter2``'s ``ter2`` unsaid, and connects with ``hun``."""
    ran = cli("list", REGCTL_REDIS_URL=f"{redis_proc.url}?password=hun&ter2")
    assert ran.exit_code == 78, ran.stderr
    assert "a query parameter without a value" in ran.stderr
    assert "ter2" not in ran.stderr


def test_a_secret_given_in_a_higher_layer_replaces_a_lower_layers_file(tmp_path: Path):
    (tmp_path / "regctl.toml").write_text('code_secret_file = "/run/secrets/regctl"\n')
    loaded = load_settings(
        config_file=tmp_path / "regctl.toml", environ={"REGCTL_CODE_SECRET": SECRET}
    )
    assert loaded.settings.code_secret_value() == SECRET
    assert loaded.settings.code_secret_file is None
    assert loaded.ignored["code_secret_file"] == [
        f"config file {tmp_path / 'regctl.toml'} line 1 (overridden)"
    ]


def test_a_secret_and_its_file_in_one_layer_name_both_sources(tmp_path: Path):
    environ = {"REGCTL_CODE_SECRET": SECRET, "REGCTL_CODE_SECRET_FILE": str(tmp_path / "s")}
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert "code_secret from environment REGCTL_CODE_SECRET" in caught.value.message
    assert "code_secret_file from environment REGCTL_CODE_SECRET_FILE" in caught.value.message


def test_a_legacy_name_overriding_a_config_file_is_said(cli: Cli, tmp_path: Path):
    (tmp_path / "regctl.toml").write_text(f'redis_url = "{cli.env["REGCTL_REDIS_URL"]}"\n')
    ran = cli(
        "--config",
        "regctl.toml",
        "list",
        REGCTL_REDIS_URL="",
        REDIS_URL=cli.env["REGCTL_REDIS_URL"] + "?db=2",
    )
    assert ran.exit_code == 0, ran.stderr
    assert "Note: environment REDIS_URL overrides config file regctl.toml line 1" in ran.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "regctl_prefix",
            "unknown setting regctl_prefix (environment) — did you mean REGCTL_PREFIX?",
        ),
        ("Regctl_Config", "did you mean REGCTL_CONFIG?"),
    ],
)
def test_setting_names_are_exact(cli: Cli, name: str, message: str):
    ran = cli("list", **{name: "x"})
    assert ran.exit_code == 78
    assert message in ran.stderr


def test_the_config_file_variable_cannot_hide_in_an_env_file(cli: Cli, tmp_path: Path):
    (tmp_path / ".env").write_text("REGCTL_CONFIG=/etc/regctl.toml\n")
    ran = cli("list")
    assert ran.exit_code == 78
    assert "REGCTL_CONFIG is read from the environment only" in ran.stderr


@pytest.mark.parametrize("variable", ["REGCTL_REDIS_SERVER", "REGCTL_DATA_DIR"])
def test_a_found_env_file_cannot_choose_a_program_or_a_folder(
    cli: Cli, tmp_path: Path, variable: str
):
    (tmp_path / "evil.sh").write_text("#!/bin/sh\ntouch pwned\n")
    (tmp_path / "evil.sh").chmod(0o755)
    (tmp_path / ".env").write_text(f"{variable}=./evil.sh\n")
    ran = cli("list", REGCTL_REDIS_URL="")
    assert ran.exit_code == 78
    assert f"./.env line 1 may not set {variable}" in ran.stderr
    assert not (tmp_path / "pwned").exists()
    explicit = cli("--env-file", ".env", "config", "-o", "json", REGCTL_REDIS_URL="")
    assert explicit.exit_code == 0, explicit.stderr  # named on purpose: trusted


@pytest.mark.parametrize("file", [".env", "regctl.toml"])
def test_a_settings_file_others_can_write_is_refused(cli: Cli, tmp_path: Path, file: str):
    (tmp_path / file).write_text("")
    (tmp_path / file).chmod(0o666)
    ran = cli("--config", "regctl.toml", "list") if file.endswith("toml") else cli("list")
    assert ran.exit_code == 78
    assert "is writable by others — chmod go-w" in ran.stderr


@pytest.mark.parametrize(
    ("file", "line", "secret"),
    [
        (".env", f"REGCTL_CODE_SECRET={SECRET}", "code_secret"),
        (".env", "REDIS_URL=redis://:hunter2@localhost:1/0", "redis_url"),
        ("regctl.toml", 'redis_password = "hunter2"', "redis_password"),
        ("regctl.toml", 'mail_url = "smtp://u:hunter2@localhost:1"', "mail_url"),
        (".env", "REDIS_URL=redis://:***@localhost:1/0", "redis_url"),  # (a password: ***)
    ],
)
def test_a_settings_file_others_can_read_is_refused_when_it_holds_a_secret(
    cli: Cli, tmp_path: Path, file: str, line: str, secret: str
):
    (tmp_path / file).write_text(line + "\n")
    (tmp_path / file).chmod(0o644)  # (as a new file often is)
    config = ("--config", "regctl.toml") if file.endswith("toml") else ()
    ran = cli(*config, "config", REGCTL_CODE_SECRET="")
    assert ran.exit_code == 78
    assert f"holds a secret ({secret}) and is readable or writable by others" in ran.stderr
    assert "hunter2" not in ran.stderr
    (tmp_path / file).chmod(0o600)
    assert cli(*config, "config", REGCTL_CODE_SECRET="").exit_code == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0?client_name=a@b",
        "unix://:pw@/tmp/a@b/r.sock",
        "unix:///tmp/a@b.sock",
        "redis+sentinel://127.0.0.1:1/mymaster/3",
        "redis+cluster://127.0.0.1:1/0",
        "redis://localhost/0#fragment",
        "redis://localhost/%30",
    ],
)
def test_an_at_sign_outside_the_user_info_is_no_password(url: str):
    check_url(url)  # (accepted)


def test_a_settings_file_without_a_secret_may_be_read_by_others(cli: Cli, tmp_path: Path):
    (tmp_path / ".env").write_text(
        "REGCTL_PREFIX=shared\nREDIS_URL=redis://localhost:1/0\nREGCTL_CODE_SECRET=\n"
    )
    (tmp_path / ".env").chmod(0o644)
    assert cli("config", REGCTL_CODE_SECRET="").exit_code == 0


def test_a_relative_path_in_a_config_file_is_the_files_not_the_current_directorys(
    cli: Cli, tmp_path: Path
):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "code-secret").write_text(SECRET + "\n")
    (folder / "code-secret").chmod(0o600)
    (folder / "regctl.toml").write_text('code_secret_file = "code-secret"\n')
    ran = cli("--config", "etc/regctl.toml", "-o", "json", "config", REGCTL_CODE_SECRET="")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["code_secret_file"]["value"] == str(folder / "code-secret")


def test_a_setting_an_env_file_gives_twice_is_refused(cli: Cli, tmp_path: Path):
    (tmp_path / ".env").write_text("REGCTL_PREFIX=one\nREGCTL_MAX_ATTEMPTS=3\nREGCTL_PREFIX=two\n")
    ran = cli("config")
    assert ran.exit_code == 78
    assert "./.env sets REGCTL_PREFIX twice, on lines 1 and 3" in ran.stderr


def test_a_secret_file_that_is_not_text_exits_78(cli: Cli, tmp_path: Path):
    (tmp_path / "secret").write_bytes(b"\xff\xfe not utf-8 \x80")
    (tmp_path / "secret").chmod(0o600)
    ran = cli(
        "verify", "a@example.com", "123456", REGCTL_CODE_SECRET="", REGCTL_CODE_SECRET_FILE="secret"
    )
    assert ran.exit_code == 78
    assert "is not UTF-8 text" in ran.stderr


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda path: path.mkdir(mode=0o700), "is a directory"),  # (no chmod would help)
        (lambda path: path.write_text("\n"), "is empty"),  # (sent, and refused as wrong: 77)
    ],
)
def test_a_password_file_that_holds_no_password_exits_78(
    cli: Cli, tmp_path: Path, make: Callable[[Path], object], said: str
):
    make(tmp_path / "password")
    (tmp_path / "password").chmod(0o700 if (tmp_path / "password").is_dir() else 0o600)
    ran = cli("list", REGCTL_REDIS_PASSWORD_FILE="password")
    assert ran.exit_code == 78, ran.stderr
    assert said in ran.stderr


def test_a_short_code_secret_stops_every_command_not_only_writes(cli: Cli, tmp_path: Path):
    (tmp_path / "secret").write_text("short\n")
    (tmp_path / "secret").chmod(0o600)
    for secret in ({"REGCTL_CODE_SECRET": "abc"}, {"REGCTL_CODE_SECRET_FILE": "secret"}):
        ran = cli("list", **{"REGCTL_CODE_SECRET": "", **secret})
        assert ran.exit_code == 78, (secret, ran.stderr)
        assert "must be at least 16 bytes" in ran.stderr


def test_toml_booleans_are_not_numbers_and_a_bom_is_fine(tmp_path: Path):
    (tmp_path / "bool.toml").write_text("wait_replicas = true\n")
    with pytest.raises(ConfigError, match="must be a number or a string"):
        load_settings(config_file=tmp_path / "bool.toml", environ={})
    (tmp_path / "bom.toml").write_bytes("\ufeffmax_attempts = 4\n".encode())
    assert load_settings(config_file=tmp_path / "bom.toml", environ={}).settings.max_attempts == 4


def test_a_directory_is_not_a_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="is not a file"):
        load_settings(config_file=tmp_path, environ={})
