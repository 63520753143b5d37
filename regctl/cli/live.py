"""`--interval`: redraw in place at a terminal, one line per sample in a pipe."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from regctl.cli.state import State

IntervalOption = Annotated[
    float | None,
    typer.Option(min=0.1, help="Repeat every N seconds (Ctrl-C stops; exit 0)."),
]
CountOption = Annotated[
    int | None, typer.Option(min=1, help="With --interval: stop after this many samples.")
]


def watch(
    state: State,
    interval: float,
    count: int | None,
    sample: Callable[[], Any],
    as_table: Callable[[Any], Any],
    as_line: Callable[[Any], str],
) -> None:
    """Take ``sample()`` every ``interval`` seconds until Ctrl-C or ``count`` samples."""
    taken = 0
    try:
        if state.is_tty:
            from rich.live import Live

            with Live(console=state.out, auto_refresh=False) as live:
                while count is None or taken < count:
                    live.update(as_table(sample()), refresh=True)
                    taken += 1
                    _pause(interval, count, taken)
        else:
            while count is None or taken < count:
                state.lines([as_line(sample())])
                taken += 1
                _pause(interval, count, taken)
    except KeyboardInterrupt:
        return  # watching ends with Ctrl-C: that is success


def _pause(interval: float, count: int | None, taken: int) -> None:
    if count is None or taken < count:
        time.sleep(interval)
