"""The `regctl` command (Typer + rich) over the manager library."""

from __future__ import annotations

import sys

from regctl.errors import ExitStatus, local_io


def main() -> None:
    """Console-script entry point."""
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
