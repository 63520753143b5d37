"""`regctl limits show|reset CLIENT`: a client key's sign-up and code windows."""

from __future__ import annotations

from typing import Annotated

import typer

from regctl.cli.render import escape
from regctl.cli.state import State
from regctl.text import duration, visible

ClientArgument = Annotated[
    str, typer.Argument(help="The client key the backend passes as client= (an IP, a session).")
]


def show(ctx: typer.Context, client: ClientArgument) -> None:
    """Show how many sign-ups and codes a client key made in its window, and when the
    oldest leaves it.

    \b
    Example: regctl limits show 203.0.113.7
    """
    state: State = ctx.obj
    seen = state.manager.client_limits(client)
    window_ms = state.manager.policy.client_window_ms
    data: dict[str, object] = {"client": client, "window_s": window_ms // 1000}
    for action, (used, limit, wait) in seen.items():  # flat: one CSV row holds it all
        data.update({f"{action}s": used, f"{action}_limit": limit, f"{action}_wait_ms": wait})
    lines = [f"client {escape(visible(client))}:"]
    for action, (used, limit, wait) in seen.items():
        cap = f"{used} of {limit}" if limit else f"{used} (no limit)"
        leaves = f", the oldest leaves in {duration(wait)}" if wait else ""
        lines.append(f"  {action}s: {cap} per {duration(window_ms)}{leaves}")
    state.result(data, "\n".join(lines))


def reset(ctx: typer.Context, client: ClientArgument) -> None:
    """Forget a client key's sign-ups and codes, so it may sign up again at once.

    \b
    Example: regctl limits reset 203.0.113.7
    """
    state: State = ctx.obj
    state.audited("limits reset", client)
    had = state.manager.reset_limits(client)
    shown = escape(visible(client))
    message = f"limits of {shown} reset" if had else f"{shown} had no sign-ups or codes counted"
    state.result({"client": client, "reset": had}, message)


HELP = "Show or reset a client key's sign-up and code limits."
COMMANDS = (show, reset)
