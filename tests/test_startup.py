"""Start-up stays light: help, version and completion load no heavy module."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("redis", "rich", "pydantic", "pydantic_settings", "email_validator", "argon2")
PROBE = r"""
import sys
sys.argv = {argv!r}
from regctl.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\nLOADED:" + " ".join(m for m in {heavy!r} if m in sys.modules))
"""


def loaded_after(argv: list[str], **env: str) -> set[str]:
    ran = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=["regctl", *argv], heavy=HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return set(ran.stderr.rpartition("LOADED:")[2].split())


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []], ids=["help", "version", "bare"])
def test_help_and_version_load_no_heavy_module(argv: list[str]):
    assert loaded_after(argv) == set()


def test_shell_completion_loads_no_heavy_module_of_ours():
    env = {"_REGCTL_COMPLETE": "complete_bash", "COMP_WORDS": "regctl li", "COMP_CWORD": "1"}
    # typer itself converts parameters with pydantic; nothing else may load.
    assert loaded_after([], **env) <= {"pydantic"}


def test_shell_completion_completes_commands():
    env = {
        **os.environ,
        "_REGCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": "regctl ins",
        "COMP_CWORD": "1",
    }
    ran = subprocess.run(
        [sys.executable, "-m", "regctl"], capture_output=True, text=True, env=env, check=False
    )
    assert ran.stdout.split() == ["inspect"]


def test_the_library_loads_neither_typer_nor_rich():
    """A backend imports the manager, diagnostics and stores without the CLI's cost."""
    probe = (
        "import sys, regctl, regctl.manager, regctl.diagnostics, regctl.store, regctl.codec\n"
        "regctl.RegistrationManager, regctl.MemoryStore\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'click')))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert ran.stdout.split() == []


def test_every_public_name_can_be_imported():
    """``from regctl import X`` for each name the package says it has (they load
    lazily: a wrong module for one is found only when someone asks for it)."""
    import regctl

    for name in regctl.__all__:
        assert getattr(regctl, name) is not None, name
