"""Settings: flags > environment > .env file > TOML config file > defaults.

Built per call by ``load_settings``; nothing is read at import time. Every field
has a ``REGCTL_`` variable; the original system's ``REDIS_URL``,
``REDIS_MAX_CONNECTIONS`` and ``REDIS_SOCKET_TIMEOUT`` are accepted too. Nothing
is silently ignored: an unknown ``REGCTL_`` name or config key is an error, an
empty value is unset (and reported by ``regctl config``), and each value knows
the variable, file and line it came from. Secrets are ``SecretStr`` and can come
from a file (``*_file`` fields).
"""

from __future__ import annotations

import difflib
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    JsonValue,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from regctl.errors import ConfigError, InvalidInput, RegctlError
from regctl.keys import DEFAULT_BUCKETS, MAX_BUCKETS, MIN_BUCKETS, validate_prefix
from regctl.mail import MAX_TIMEOUT_S
from regctl.model import MAX_CODE_LIFETIME_MS, MAX_FUNNEL_DAYS, MAX_LIFETIME_MS, Policy
from regctl.security import check_trusted, secret_key
from regctl.store.base import AUDIT_MAX
from regctl.urls import has_password, mask_url

ENV_PREFIX = "REGCTL_"
CONFIG_ENV = "REGCTL_CONFIG"
MAX_LIFETIME_S = MAX_LIFETIME_MS // 1000
MAX_CODE_LIFETIME_S = MAX_CODE_LIFETIME_MS // 1000
_POLICY = Policy()


def _field(
    default: Any,
    meaning: str,
    *legacy: str,
    unset: str | None = None,
    example: str | None = None,
    **bounds: Any,
) -> Any:
    """A setting: its ``REGCTL_`` name (and any legacy names), meaning and bounds.

    ``unset`` says what an unset optional setting means; ``example`` is the value
    the generated example config file shows for it.
    """
    extra: dict[str, JsonValue] = {
        "legacy": list[JsonValue](legacy),
        "unset": unset,
        "example": example,
    }
    return Field(default, description=meaning, json_schema_extra=extra, **bounds)


# The settings that are URLs, shown masked (their other secrets are SecretStr).
_URL_FIELDS = frozenset({"redis_url", "mail_url"})
# The settings that are secrets (SecretStr), each also readable from a private file.
_SECRETS = ("redis_password", "sentinel_password", "code_secret")


