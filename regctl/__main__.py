"""`python -m regctl` runs the command."""

from regctl.cli import main

main()
