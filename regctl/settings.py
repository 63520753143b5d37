"""Settings: flags > environment > .env file > TOML config file > defaults.

Built per call by ``load_settings``; nothing is read at import time. Every field
has a ``REGCTL_`` variable; the original system's ``REDIS_URL``,
``REDIS_MAX_CONNECTIONS`` and ``REDIS_SOCKET_TIMEOUT`` are accepted too.
Secrets are ``SecretStr`` and can come from a file (``*_file`` fields).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from regctl.errors import ConfigError, InvalidInput
from regctl.keys import DEFAULT_BUCKETS, MAX_BUCKETS, MIN_BUCKETS, validate_prefix
from regctl.model import Policy

ENV_PREFIX = "REGCTL_"
CONFIG_ENV = "REGCTL_CONFIG"


def _aliases(name: str, *legacy: str) -> AliasChoices:
    return AliasChoices(ENV_PREFIX + name.upper(), *legacy, name)


class Settings(BaseSettings):
    """Every knob regctl has, with the defaults of DESIGN.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    redis_url: str | None = Field(
        None,
        validation_alias=_aliases("redis_url", "REDIS_URL"),
        description="redis://, rediss://, unix://; unset = the embedded store",
    )
    redis_password: SecretStr | None = Field(None, validation_alias=_aliases("redis_password"))
    redis_password_file: Path | None = Field(None, validation_alias=_aliases("redis_password_file"))
    tls_ca_file: Path | None = Field(None, validation_alias=_aliases("tls_ca_file"))
    tls_cert_file: Path | None = Field(None, validation_alias=_aliases("tls_cert_file"))
    tls_key_file: Path | None = Field(None, validation_alias=_aliases("tls_key_file"))
    sentinel_username: str | None = Field(None, validation_alias=_aliases("sentinel_username"))
    sentinel_password: SecretStr | None = Field(
        None, validation_alias=_aliases("sentinel_password")
    )
    sentinel_password_file: Path | None = Field(
        None, validation_alias=_aliases("sentinel_password_file")
    )
    wait_replicas: int = Field(0, ge=0, le=100, validation_alias=_aliases("wait_replicas"))
    wait_timeout: float = Field(1.0, gt=0, le=60, validation_alias=_aliases("wait_timeout"))
    max_connections: int = Field(
        50, ge=1, le=10_000, validation_alias=_aliases("max_connections", "REDIS_MAX_CONNECTIONS")
    )
    socket_timeout: float = Field(
        5.0, gt=0, le=300, validation_alias=_aliases("socket_timeout", "REDIS_SOCKET_TIMEOUT")
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, validation_alias=_aliases("connect_timeout"))
    pool_timeout: float = Field(5.0, gt=0, le=300, validation_alias=_aliases("pool_timeout"))
    retries: int = Field(2, ge=0, le=10, validation_alias=_aliases("retries"))
    health_check_interval: int = Field(
        30, ge=0, le=3600, validation_alias=_aliases("health_check_interval")
    )
    prefix: str = Field("regctl", validation_alias=_aliases("prefix"))
    buckets: int = Field(
        DEFAULT_BUCKETS, ge=MIN_BUCKETS, le=MAX_BUCKETS, validation_alias=_aliases("buckets")
    )
    code_secret: SecretStr | None = Field(None, validation_alias=_aliases("code_secret"))
    code_secret_file: Path | None = Field(None, validation_alias=_aliases("code_secret_file"))

    lifetime: float = Field(86_400, ge=1, validation_alias=_aliases("lifetime"))
    code_lifetime: float = Field(900, ge=1, validation_alias=_aliases("code_lifetime"))
    code_length: int = Field(6, ge=6, le=10, validation_alias=_aliases("code_length"))
    max_attempts: int = Field(5, ge=1, le=100, validation_alias=_aliases("max_attempts"))
    resend_cooldown: float = Field(60, ge=0, validation_alias=_aliases("resend_cooldown"))
    max_resends: int = Field(5, ge=0, le=100, validation_alias=_aliases("max_resends"))
    funnel_days: int = Field(30, ge=0, le=3650, validation_alias=_aliases("funnel_days"))

    mail_url: str = Field("console", validation_alias=_aliases("mail_url"))
    mail_from: str = Field("regctl <no-reply@localhost>", validation_alias=_aliases("mail_from"))
    mail_subject: str = Field("Your verification code", validation_alias=_aliases("mail_subject"))
    mail_template: Path | None = Field(None, validation_alias=_aliases("mail_template"))
    mail_timeout: float = Field(10, gt=0, le=300, validation_alias=_aliases("mail_timeout"))

    env: Literal["development", "staging", "production"] | None = Field(
        None, validation_alias=_aliases("env")
    )
    data_dir: Path | None = Field(None, validation_alias=_aliases("data_dir"))
    redis_server: Path | None = Field(None, validation_alias=_aliases("redis_server"))

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        from regctl.connection import check_url

        if not value:
            return None
        try:
            check_url(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        try:
            return validate_prefix(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

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

    def policy(self) -> Policy:
        return Policy(
            lifetime_ms=int(self.lifetime * 1000),
            code_lifetime_ms=int(self.code_lifetime * 1000),
            code_length=self.code_length,
            max_attempts=self.max_attempts,
            resend_cooldown_ms=int(self.resend_cooldown * 1000),
            max_resends=self.max_resends,
            funnel_days=self.funnel_days,
        )

    def code_secret_value(self) -> str | None:
        return _secret(self.code_secret, self.code_secret_file, "code secret")

    def redis_password_value(self) -> str | None:
        return _secret(self.redis_password, self.redis_password_file, "Redis password")

    def sentinel_password_value(self) -> str | None:
        return _secret(self.sentinel_password, self.sentinel_password_file, "Sentinel password")


def _secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class LoadedSettings:
    """Settings plus, for each field that was set, where its value came from."""

    settings: Settings
    sources: Mapping[str, str]


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    env_file: Path | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Merge flags, environment, .env and TOML config into validated Settings."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"env file {env_file} does not exist")
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (f"config {config_file}", _read_toml(config_file) if config_file else {}),
        (f"env file {env_file or '.env'}", _read_dotenv(env_file or Path(".env"))),
        ("environment", _read_env(env)),
        ("flag", _flags(overrides or {})),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, values in layers:
        for key, value in values.items():
            name = _FIELD_BY_ALIAS.get(key.casefold(), key)
            if name in Settings.model_fields:
                merged[name] = value
                sources[name] = origin
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        origin = sources.get(field, "default")
        if origin == "flag":  # typed on this command line: invalid input, not configuration
            raise InvalidInput(f"invalid --{field.replace('_', '-')}: {first['msg']}") from None
        raise ConfigError(f"bad setting {field} (from {origin}): {first['msg']}") from None
    return LoadedSettings(settings, sources)


_FIELD_BY_ALIAS = {
    alias.casefold(): name
    for name, info in Settings.model_fields.items()
    if isinstance(info.validation_alias, AliasChoices)
    for alias in info.validation_alias.choices
    if isinstance(alias, str)
}


def _flags(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Flags that were given; an empty one is a mistake, not a way to unset a value."""
    for name, value in overrides.items():
        if value == "":
            raise InvalidInput(f"--{name.replace('_', '-')} must not be empty")
    return {k: v for k, v in overrides.items() if v is not None}


def _read_env(environ: Mapping[str, str]) -> dict[str, str]:
    # Only prefixed and legacy names: a bare PREFIX or DATA_DIR is somebody else's.
    return {
        k: v
        for k, v in environ.items()
        if k.casefold() in _FIELD_BY_ALIAS and k.casefold() not in Settings.model_fields
    }


def _read_dotenv(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        return {}
    return DotEnvSettingsSource(Settings, env_file=path)()


def _read_toml(path: Path) -> Mapping[str, Any]:
    try:
        return TomlConfigSettingsSource(Settings, toml_file=path)()
    except Exception as exc:  # tomllib's error type varies; any failure is bad config
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