class Settings(BaseSettings):
    """Every knob regctl has; the policy defaults are ``Policy``'s."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,  # (a URL's password: the messages say what is wrong)
    )

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # The URLs may hold passwords (redis://:pw@..., smtp://user:pw@...): a backend
        # that logs its settings at start-up logs them masked, as the secrets are.
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name in _URL_FIELDS and value else value)

    redis_url: str | None = _field(
        None,
        "`redis://`, `rediss://`, `unix://`, `redis+sentinel://`, `redis+cluster://`"
        ' (see "Running at scale")',
        "REDIS_URL",
        unset="the embedded store (CLI only)",
        example="redis://localhost:6379/0",
    )
    redis_password: SecretStr | None = _field(
        None, "password, if not in the URL", example="change-me"
    )
    redis_password_file: Path | None = _field(
        None, "file holding the password", example="/run/secrets/redis-password"
    )
    tls_ca_file: Path | None = _field(
        None,
        "CA bundle that signs the server's certificate (`rediss://`)",
        example="/etc/ssl/redis-ca.pem",
    )
    tls_cert_file: Path | None = _field(
        None, "client certificate (`rediss://`)", example="/etc/ssl/regctl.pem"
    )
    tls_key_file: Path | None = _field(
        None, "client certificate's key (`rediss://`)", example="/etc/ssl/regctl.key"
    )
    sentinel_username: str | None = _field(None, "Sentinel-side user", example="sentinel")
    sentinel_password: SecretStr | None = _field(
        None, "Sentinel-side password", example="change-me"
    )
    sentinel_password_file: Path | None = _field(
        None, "file holding the Sentinel-side password", example="/run/secrets/sentinel-password"
    )
    wait_replicas: int = _field(
        0, "replicas that must acknowledge each add/resend/verify (`WAIT`)", ge=0, le=100
    )
    wait_timeout: float = _field(1.0, "seconds to wait for them", gt=0, le=60)
    max_connections: int = _field(
        50, "connection pool size", "REDIS_MAX_CONNECTIONS", ge=1, le=10_000
    )
    socket_timeout: float = _field(5.0, "seconds per reply", "REDIS_SOCKET_TIMEOUT", gt=0, le=300)
    connect_timeout: float = _field(5.0, "seconds to connect", gt=0, le=300)
    timeout: float | None = _field(
        None,
        "seconds one call may take in all: a pooled connection, connect, retries and backoff",
        unset="the socket timeout",
        example="5",
        gt=0,
        le=300,
    )
    health_timeout: float = _field(
        2.0, "seconds `health` waits for Redis in all (it must answer during a stall)", gt=0, le=60
    )
    pool_timeout: float = _field(
        5.0,
        "seconds to wait for a free pooled connection (within the call's deadline)",
        gt=0,
        le=300,
    )
    retries: int = _field(
        2, "retries on connection errors and timeouts (jittered backoff)", ge=0, le=10
    )
    health_check_interval: int = _field(
        30, "seconds between connection health checks (0: off)", ge=0, le=3600
    )
    prefix: str = _field("regctl", "key prefix: 1-64 of `A-Za-z0-9_.:-`")
    buckets: int = _field(
        DEFAULT_BUCKETS,
        "hash-slot buckets of a new namespace (the first writer's count is kept; others refused)",
        ge=MIN_BUCKETS,
        le=MAX_BUCKETS,
    )
    code_secret: SecretStr | None = _field(
        None,
        "HMAC key for codes, at least 16 bytes; the same for every writer",
        unset="generated (embedded store only)",
        example="use-32-random-bytes-from-a-secret-store",
    )
    code_secret_file: Path | None = _field(
        None, "file holding the code secret", example="/run/secrets/regctl-code-secret"
    )

    lifetime: float = _field(
        _POLICY.lifetime_ms / 1000,
        "record lifetime, seconds (never extended)",
        ge=1,
        le=MAX_LIFETIME_S,
    )
    code_lifetime: float = _field(
        _POLICY.code_lifetime_ms / 1000,
        "code lifetime, seconds (at most the record lifetime)",
        ge=1,
        le=MAX_CODE_LIFETIME_S,
    )
    code_length: int = _field(_POLICY.code_length, "digits per code", ge=6, le=10)
    max_attempts: int = _field(
        _POLICY.max_attempts, "wrong codes before the record locks", ge=1, le=100
    )
    resend_cooldown: float = _field(
        _POLICY.resend_cooldown_ms / 1000,
        "seconds between codes",
        ge=0,
        le=MAX_CODE_LIFETIME_S,
    )
    max_resends: int = _field(_POLICY.max_resends, "resends per registration", ge=0, le=100)
    funnel_days: int = _field(
        _POLICY.funnel_days,
        "days the per-day funnel counters are kept (0: off)",
        ge=0,
        le=MAX_FUNNEL_DAYS,
    )
    signups_per_client: int = _field(
        _POLICY.signups_per_client,
        "sign-ups per client key (`client=`, an IP) per client window (0: no limit)",
        ge=0,
        le=1_000_000,
    )
    codes_per_client: int = _field(
        _POLICY.codes_per_client,
        "codes sent (sign-ups and resends) per client key per client window (0: no limit)",
        ge=0,
        le=1_000_000,
    )
    client_window: float = _field(
        _POLICY.client_window_ms / 1000,
        "seconds of the sliding window of the client limits",
        ge=1,
        le=MAX_LIFETIME_S,
    )

    mail_url: str = _field(
        "console", "`smtp://user:pass@host:port` (STARTTLS), `smtps://…`, `console`, `none`"
    )
    mail_from: str = _field("regctl <no-reply@localhost>", "sender")
    mail_subject: str = _field("Your verification code", "subject")
    mail_template: Path | None = _field(
        None,
        "body file with `{first_name}` `{code}` `{minutes}` `{email}`",
        unset="a built-in text",
        example="/etc/regctl/code-mail.txt",
    )
    mail_timeout: float = _field(10, "seconds for the SMTP conversation", gt=0, le=MAX_TIMEOUT_S)

    audit_max_entries: int = _field(
        AUDIT_MAX,
        "audit trail entries kept (about: the oldest are trimmed in whole stream nodes)",
        ge=100,
        le=100_000_000,
    )
    audit_label: str | None = _field(
        None,
        "a label added to the audit trail's `who` (the OS account is always recorded)",
        example="deploy-42",
    )
    env: Literal["development", "staging", "production"] | None = _field(
        None,
        "`development`, `staging` or `production` (named in the banner;"
        " production needs `--yes` to delete)",
        example="production",
    )
    data_dir: Path | None = _field(
        None,
        "the embedded store's home",
        unset="the user data dir",
        example="/var/lib/regctl",
    )
    redis_server: Path | None = _field(
        None,
        "the embedded store's `redis-server`",
        unset="the recorded one, else PATH's (the `embedded` extra's copy last)",
        example="/usr/bin/redis-server",
    )

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        from regctl.urls import check_url

        if not value:
            return None
        try:
            check_url(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("code_secret")
    @classmethod
    def _check_code_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # (refused for every command, not at the first code: a setting out of bounds
        # is an error wherever it would apply)
        if value is not None:
            try:
                secret_key(value.get_secret_value())
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("mail_url")
    @classmethod
    def _check_mail_url(cls, value: str) -> str:
        from regctl.mail import check_mail_url

        return check_mail_url(value)

    @field_validator("mail_from", "mail_subject", "audit_label")
    @classmethod
    def _check_header(cls, value: str | None, info: ValidationInfo) -> str | None:
        from regctl.mail import check_header

        what = str(info.field_name).replace("_", " ")
        return None if value is None else check_header(value, what)

    @field_validator("mail_from")
    @classmethod
    def _check_sender(cls, value: str) -> str:
        from regctl.mail import check_sender

        return check_sender(value)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        try:
            return validate_prefix(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _check_lifetimes(self) -> Settings:
        if self.code_lifetime > self.lifetime:
            raise ValueError("code_lifetime must not exceed lifetime")
        if self.wait_replicas and self.wait_timeout >= self.socket_timeout:
            raise ValueError("wait_timeout must be shorter than socket_timeout")
        for secret in _SECRETS:
            if getattr(self, secret) is not None and getattr(self, f"{secret}_file") is not None:
                raise ValueError(f"set {secret} or {secret}_file, not both")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges the sources itself, to know where each value came from.
        return (init_settings,)

    @property
    def call_budget(self) -> float:
        """The total deadline of one call, in seconds."""
        return self.timeout if self.timeout is not None else self.socket_timeout

    def policy(self) -> Policy:
        return Policy(
            lifetime_ms=int(self.lifetime * 1000),
            code_lifetime_ms=int(self.code_lifetime * 1000),
            code_length=self.code_length,
            max_attempts=self.max_attempts,
            resend_cooldown_ms=int(self.resend_cooldown * 1000),
            max_resends=self.max_resends,
            funnel_days=self.funnel_days,
            signups_per_client=self.signups_per_client,
            codes_per_client=self.codes_per_client,
            client_window_ms=int(self.client_window * 1000),
        )

    def code_secret_value(self) -> str | None:
        secret = _secret(self.code_secret, self.code_secret_file, "code secret")
        if secret is not None:
            secret_key(secret)  # (a file's: the value's was checked as it was read)
        return secret

    def redis_password_value(self) -> str | None:
        return _secret(self.redis_password, self.redis_password_file, "Redis password")

    def sentinel_password_value(self) -> str | None:
        return _secret(self.sentinel_password, self.sentinel_password_file, "Sentinel password")


def _secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    path = path.expanduser()
    try:
        if path.is_dir():  # (before its mode: no chmod makes a folder a secret)
            raise ConfigError(f"the {what} file {path} is a directory", "name the file in it")
        check_trusted(path, f"the {what} file", private=True, group_of_root=True)
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {path} is not UTF-8 text") from None
    if not secret:  # (an empty password would be sent, and refused as a wrong one)
        raise ConfigError(f"the {what} file {path} is empty", "write the secret into it")
    return secret


@dataclass(frozen=True)
class LoadedSettings:
    """Settings plus, for each field that was set, where its value came from, and
    the values that were given but not used (empty, or overridden in the same layer)."""

    settings: Settings
    sources: Mapping[str, str]
    ignored: Mapping[str, list[str]] = dataclass_field(default_factory=dict)

    def legacy_overrides(self) -> list[str]:
        """Where a legacy name (REDIS_URL, often set for another program) won over a
        value given for regctl: worth a word to the user."""
        notes = []
        for name, origin in self.sources.items():
            if _legacy(origin):
                lost = [i for i in self.ignored.get(name, []) if not i.endswith("(empty)")]
                notes += [f"{origin} overrides {i.removesuffix(' (overridden)')}" for i in lost]
        return notes


def env_names(name: str) -> list[str]:
    """The environment (and .env) names of a setting: ``REGCTL_NAME`` first, then legacy ones."""
    extra = Settings.model_fields[name].json_schema_extra
    legacy = extra.get("legacy", []) if isinstance(extra, dict) else []
    return [ENV_PREFIX + name.upper(), *(str(n) for n in legacy)]  # type: ignore[union-attr]


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    env_file: Path | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Merge flags > environment > .env > TOML config > defaults into validated Settings.

    Every name under ``REGCTL_`` and every key of the config file must be a setting
    (a misspelt one is a ConfigError with a did-you-mean); an empty value is unset.
    """
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    for path, what in ((config_file, "config file"), (env_file, "env file")):
        if path is not None and not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"{what} {path} {state}")
    layers = [
        *(_read_toml(config_file) if config_file else []),
        *_read_dotenv(env_file or Path(".env"), explicit=env_file is not None),
        *_named_values(((name, value, f"environment {name}") for name, value in env.items())),
        *_flags(overrides or {}),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ignored: dict[str, list[str]] = {}
    for given in layers:
        if given.value == "":
            ignored.setdefault(given.field, []).append(f"{given.origin} (empty)")
            continue
        previous = sources.get(given.field)
        if previous is not None:
            ignored.setdefault(given.field, []).append(f"{previous} (overridden)")
        sibling = _SIBLINGS.get(given.field)
        if sibling in sources and _layer(sources[sibling]) != _layer(given.origin):
            # A secret given here replaces a lower layer's file for it, and vice versa.
            ignored.setdefault(sibling, []).append(f"{sources.pop(sibling)} (overridden)")
            merged.pop(sibling)
        merged[given.field] = given.value
        sources[given.field] = given.origin
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0], sources) from None
    _check_overridden(layers, merged, sources)
    return LoadedSettings(settings, sources, ignored)


