"""`--interval`: redraw in place at a terminal, one line per sample in a pipe."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from regctl.cli.render import Format, escape, timestamp
from regctl.errors import InvalidInput

if TYPE_CHECKING:
    from regctl.cli.state import State

IntervalOption = Annotated[
    float | None,
    typer.Option(min=0.1, max=86_400, help="Repeat every N seconds (Ctrl-C stops: exit 130)."),
]
CountOption = Annotated[
    int | None, typer.Option(min=1, help="With --interval: stop after this many samples.")
]


def check_live(state: State, interval: float | None, count: int | None) -> None:
    """Before any work: --count means nothing alone, and a stream of samples is NDJSON."""
    if count is not None and interval is None:
        raise InvalidInput("--count needs --interval", "add --interval 5 (seconds)")
    if interval is not None and state.format() is Format.JSON:
        raise InvalidInput(
            "--interval writes one JSON object per sample", "use -o ndjson for the stream"
        )


def watch(
    state: State,
    interval: float,
    count: int | None,
    sample: Callable[[], Any],
    view: Callable[[Any], Any],
    data: Callable[[Any], dict[str, Any]],
    cells: Callable[[Any], Sequence[tuple[str, str]]],
) -> Any:
    """Take ``sample()`` every ``interval`` seconds until ``count`` samples, or until
    Ctrl-C (which exits 130, as interrupted commands do). At a terminal each sample is
    ``view``, the one-shot view, under a line with its time; ``-o ndjson`` writes
    ``data`` one object a line; otherwise ``cells``' values are one TSV or CSV row a
    sample, after a header of their names (the first column is the sample's time).
    Returns the last sample."""
    with contextlib.ExitStack() as stack:
        live = None
        if state.wants_table:
            from rich.console import Group
            from rich.live import Live

            # The whole view, however tall (rich would cut it to the screen with "...").
            live = stack.enter_context(
                Live(console=state.out, auto_refresh=False, vertical_overflow="visible")
            )
        taken = 0
        while True:
            taken, result = taken + 1, sample()
            if live is not None:
                of = f" of {count}" if count else ""
                heading = (
                    f"[dim]{escape(_now())} · sample {taken}{of} · every {interval:g}s"
                    f" · Ctrl-C stops[/dim]"
                )
                live.update(Group(heading, view(result)), refresh=True)
            elif state.wants_json():
                state.json(data(result))
            else:
                pairs = [("timestamp", _now()), *cells(result)]
                header = [name.replace(" ", "_") for name, _ in pairs] if taken == 1 else None
                state.rows(header, [[value for _, value in pairs]])
            if count is not None and taken >= count:
                return result
            time.sleep(interval)


def _now() -> str:
    return timestamp(int(time.time() * 1000))
