"""The `regctl` command (Typer + rich) over the manager library."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType

from regctl.errors import ExitStatus, local_io


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, `timeout`, Kubernetes): a command stops as at Ctrl-C (its lock
    released, its audit entry written, its JSON closed), then regctl ends by SIGTERM."""


def by_sigterm(stop: BaseException) -> bool:
    """Whether ``stop`` (an interruption, or click's Abort at a prompt) is SIGTERM's."""
    return isinstance(stop, Terminated) or isinstance(stop.__context__, Terminated)


def main() -> None:
    """Console-script entry point."""
    received: list[int] = []

    def stopped(signum: int, _frame: FrameType | None) -> None:
        # (a second one, a Ctrl-C pressed twice, would cut the cleanup short: a
        # purge's lease left held; the cleanup's calls have deadlines of their own)
        for each in (signal.SIGTERM, signal.SIGINT):
            signal.signal(each, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        raise Terminated

    signal.signal(signal.SIGTERM, stopped)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not if ignored)
        signal.signal(signal.SIGINT, stopped)
    try:
        from regctl.cli.app import build_app

        build_app()(prog_name="regctl")
    except KeyboardInterrupt:  # before or after a command runs; inside one, the app handles it
        sys.stderr.write("Interrupted\n")
        sys.exit(ExitStatus.INTERRUPTED)
    except OSError as exc:  # help or an error line to a full disk (a command's own: its status)
        failed = local_io(exc)
        if failed is None:
            raise
        from regctl.cli.status import written

        written(sys.stderr, f"Error: {failed.line()}\n")
        sys.exit(ExitStatus.LOCAL_IO)
    finally:
        if received:  # cleaned up: now end as SIGTERM ends a process (143 to a shell)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError):
                    stream.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