def _check_overridden(
    layers: list[_Given], merged: Mapping[str, Any], sources: Mapping[str, str]
) -> None:
    """A value given for regctl and overridden by a higher layer must be valid on its
    own: it takes effect the day the higher one goes (a typo in the config file, hidden
    by the environment of today's shell). A legacy name's value (``REDIS_URL``) may be
    another program's, and a rule between settings is checked where they take effect."""
    for given in layers:
        if given.value == "" or sources.get(given.field) == given.origin or _legacy(given.origin):
            continue
        try:
            Settings(**{**merged, given.field: given.value})
        except ValidationError as exc:
            own = [e for e in exc.errors() if tuple(e["loc"]) == (given.field,)]
            if own:
                # (by the same setting, or by its twin: a secret replaces its file)
                by = sources.get(given.field) or sources[_SIBLINGS[given.field]]
                origin = f"{given.origin}, overridden by {by}"
                hint = "correct or remove it: it applies as soon as the other is unset"
                raise _refusal(own[0], {given.field: origin}, hint) from None


def _refusal(error: Any, sources: Mapping[str, str], hint: str | None = None) -> RegctlError:
    """One of pydantic's errors as regctl's refusal, naming where the value came from."""
    field = ".".join(str(p) for p in error["loc"])
    message = _plain_message(error)
    if not field:  # a rule between settings: name where each of them came from
        named = [n for n in Settings.model_fields if re.search(rf"\b{n}\b", message)]
        origins = ", ".join(f"{n} from {sources.get(n, 'default')}" for n in named)
        return ConfigError(f"bad settings: {message} ({origins})")
    origin = sources.get(field, "default")
    if origin.startswith("flag"):  # typed on this command line: invalid input
        return InvalidInput(f"invalid {origin.removeprefix('flag ')}: {message}")
    return ConfigError(f"bad setting {field} (from {origin}): {message}", hint)


