"""Generated docs and completions cannot drift from the app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from regctl.cli.config_cmd import Shell
from regctl.cli.reference import expected_files
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(expected_files(ROOT)), ids=lambda p: p.name)
def test_generated_file_is_current(path: Path):
    assert path.read_text() == expected_files(ROOT)[path], (
        f"{path.name} is stale: run `python -m regctl.cli.reference`"
    )


def test_every_command_in_the_help_is_in_the_readme_reference(cli: Cli):
    readme = (ROOT / "README.md").read_text()
    text = cli("--help").stdout.partition("Commands:")[2]
    commands = re.findall(r"^  (\w+)\s", text, re.MULTILINE)
    assert commands
    for command in commands:
        assert f"### `regctl {command}" in readme


@pytest.mark.parametrize("shell", list(Shell))
def test_completion_command_prints_the_committed_script(cli: Cli, shell: Shell):
    ran = cli("completion", shell.value)
    assert ran.exit_code == 0
    assert ran.stdout == (ROOT / "completions" / f"regctl.{shell.value}").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.DOTALL)
    test_command = blocks[1].strip()
    assert test_command.endswith("pytest")
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
