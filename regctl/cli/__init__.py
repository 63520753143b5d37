"""The `regctl` command (Typer + rich) over the manager library."""

from __future__ import annotations


def main() -> None:
    """Console-script entry point."""
    from regctl.cli.app import build_app

    build_app()(prog_name="regctl")