_MESSAGES = {
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "finite_number": "must be a finite number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "literal_error": "must be one of {expected}",
    "string_type": "must be a string",
}


def _plain_message(error: Any) -> str:
    """pydantic's error in regctl's words (no "Input should be", no "Value error,")."""
    template = _MESSAGES.get(error["type"])
    if template is None:
        return str(error["msg"]).removeprefix("Value error, ")
    bounds = {
        k: int(v) if isinstance(v, float) and v.is_integer() else v
        for k, v in error.get("ctx", {}).items()
    }
    return template.format(**bounds)


@dataclass(frozen=True)
class _Given:
    field: str
    value: Any
    origin: str


_FIELD_BY_ENV_NAME = {
    env_name: name for name in Settings.model_fields for env_name in env_names(name)
}
# Read by load_settings itself, not a setting.
_OTHER_ENV_NAMES = (CONFIG_ENV,)
_SIBLINGS = {
    name: other
    for secret in ("redis_password", "sentinel_password", "code_secret")
    for name, other in ((secret, f"{secret}_file"), (f"{secret}_file", secret))
}


def _layer(origin: str) -> str:
    return origin.split(maxsplit=1)[0]


def _legacy(origin: str) -> bool:
    """Whether a value came by a legacy name (``REDIS_URL``), not one of regctl's own."""
    variable = origin.rsplit(maxsplit=1)[-1].strip("()")
    return origin.startswith(("environment", "env file")) and not variable.startswith(ENV_PREFIX)


