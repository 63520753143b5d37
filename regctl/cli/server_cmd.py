"""`regctl server start|stop|status`: the embedded default store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from regctl.cli.render import escape, key_value_table
from regctl.cli.state import State
from regctl.errors import ExitStatus
from regctl.text import duration

if TYPE_CHECKING:
    from regctl.server import EmbeddedServer


def _server(state: State) -> EmbeddedServer:
    from regctl.server import EmbeddedServer

    return EmbeddedServer.from_settings(state.settings)


def start(ctx: typer.Context) -> None:
    """Start the embedded server (it also starts on first use).

    \b
    Example: regctl server start
    """
    state: State = ctx.obj
    server = _server(state)
    started = server.ensure_running()
    message = server.started_message() if started else f"already running: {server.description}"
    state.result({"started": started, "store": server.description}, escape(message))


def stop(ctx: typer.Context) -> None:
    """Stop the embedded server; its data stays in the data dir.

    \b
    Example: regctl server stop
    """
    state: State = ctx.obj
    server = _server(state)
    stopped = server.stop()
    message = f"{'stopped' if stopped else 'not running'}: {server.description}"
    state.result({"stopped": stopped, "store": server.description}, escape(message))


def status(ctx: typer.Context) -> None:
    """Show the embedded server: binary, version, pid, socket, data size, uptime.

    Exit 0 when it runs (loading its data too), 3 when it does not, 69 when it runs
    but answers nothing.

    \b
    Example: regctl server status -o json
    """
    state: State = ctx.obj
    info = _server(state).status()
    if state.wants_json():
        state.json(info)
    else:
        pairs = [
            ("running", _running(info)),
            ("binary", str(info.get("binary") or info.get("binary_error"))),
            ("version", str(info.get("version", ""))),
            ("recorded", str(info.get("recorded") or "none yet")),
            ("pid", str(info.get("pid", ""))),
            ("socket", info["socket"]),
            ("data dir", info["data_dir"]),
            ("data size", f"{info['data_bytes'] / 1024:.1f} KiB"),
            ("uptime", _uptime(info.get("uptime_seconds"))),
        ]
        if state.wants_table:
            state.show(key_value_table(pairs))
        else:
            state.rows(("field", "value"), pairs)
    if not info["running"]:
        raise typer.Exit(ExitStatus.NOT_FOUND)
    if not info["answering"]:
        raise typer.Exit(ExitStatus.UNAVAILABLE)


def _running(info: dict[str, object]) -> str:
    if not info["running"]:
        return "no"
    if not info["answering"]:
        return "yes, but it answers nothing (`regctl server stop` ends it)"
    return "yes, loading its data (commands wait)" if info["loading"] else "yes"


def _uptime(seconds: int | None) -> str:
    return "not running" if seconds is None else duration(int(seconds) * 1000)


HELP = "Manage the embedded local Redis (used when no URL is configured)."
COMMANDS = (start, stop, status)
