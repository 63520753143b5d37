"""Per-invocation state: global options, settings, the store, and the consoles.

Built by the app callback and stored in ``ctx.obj``; everything is opened lazily
and closed with ``ctx.call_on_close``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from regctl.cli.render import Format, csv_lines, escape, to_json, tsv_lines
from regctl.errors import UNSERVED, ExitStatus, InvalidInput
from regctl.text import visible

T = TypeVar("T")

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
    no_headers: bool = False
    debug: bool = False
    no_color: bool = False
    _loaded: LoadedSettings | None = None
    _target: Target | None = None
    _manager: RegistrationManager | None = None
    # (command, target) of a mutating command, for the audit trail.
    audit_event: tuple[str, str] | None = None
    # The outcome to record when the command ends with its own exit status (a reason).
    outcome: str | None = None
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
        if outcome == "timeout":  # (the change may have happened: say it is not in the trail)
            self.warn("the audit entry was not written: Redis timed out")
        if outcome == "internal_error":  # (what happened is unknown: nothing more is sent)
            self.warn("the audit entry was not written: regctl failed")
            return
        if outcome in UNSERVED or outcome == "permission_denied":
            return  # the store cannot take it now; trying would only delay the exit
        self.audit(*self.audit_event, outcome)

    def audit(self, command: str, target: str, outcome: str) -> None:
        """One entry in the audit trail, by the OS account running this (not $USER)."""
        from regctl.errors import RegctlError

        try:
            self.manager.audit(_who(self.settings.audit_label), command, target, outcome)
        except RegctlError as exc:
            self.warn(f"the audit entry was not written: {exc.message}")

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
        console = Console(file=stream, no_color=no_color, highlight=False, soft_wrap=True)
        console.on_broken_pipe = closed_pipe  # type: ignore[method-assign]  # rich exits 1
        return console

    def require_terminal(self, without_terminal: str) -> None:
        """Nobody to ask (a script, cron): refused, pointing at --yes."""
        if not sys.stdin.isatty():
            raise InvalidInput(without_terminal, "add --yes")

    def confirm(self, question: str, without_terminal: str) -> None:
        """Ask ``question`` on stderr at a terminal; anything but yes ends the command
        (exit 1, nothing changed). Without a terminal: refused, pointing at --yes."""
        import typer

        from regctl.cli.inputs import ask_yes

        self.require_terminal(without_terminal)
        if not ask_yes(visible(question)):
            sys.stderr.write("nothing changed\n")
            self.outcome = "declined"
            if self.wants_json():
                from regctl.cli.status import failure

                self.json(failure("declined", "nothing changed", ExitStatus.REFUSED))
            raise typer.Exit(ExitStatus.REFUSED)

    def format(self) -> Format:
        return self.output or Format.TABLE

    def wants_json(self) -> bool:
        return self.format() in (Format.JSON, Format.NDJSON)

    @property
    def is_tty(self) -> bool:
        """stdout is a terminal (decided without loading rich, for fast pipes)."""
        return _terminal(sys.stdout)

    @property
    def wants_table(self) -> bool:
        """A table for people: stdout is a terminal and no program format was asked for."""
        return self.is_tty and self.format() in (Format.TABLE, Format.WIDE)

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
        self, header: Sequence[str] | None, rows: Iterable[Sequence[str]], *, raw: bool = False
    ) -> None:
        """Rows for programs: CSV when ``-o csv`` was asked for (cells exactly as they
        are when ``raw``, but for control characters at a terminal), else TSV; the
        header line unless --no-headers."""
        shown = None if self.no_headers or header is None else header
        if self.format() is Format.CSV:
            if raw and self.is_tty:  # (a person reads it: no escape sequence reaches them)
                rows = ([visible(str(cell)) for cell in row] for row in rows)
            self.write(csv_lines(shown, rows, raw=raw))
        else:
            self.lines(tsv_lines(shown, rows))

    def result(self, data: Mapping[str, Any], message: str, names: Iterable[str] = ()) -> None:
        """A command's outcome in the format asked for: ``data`` as the JSON document,
        or as one CSV/TSV row of its plain fields; ``names`` one a line for ``-o name``;
        else ``message`` for people (markup allowed; data in it escaped)."""
        fmt = self.format()
        if fmt in (Format.JSON, Format.NDJSON):
            self.json(data)
        elif fmt is Format.NAME:
            self.lines(visible(name) for name in names)
        elif fmt is Format.CSV:
            plain = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
            self.rows(tuple(plain), [[_cell(v) for v in plain.values()]])
        else:
            self.say(message)

    def report(self, report: object, names: Iterable[str] = (), **extra: Any) -> None:
        """A report of whole-store work: its JSON document (plus ``extra``), its line,
        or for ``-o name`` the addresses it concerns."""
        from regctl.cli.render import report_json, report_summary

        self.result(report_json(report) | extra, report_summary(report), names)

    def json_array(self, items: Iterable[Any]) -> None:
        """A JSON array streamed item by item (a long list needs no memory). Cut short
        by Ctrl-C or an error, it is closed all the same: still one JSON document, the
        exit status saying it is partial. One that fails before its first item (Redis
        down) writes nothing, so the error's own document is the only one: an empty
        array would look like an empty store."""
        iterator = iter(items)
        first = next(iterator, None)
        self.json_written = True
        stream = sys.stdout
        stream.write("[")
        try:
            if first is not None:
                stream.write(to_json(first))
                for item in iterator:
                    stream.write("," + to_json(item))
        finally:
            stream.write("]\n")
            stream.flush()

    def json(self, data: Any) -> None:
        self.write([to_json(data), "\n"])
        self.json_written = True

    def show(self, renderable: RenderableType) -> None:
        self.out.print(renderable)

    def say(self, text: str) -> None:
        """A human message on stdout (markup allowed; user data must be escaped)."""
        if not self.quiet:
            self.out.print(text)

    @staticmethod
    def warn(text: str) -> None:
        """A warning on stderr, plain text (data in it made visible), even under --quiet:
        the command did its work, but not all of what was asked."""
        sys.stderr.write(f"Warning: {text}\n")

    def note(self, text: str) -> None:
        """A side remark on stderr, for people (hidden under --quiet)."""
        if not self.quiet:
            self.err.print(text)

    @property
    def store_description(self) -> str:
        return self.target.description

    @property
    def shows_progress(self) -> bool:
        """Progress is drawn on stderr at a terminal, never under --quiet."""
        return self.err_is_tty and not self.quiet

    @contextlib.contextmanager
    def progress(
        self, what: str, total: int | None = None, *, sized: bool = False
    ) -> Iterator[Tally]:
        """Count long work. At a terminal (stderr, without --quiet): a live count with
        rate, and a bar and ETA when ``total`` is known (``sized``: a size in bytes, the
        items weighed by theirs), then a one-line summary; in pipes and cron, nothing.
        Interrupted, it says how far it got."""
        tally = Tally(what, total, sized=sized)
        if self.shows_progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
            # (rich's default would capture stdout meanwhile: the data would reach stderr)
            with Progress(
                *columns,
                console=self.err,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as bar:
                task = bar.add_task(tally.line(), total=total or None)
                tally.on_change = lambda: bar.update(
                    task, completed=tally.weight, total=tally.total, description=tally.line()
                )
                try:
                    yield tally
                except KeyboardInterrupt as stop:
                    bar.stop()
                    self.err.print(escape(tally.summary(interrupted=_by(stop))))
                    raise
                bar.stop()
                self.err.print(escape(tally.summary()))
        else:
            try:
                yield tally
            except KeyboardInterrupt as stop:
                self.err.print(escape(tally.summary(interrupted=_by(stop))))
                raise


@dataclass
class Tally:
    """How far a long command got: items done, and their weight (bytes, when the
    total is a size) for the bar; what ``State.progress`` shows."""

    what: str
    total: int | None
    sized: bool = False  # the total is a size (bytes), not a count of items
    done: int = 0
    weight: int = 0
    on_change: Callable[[], None] | None = None
    _started: float = field(default_factory=time.monotonic)
    _shown: float = 0.0

    def add(self, n: int = 1, weight: int | None = None) -> None:
        self.done += n
        self.weight += n if weight is None else weight
        now = time.monotonic()
        if self.on_change is not None and now - self._shown >= 0.1:  # 10 redraws a second
            self._shown = now
            self.on_change()

    def at(self, done: int, total: int | None = None) -> None:
        """Progress reported as a running count (and total, once known)."""
        if total is not None:
            self.total = total
        self.add(done - self.done)

    def track(self, items: Iterable[T], weight: Callable[[T], int] | None = None) -> Iterator[T]:
        for item in items:
            yield item
            self.add(1, None if weight is None else weight(item))

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self._started, 1e-6)

    def line(self) -> str:
        return f"{self.what}: {self.done:,} ({self.rate:,.0f}/s)"

    def summary(self, *, interrupted: str | None = None) -> str:
        """The work done; ``interrupted`` names what stopped it (Ctrl-C, SIGTERM)."""
        seconds = time.monotonic() - self._started
        if interrupted:
            of = f" of {self.total:,}" if self.total and not self.sized else ""
            done = f"{self.what} {self.done:,}{of}"
            return f"interrupted: {done} before {interrupted} ({seconds:.1f}s)"
        return f"{self.what}: {self.done:,} in {seconds:.1f}s ({self.rate:,.0f}/s)"


def _by(stop: KeyboardInterrupt) -> str:
    from regctl.cli import by_sigterm

    return "SIGTERM" if by_sigterm(stop) else "Ctrl-C"


def closed_pipe() -> NoReturn:
    """The reader went away (`regctl list | head -1`): end quietly, as 128 + SIGPIPE.
    stdout points at /dev/null first, or Python would complain again at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(ExitStatus.CLOSED_PIPE)


def _cell(value: Any) -> str:
    """A JSON scalar as a CSV cell: true/false as JSON writes them, null as empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


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
    # Only a real terminal: FORCE_COLOR adds colour (rich reads it), never a table shape.
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