# Settings naming a program regctl runs or a folder it creates.
_RUNS_OR_CREATES = {"redis_server", "data_dir"}


def _suggest(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def _named_values(items: Iterable[tuple[str, str, str]]) -> list[_Given]:
    """Values of the environment or a .env file: ``REGCTL_*`` and the legacy names only.

    Other names belong to other programs; an unknown ``REGCTL_`` name is a mistake.
    Within the layer a ``REGCTL_`` name is applied after (so over) a legacy one.
    """
    legacy: list[_Given] = []
    prefixed: list[_Given] = []
    for name, value, origin in items:
        field = _FIELD_BY_ENV_NAME.get(name)  # names are exact: REGCTL_PREFIX, not regctl_prefix
        in_environment = origin.startswith("environment")
        if name == CONFIG_ENV and in_environment:
            continue  # read by load_settings itself
        if field is None and name.upper().startswith(ENV_PREFIX):
            where = "environment" if in_environment else origin
            if name == CONFIG_ENV:
                raise ConfigError(
                    f"{CONFIG_ENV} is read from the environment only ({where})",
                    "export it, or pass --config",
                )
            raise ConfigError(
                f"unknown setting {name} ({where})",
                _suggest(name.upper(), [*_FIELD_BY_ENV_NAME, *_OTHER_ENV_NAMES])
                or "`regctl config` lists the settings",
            )
        if field is not None:
            (prefixed if name.startswith(ENV_PREFIX) else legacy).append(
                _Given(field, value, origin)
            )
    return legacy + prefixed


def _flags(overrides: Mapping[str, Any]) -> list[_Given]:
    """Flags that were given; an empty one is a mistake, not a way to unset a value."""
    given = []
    for name, value in overrides.items():
        flag = f"--{name.replace('_', '-')}" if name != "redis_url" else "--url"
        if value == "":
            raise InvalidInput(f"{flag} must not be empty")
        if value is not None:
            given.append(_Given(name, value, f"flag {flag}"))
    return given


def _read_dotenv(path: Path, *, explicit: bool) -> list[_Given]:
    """The ``REGCTL_*`` and legacy lines of a .env file, each with its line number."""
    if not path.is_file():
        return []
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    shown = str(path) if explicit or path.is_absolute() else f"./{path}"
    check_trusted(path, "env file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {shown}: {exc}") from None
    lines: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(f"env file {shown} line {binding.original.line} cannot be parsed")
        if binding.key in lines:  # (the last would win, the other ignored unsaid)
            raise ConfigError(
                f"env file {shown} sets {binding.key} twice, "
                f"on lines {lines[binding.key]} and {binding.original.line}",
                "keep one of them",
            )
        if binding.key is not None:
            lines[binding.key] = binding.original.line
    values = dotenv_values(stream=io.StringIO(text))
    given = _named_values(
        (key, value or "", f"env file {shown} line {lines[key]} ({key})")
        for key, value in values.items()
        if key in lines
    )
    _check_private_if_secret(path, "env file", given)
    for value in given:
        if not explicit and value.field in _RUNS_OR_CREATES:
            raise ConfigError(
                f"{value.origin.rpartition(' (')[0]} may not set {env_names(value.field)[0]}",
                "a .env found in the current directory cannot choose a program to run or a "
                "folder to create: set it in the environment, --env-file or the config file",
            )
    return given


def _read_toml(path: Path) -> list[_Given]:
    """A flat TOML file of setting names; any other key or a table is an error."""
    import tomllib

    check_trusted(path, "config file")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    given = []
    for key, value in data.items():
        if isinstance(value, bool | list):
            raise ConfigError(f"{key} in config file {path} must be a number or a string")
        if key not in Settings.model_fields or isinstance(value, dict):
            what = "table" if isinstance(value, dict) else "key"
            plain = key.lower().removeprefix(ENV_PREFIX.lower())  # REGCTL_PREFIX, PREFIX
            raise ConfigError(
                f"unknown {what} {key!r} in config file {path}",
                _suggest(plain, Settings.model_fields) or "`regctl config` lists the settings",
            )
        line = _toml_line(text, key)
        origin = f"config file {path}" + (f" line {line}" if line else "")
        given.append(_Given(key, _in_folder_of(path, key, value), origin))
    _check_private_if_secret(path, "config file", given)
    return given


def _in_folder_of(path: Path, key: str, value: object) -> object:
    """A config file's relative path as the file's folder holds it (a cron job's current
    directory is not where the file and its secret are); any other value as it is."""
    if Settings.model_fields[key].annotation != Path | None or not isinstance(value, str):
        return value
    return value if Path(value).expanduser().is_absolute() else str(path.absolute().parent / value)


def _check_private_if_secret(path: Path, what: str, given: list[_Given]) -> None:
    """A settings file holding a secret (a password in a URL too) is refused when others
    may read it, as a secret's own file is."""
    for value in given:
        if value.value == "":  # (an empty value is unset: it holds nothing)
            continue
        if value.field in _SECRETS or (value.field in _URL_FIELDS and has_password(value.value)):
            held = f"a secret ({value.field})"
            check_trusted(path, what, private=True, group_of_root=True, holding=held)
            return


def _toml_line(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None
