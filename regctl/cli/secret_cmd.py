"""`regctl secret status|rotate`: which code secret the store's codes are made with."""

from __future__ import annotations

from typing import Annotated

import typer

from regctl.cli.state import State
from regctl.errors import ExitStatus
from regctl.text import plural


def status(ctx: typer.Context) -> None:
    """Say whether the configured code secret is the one the store's codes use.

    Exit 0 when it is (or none is recorded yet), 78 when it is another one.

    \b
    Example: regctl secret status
    """
    state: State = ctx.obj
    matches = state.manager.secret_matches()
    word = {True: "matches", False: "mismatch", None: "unrecorded"}[matches]
    message = {
        "matches": "the configured code secret is the store's",
        "mismatch": "the store's codes were made with another code secret",
        "unrecorded": "no code secret recorded yet (the first code written records it)",
    }[word]
    state.result({"secret": word, "store": state.store_description}, message)
    if matches is False:
        raise typer.Exit(ExitStatus.CONFIG)


def rotate(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Rotate without asking.")] = False,
) -> None:
    """Make the configured code secret the store's; codes made with the old one die.

    Switch every writer to the new secret, then run this once; users whose code
    died ask for a new one (resend).

    \b
    Example: REGCTL_CODE_SECRET_FILE=/run/secrets/new regctl secret rotate --yes
    """
    state: State = ctx.obj
    manager = state.manager
    if manager.secret_matches() is True:  # (a rotation stopped part-way is finished)
        # (no question: the codes it expires stopped verifying with the switch)
        state.audited("secret rotate")
        dead = manager.rotate_secret()
        message = "the configured code secret is already the store's; " + (
            f"expired {plural(dead, 'code')} made with another" if dead else "nothing changed"
        )
        state.result({"rotated": False, "pending_codes_invalidated": dead}, message)
        return
    if not yes:
        pending = manager.counts().total
        codes = plural(pending, "pending code")
        where = f"{state.store_description} (prefix {state.settings.prefix})"
        state.confirm(
            f"Rotate the code secret of {where}? {codes} {'stops' if pending == 1 else 'stop'} "
            "working.",
            "rotating the code secret kills every pending code",
        )
    state.audited("secret rotate")
    pending = manager.rotate_secret()
    data = {"rotated": True, "pending_codes_invalidated": pending}
    state.result(data, f"code secret rotated; no longer verifying: {plural(pending, 'code')}")


HELP = "Check or rotate the code secret the store's codes are made with."
COMMANDS = (status, rotate)
