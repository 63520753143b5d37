"""regctl: pending user registrations in Redis.

The library a backend imports (no typer, no rich)::

    from regctl import RegistrationManager
    manager = RegistrationManager.from_settings()

Names are imported on first use, so ``import regctl`` (and the CLI's start-up)
costs nothing until a name is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regctl.aio import AsyncRegistrationManager
    from regctl.diagnostics.health import Health, Thresholds
    from regctl.errors import (
        AlreadyExists,
        ConfigError,
        CooldownActive,
        DamagedRecord,
        DeliveryFailed,
        InvalidInput,
        LockHeld,
        NotFound,
        NotReplicated,
        NotServing,
        PermissionDenied,
        PoolExhausted,
        RateLimited,
        Refused,
        RegctlError,
        RegistrationLocked,
        ResendLimitReached,
        SecretMismatch,
        StoreFull,
        StoreTimeout,
        StoreUnavailable,
    )
    from regctl.mail import Mailer
    from regctl.manager import (
        RegistrationManager,
    )
    from regctl.model import (
        Added,
        Filter,
        PendingRegistration,
        Policy,
        Resent,
        SortKey,
        VerifyOutcome,
        VerifyResult,
    )
    from regctl.reports import PurgeReport, Stats
    from regctl.settings import (
        Settings,
        load_settings,
    )
    from regctl.store import (
        MemoryStore,
        RedisStore,
        Store,
    )

__version__ = "0.1.0"

_LAZY = {
    "AlreadyExists": "regctl.errors",
    "ConfigError": "regctl.errors",
    "CooldownActive": "regctl.errors",
    "DamagedRecord": "regctl.errors",
    "DeliveryFailed": "regctl.errors",
    "InvalidInput": "regctl.errors",
    "LockHeld": "regctl.errors",
    "NotFound": "regctl.errors",
    "PermissionDenied": "regctl.errors",
    "NotReplicated": "regctl.errors",
    "NotServing": "regctl.errors",
    "PoolExhausted": "regctl.errors",
    "RateLimited": "regctl.errors",
    "Refused": "regctl.errors",
    "RegctlError": "regctl.errors",
    "RegistrationLocked": "regctl.errors",
    "ResendLimitReached": "regctl.errors",
    "StoreFull": "regctl.errors",
    "StoreTimeout": "regctl.errors",
    "SecretMismatch": "regctl.errors",
    "StoreUnavailable": "regctl.errors",
    "RegistrationManager": "regctl.manager",
    "AsyncRegistrationManager": "regctl.aio",
    "Health": "regctl.diagnostics.health",
    "Mailer": "regctl.mail",
    "Thresholds": "regctl.diagnostics.health",
    "Added": "regctl.model",
    "Filter": "regctl.model",
    "PendingRegistration": "regctl.model",
    "Policy": "regctl.model",
    "PurgeReport": "regctl.reports",
    "Resent": "regctl.model",
    "SortKey": "regctl.model",
    "Stats": "regctl.reports",
    "VerifyOutcome": "regctl.model",
    "VerifyResult": "regctl.model",
    "Settings": "regctl.settings",
    "load_settings": "regctl.settings",
    "MemoryStore": "regctl.store",
    "RedisStore": "regctl.store",
    "Store": "regctl.store",
}

__all__ = [
    "Added",
    "AlreadyExists",
    "AsyncRegistrationManager",
    "ConfigError",
    "CooldownActive",
    "DamagedRecord",
    "DeliveryFailed",
    "Filter",
    "Health",
    "InvalidInput",
    "LockHeld",
    "Mailer",
    "MemoryStore",
    "NotFound",
    "NotReplicated",
    "NotServing",
    "PendingRegistration",
    "PermissionDenied",
    "Policy",
    "PoolExhausted",
    "PurgeReport",
    "RateLimited",
    "RedisStore",
    "Refused",
    "RegctlError",
    "RegistrationLocked",
    "RegistrationManager",
    "ResendLimitReached",
    "Resent",
    "SecretMismatch",
    "Settings",
    "SortKey",
    "Stats",
    "Store",
    "StoreFull",
    "StoreTimeout",
    "StoreUnavailable",
    "Thresholds",
    "VerifyOutcome",
    "VerifyResult",
    "__version__",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'regctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
