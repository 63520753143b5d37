"""Which store a set of settings names, opened: a configured server or the embedded one.

A configured server that is down is an error, never a reason to switch stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from regctl.connection import connect
from regctl.errors import ConfigError
from regctl.server import EmbeddedServer
from regctl.store.redis_store import RedisStore
from regctl.urls import mask_url

if TYPE_CHECKING:
    from regctl.settings import Settings


@dataclass(frozen=True)
class Target:
    store: RedisStore
    secret: str | None
    description: str
    embedded: bool
    # Set when opening this target started the embedded server: what to tell the user.
    started: str | None = None


def open_target(settings: Settings, *, allow_embedded: bool = False) -> Target:
    """Connect to the configured Redis, or (if allowed) start/attach the embedded server."""
    started = None
    if settings.redis_url:
        description = mask_url(settings.redis_url)
        client = connect(settings.redis_url, settings)
        secret = settings.code_secret_value()
        embedded = False
    elif not allow_embedded:
        raise ConfigError(
            "no Redis URL is configured",
            "set REGCTL_REDIS_URL (or REDIS_URL), or opt in to the embedded local store",
        )
    else:
        server = EmbeddedServer.from_settings(settings)
        secret = settings.code_secret_value() or server.code_secret()  # checked before a start
        if server.ensure_running():
            started = server.started_message()
        description = server.description
        client = connect(server.url, settings)
        embedded = True
    store = RedisStore(
        client,
        prefix=settings.prefix,
        # Only a count asked for is checked against the stored layout.
        buckets=settings.buckets if "buckets" in settings.model_fields_set else None,
        description=description,
        wait_replicas=settings.wait_replicas,
        wait_timeout_ms=max(1, math.ceil(settings.wait_timeout * 1000)),  # WAIT 0: forever
        audit_max=settings.audit_max_entries,
        call_budget_s=settings.call_budget,
    )
    return Target(store, secret, description, embedded, started)
