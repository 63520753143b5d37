"""Per-invocation state: global options, settings, the store, and the consoles.

Built by the app callback and stored in ``ctx.obj``; everything is opened lazily
and closed with ``ctx.call_on_close``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regctl.render import Format, csv_lines, escape, to_json, tsv_lines, visible

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from regctl.manager import RegistrationManager
    from regctl.settings import LoadedSettings, Settings
    from regctl.store.redis_store import RedisStore
    from regctl.target import Target


@dataclass
class State:
    overrides: dict[str, Any] = field(default_factory=dict)
    env_file: Path | None = None
    config_file: Path | None = None
    output: Format | None = None
    quiet: bool = False
    debug: bool = False
    no_color: bool = False
    _loaded: LoadedSettings | None = None
    _target: Target | None = None
    _manager: RegistrationManager | None = None
    # (command, target) of a mutating command, for the audit trail.
    audit_event: tuple[str, str] | None = None
    _out: Console | None = None
    _err: Console | None = None
    # A JSON result went out: an error after it must not add a second document.
    json_written: bool = False

    # --- configuration and store -------------------------------------------

    @property
    def loaded(self) -> LoadedSettings:
        if self._loaded is None:
            from regctl.settings import load_settings

            self._loaded = load_settings(
                self.overrides, env_file=self.env_file, config_file=self.config_file
            )
            for note in self._loaded.legacy_overrides():
                sys.stderr.write(f"Note: {visible(note)}\n")
        return self._loaded

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = self._open(self.settings)
        return self._target

    def store_within(self, seconds: float) -> RedisStore:
        """The store on its own connection, whose every call gives up after ``seconds``
        (health's budget: it must answer while Redis stalls)."""
        if self._target is None:
            budget = min(self.settings.call_budget, seconds)
            self._target = self._open(self.settings.model_copy(update={"timeout": budget}))
        return self._target.store

    def _open(self, settings: Settings) -> Target:
        from regctl.target import open_target

        target = open_target(settings, allow_embedded=True)
        if target.started:  # a daemon now runs on this machine: always say so
            sys.stderr.write(f"Note: {visible(target.started)}\n")
        if self.err_is_tty and not self.quiet:
            where = [target.description, f"prefix {settings.prefix}"]
            if settings.env:
                where.append(settings.env.upper())
            self.err.print(f"[dim]store: {escape(' · '.join(where))}[/dim]")
        return target

    @property
    def store(self) -> RedisStore:
        return self.target.store

    @property
    def manager(self) -> RegistrationManager:
        if self._manager is None:
            from regctl.manager import RegistrationManager

            target = self.target
            self._manager = RegistrationManager(
                target.store, secret=target.secret, policy=self.settings.policy()
            )
        return self._manager

    def audited(self, command: str, target: str = "") -> None:
        """Mark this invocation for the audit trail (written when it ends)."""
        self.audit_event = (command, target)

    def record_audit(self, outcome: str) -> None:
        if self.audit_event is None or self._target is None:
            return  # nothing reached the store
        if outcome == "invalid_input":
            return  # refused before anything happened: bad input writes nothing at all
        if outcome in ("unavailable", "pool_exhausted", "permission_denied", "interrupted"):
            return  # the store cannot take it now; trying would only delay the exit
        self.audit(*self.audit_event, outcome)

    def audit(self, command: str, target: str, outcome: str) -> None:
        """One entry in the audit trail, by the OS account running this (not $USER)."""
        from regctl.errors import RegctlError

        try:
            entry = {"who": _who(self.settings.audit_label), "command": command}
            entry |= {"target": target, "outcome": outcome}
            # Stored visible: a file name or address with odd bytes cannot break the trail.
            self.target.store.audit_append({k: visible(v) for k, v in entry.items()})
        except RegctlError as exc:
            sys.stderr.write(f"Warning: the audit entry was not written: {exc.message}\n")

    def close(self) -> None:
        if self._target is not None:
            self._target.store.close()

    # --- output -------------------------------------------------------------

    @property
    def out(self) -> Console:
        if self._out is None:
            self._out = self._console(sys.stdout)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = self._console(sys.stderr)
        return self._err

    def _console(self, stream: Any) -> Console:
        from rich.console import Console

        no_color = self.no_color or "NO_COLOR" in os.environ
        return Console(file=stream, no_color=no_color, highlight=False, soft_wrap=True)

    def format(self, local: Format | None) -> Format:
        return local or self.output or Format.TABLE

    def wants_json(self, local: Format | None) -> bool:
        return self.format(local) in (Format.JSON, Format.NDJSON)

    @property
    def is_tty(self) -> bool:
        """stdout is a terminal (decided without loading rich, for fast pipes)."""
        return _terminal(sys.stdout)

    @property
    def err_is_tty(self) -> bool:
        return _terminal(sys.stderr)

    def write(self, chunks: Iterable[str]) -> None:
        """Plain text to stdout, exactly as given (JSON, TSV, CSV): no markup, no wrap."""
        stream = sys.stdout
        for chunk in chunks:
            stream.write(chunk)
        stream.flush()

    def lines(self, lines: Iterable[str]) -> None:
        self.write(line + "\n" for line in lines)

    def rows(
        self, header: Sequence[str], rows: Iterable[Sequence[str]], local: Format | None
    ) -> None:
        """Rows for programs: CSV when ``-o csv`` was asked for, else TSV."""
        if self.format(local) is Format.CSV:
            self.write(csv_lines(header, rows))
        else:
            self.lines(tsv_lines(header, rows))

    def json(self, data: Any) -> None:
        self.write([to_json(data), "\n"])
        self.json_written = True

    def show(self, renderable: RenderableType) -> None:
        self.out.print(renderable)

    def say(self, text: str) -> None:
        """A human message on stdout (markup allowed; user data must be escaped)."""
        if not self.quiet:
            self.out.print(text)

    def note(self, text: str) -> None:
        """A side remark on stderr, for people (hidden under --quiet)."""
        if not self.quiet:
            self.err.print(text)

    @property
    def store_description(self) -> str:
        return self.target.description


def _who(label: str | None) -> str:
    """account@host, from the process's real identity: LOGNAME and USER are whatever the
    caller sets. sudo's invoking user and a configured label are added, never instead."""
    import pwd
    import socket

    try:
        account = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        account = f"uid {os.geteuid()}"
    who = f"{account}@{socket.gethostname()}"
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        who += f" (sudo by {sudo_user})"
    return f"{who} [{label}]" if label else who


def _terminal(stream: Any) -> bool:
    # FORCE_COLOR means "treat as a terminal", as rich itself reads it.
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
