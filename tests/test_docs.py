"""Generated docs and completions cannot drift from the app."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from regctl.cli.config_cmd import Shell, completion_script
from regctl.cli.reference import expected_files
from tests.conftest import REGCTL, Cli, run, subprocess_env
from tests.servers import RedisProcess

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


# --- examples run as written ----------------------------------------------------------


def _help_examples() -> list[tuple[str, str]]:
    """(command, example) for every `Example:` line in the app's help texts."""
    from typer.main import get_command

    from regctl.cli.app import build_app

    found = []

    def walk(command: Any, path: str) -> None:
        for line in (command.help or "").splitlines():
            if line.strip().startswith("Example"):
                example = line.partition(":")[2].strip().replace("\\\\", "\\")
                if "(cron)" in line:  # the schedule's five fields are cron's, not the shell's
                    example = example.split(" ", 5)[5]
                found.append((path, example))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, f"{path} {name}".strip())

    walk(get_command(build_app()), "")
    return found


def _sandbox(tmp_path: Path, redis_url: str, prefix: str) -> dict[str, str]:
    """A shell environment on the test Redis, with HOME and the data dir in tmp_path."""
    env = subprocess_env(redis_url, prefix)
    env |= {
        "HOME": str(tmp_path),
        "REGCTL_DATA_DIR": str(tmp_path / "data"),
        "PATH": f"{Path(REGCTL).parent}:{env['PATH']}",
        "PW": "correct horse battery",
        "CHECK_PASSWORD": "correct horse battery",
    }
    (tmp_path / "prod.env").write_text(f"REGCTL_PREFIX={prefix}\n")
    (tmp_path / "prod.env").chmod(0o600)
    (tmp_path / "backup.ndjson").write_text("")
    return env


def _shell(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(["bash", "-c", script], env, cwd=cwd)


@pytest.mark.slow
def test_every_help_example_runs_as_written(redis_proc: RedisProcess, prefix: str, tmp_path: Path):
    examples = _help_examples()
    assert len(examples) >= 20
    env = _sandbox(tmp_path, redis_proc.url, prefix)
    try:
        for command, example in examples:
            ran = _shell(example, env, tmp_path)
            where = f"`regctl {command} --help`: {example}\n{ran.stderr}"
            assert ran.returncode not in (2, 70, 127), where  # usage, bug, no such command
            assert "Traceback" not in ran.stderr, where
    finally:
        _shell("regctl server stop", env, tmp_path)


def test_the_readme_crontab_line_runs_silently(
    redis_proc: RedisProcess, prefix: str, tmp_path: Path
):
    readme = (ROOT / "README.md").read_text()
    (line,) = re.findall(r"```crontab\n(.*?)\n```", readme, re.DOTALL)
    command = line.split(" ", 5)[5]
    metrics = tmp_path / "regctl.prom"
    command = command.replace("/var/lib/node_exporter/regctl.prom", str(metrics))
    ran = _shell(command, _sandbox(tmp_path, redis_proc.url, prefix), tmp_path)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")  # no cron mail
    assert "regctl_purge_last_success_timestamp_seconds" in metrics.read_text()


def test_the_readme_deploy_check_passes(redis_proc: RedisProcess, prefix: str, tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    (script,) = [b for b in re.findall(r"```sh\n(.*?)\n```", readme, re.DOTALL) if "set -eu" in b]
    env = _sandbox(tmp_path, redis_proc.url, prefix)
    ran = _shell(script, env, tmp_path)
    assert ran.returncode == 0, ran.stderr
    short = _shell(script, {**env, "CHECK_PASSWORD": "short"}, tmp_path)  # a step that fails
    assert short.returncode == 2
    assert short.stderr.startswith("Error: "), short.stderr  # its own line, no traceback
    assert "Traceback" not in short.stderr
    unset = _shell(script, {k: v for k, v in env.items() if k != "CHECK_PASSWORD"}, tmp_path)
    assert unset.returncode != 0
    assert unset.stderr.count("\n") == 1, unset.stderr  # what is missing, said once


def test_every_json_reason_the_command_gives_is_in_the_readme():
    """A reason written into a failure() call must be one the README's table lists."""
    table = (ROOT / "README.md").read_text().partition("<!-- reasons:start")[2]
    sources = "".join(p.read_text() for p in (ROOT / "regctl").rglob("*.py"))
    given = set(re.findall(r'failure\(\s*"(\w+)"', sources))
    given |= set(re.findall(r'reason = "(\w+)"', sources)) - {"error"}
    assert given, "the search found no reasons: it no longer matches the code"
    assert {r for r in given if f"| `{r}` |" not in table} == set()


# A line only that shell's script has.
SHELL_MARKERS = {
    Shell.BASH: "complete -o default -F _regctl_completion regctl",
    Shell.ZSH: "#compdef regctl",
    Shell.FISH: "complete --command regctl",
}


@pytest.mark.parametrize("shell", list(Shell))
def test_each_completion_script_is_for_the_shell_named(shell: Shell):
    """Whatever shell runs the generator (typer's --show-completion would detect it)."""
    script = completion_script(shell)
    assert [s for s, marker in SHELL_MARKERS.items() if marker in script] == [shell]
