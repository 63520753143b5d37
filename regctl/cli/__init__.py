"""The `regctl` command (Typer + rich) over the manager library."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from types import FrameType

from regctl.errors import ExitStatus, local_io

# A second Ctrl-C or SIGTERM sooner than this after the first is the same one, pressed
# twice; a later one ends regctl at once.
AGAIN_S = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, `timeout`, Kubernetes): a command stops as at Ctrl-C (its lock
    released, its audit entry written, its JSON closed), then regctl ends by SIGTERM."""


def _held_off(frame: FrameType | None) -> bool:
    """Whether an interruption raised at ``frame`` would do harm, so it must come a
    little later: inside a ``__del__`` (a connection collected mid-command), whose
    exceptions Python ignores, it would be lost; inside ``threading``'s Python-level
    ``__enter__`` (a Condition's, a Semaphore's: the queues of redis-py's pools), it
    would leave the lock just taken held, and the next call (the cleanup's, releasing
    a purge's lease) would wait on it for ever."""
    code = frame.f_code if frame is not None else None
    if code is not None and code.co_name == "__enter__" and code.co_filename == threading.__file__:
        return True
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def by_sigterm(stop: BaseException) -> bool:
    """Whether ``stop`` (an interruption, or click's Abort at a prompt) is SIGTERM's."""
    return isinstance(stop, Terminated) or isinstance(stop.__context__, Terminated)


def main() -> None:
    """Console-script entry point."""
    received: list[int] = []
    first: list[float] = []  # when the first stop came

    def stopped(signum: int, frame: FrameType | None) -> None:
        if _held_off(frame):
            again = threading.Timer(0.01, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        if first:
            # A key pressed twice (a burst of signals) would cut the cleanup short: a
            # purge's lease left held. One that comes later is meant: it ends regctl
            # now, cleanup or not (a stalled Redis may hold each call its deadline).
            if time.monotonic() - first[0] < AGAIN_S:
                return
            os.write(2, b"Stopped again: ending without cleanup\n")  # (no buffered write)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        first.append(time.monotonic())
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
        if first:  # (cleaned up: a stop now could only turn its exit status into a kill)
            for each in (signal.SIGINT, signal.SIGTERM):
                signal.signal(each, signal.SIG_IGN)
        if received:  # cleaned up: now end as SIGTERM ends a process (143 to a shell)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError):
                    stream.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
