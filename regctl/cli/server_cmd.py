"""`regctl server start|stop|status`: the embedded default store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from regctl.cli.inputs import OutputOption
from regctl.cli.state import State
from regctl.render import duration, escape, key_value_table

if TYPE_CHECKING:
    from regctl.server import EmbeddedServer


def _server(state: State) -> EmbeddedServer:
    from regctl.server import EmbeddedServer

    return EmbeddedServer.from_settings(state.settings)


def start(ctx: typer.Context) -> None:
    """Start the embedded server (it also starts on first use).

    Example: regctl server start
    """
    state: State = ctx.obj
    server = _server(state)
    if server.ensure_running():
        state.say(escape(server.started_message()))
    else:
        state.say(f"already running: {escape(server.description)}")


def stop(ctx: typer.Context) -> None:
    """Stop the embedded server; its data stays in the data dir.

    Example: regctl server stop
    """
    state: State = ctx.obj
    server = _server(state)
    stopped = server.stop()
    state.say(f"{'stopped' if stopped else 'not running'}: {escape(server.description)}")


def status(ctx: typer.Context, output: OutputOption = None) -> None:
    """Show the embedded server: binary, version, pid, socket, data size, uptime.

    Exit 0 when it runs, 3 when it does not.

    Example: regctl server status -o json
    """
    state: State = ctx.obj
    info = _server(state).status()
    if state.wants_json(output):
        state.json(info)
    else:
        pairs = [
            ("running", "yes" if info["running"] else "no"),
            ("binary", str(info.get("binary") or info.get("binary_error"))),
            ("version", str(info.get("version", ""))),
            ("recorded", str(info.get("recorded") or "none yet")),
            ("pid", str(info.get("pid", ""))),
            ("socket", info["socket"]),
            ("data dir", info["data_dir"]),
            ("data size", f"{info['data_bytes'] / 1024:.1f} KiB"),
            ("uptime", duration(int(info.get("uptime_seconds") or 0) * 1000)),
        ]
        if state.is_tty:
            state.show(key_value_table(pairs))
        else:
            state.rows(("field", "value"), pairs, output)
    if not info["running"]:
        raise typer.Exit(3)


HELP = "Manage the embedded local Redis (used when no URL is configured)."
COMMANDS = (start, stop, status)
