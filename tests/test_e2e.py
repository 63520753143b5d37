"""The original system's 8-step flow, through the installed `regctl` in subprocesses."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REGCTL, regctl, subprocess_env
from tests.servers import RedisProcess

EMAIL = "e2e@example.com"


@pytest.fixture
def env(redis_proc: RedisProcess, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {**subprocess_env(redis_proc.url, prefix), "REGCTL_RESEND_COOLDOWN": "0"}


@pytest.mark.slow
def test_the_eight_step_flow(env: dict[str, str]):
    health = regctl(env, "health", "-o", "json")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["redis"]["ping"] is True

    assert regctl(env, "list", "-o", "json").stdout == "[]\n"

    added = regctl(
        env,
        "-o",
        "json",
        "add",
        EMAIL,
        "-f",
        "End",
        "-l",
        "ToEnd",
        "--password-stdin",
        "--show-code",
        stdin="end-to-end-password\n",
    )
    assert added.returncode == 0, added.stderr
    first_code = json.loads(added.stdout)["code"]

    shown = json.loads(regctl(env, "inspect", EMAIL, "-o", "json").stdout)
    assert shown["attempts_left"] == 5

    resent = regctl(env, "-o", "json", "resend", EMAIL, "--show-code")
    code = json.loads(resent.stdout)["code"]
    assert json.loads(regctl(env, "inspect", EMAIL, "-o", "json").stdout)["resend_count"] == 1

    bad = f"{(int(code) + 1) % 10**6:06d}"
    assert regctl(env, "verify", EMAIL, bad).returncode == 1
    if first_code != code:
        assert regctl(env, "verify", EMAIL, first_code).returncode == 1
    good = regctl(env, "-o", "json", "verify", EMAIL, code)
    assert good.returncode == 0
    assert json.loads(good.stdout)["registration"]["first_name"] == "End"

    purged = regctl(env, "-o", "json", "purge")
    assert json.loads(purged.stdout)["ok"] is True

    stats = json.loads(regctl(env, "stats", "-o", "json").stdout)
    assert stats["total"] == 0


def test_python_dash_m_runs_the_command(env: dict[str, str]):
    ran = subprocess.run(
        [sys.executable, "-m", "regctl", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert ran.stdout.startswith("regctl ")


def wait_until_reading_a_pipe(pid: int) -> None:
    """Until the process sleeps in a read of a pipe (the kernel's wait channel), however
    long its start takes; its stdin is the only pipe it reads."""
    deadline = time.monotonic() + 60
    while "pipe" not in Path(f"/proc/{pid}/wchan").read_text():
        assert time.monotonic() < deadline, "it never waited on its standard input"
        time.sleep(0.02)


def test_sigterm_at_a_prompt_says_so_in_json_and_ends_by_the_signal(env: dict[str, str]):
    proc = subprocess.Popen(
        [REGCTL, "-o", "json", "verify", EMAIL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_until_reading_a_pipe(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM  # (143 to a shell: the table's row)
    assert json.loads(out) == {
        "ok": False,
        "reason": "interrupted",
        "message": "terminated by SIGTERM",
        "exit_code": 143,
    }
    assert err.strip() == "Interrupted"


def test_ctrl_c_exits_130_without_a_traceback(env: dict[str, str]):
    proc = subprocess.Popen(
        [REGCTL, "verify", EMAIL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_until_reading_a_pipe(proc.pid)  # it now waits for the code on stdin
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip() == "Interrupted"


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "-o", "ndjson"],
        ["list", "-o", "csv"],
        ["list", "-o", "json"],
        ["list", "-o", "name"],
        ["export"],
        ["export", "-o", "json"],
        ["stats"],
        ["stats", "--interval", "0.1"],
        ["audit"],
        ["audit", "-o", "csv"],
        ["config"],
        ["health"],
        ["health", "--interval", "0.1", "-o", "ndjson"],
        ["resend-many", "--older-than", "0s", "--dry-run", "--no-send"],
        ["completion", "bash"],
    ],
)
def test_a_closed_pipe_ends_any_command_quietly(
    fresh_redis: RedisProcess, prefix: str, pw_hash: str, args: list[str]
):
    """`regctl ... | head -1`: the reader leaves early; no error, exit 0 or 141."""
    from regctl import Policy, RedisStore
    from regctl.store import NewRegistration

    # A server of its own: 3000 records per case left in the shared one would slow
    # every later test that scans it.
    env = {**subprocess_env(fresh_redis.url, prefix), "REGCTL_RESEND_COOLDOWN": "0"}
    store = RedisStore(fresh_redis.client(), prefix=prefix)
    store.add_many(
        [
            (NewRegistration(f"p{i}@pipe.example", "P", "Q", pw_hash, "0" * 64), f"t{i}")
            for i in range(3000)
        ],
        Policy(),
    )
    for i in range(200):
        store.audit_append({"who": "w", "command": "add", "target": f"p{i}", "outcome": "ok"})
    store.close()
    read, write = os.pipe()
    # A pipe of one page: a command with more to say is surely still writing when the
    # reader leaves, however fast it runs (a 64 KiB pipe could take all of a short
    # listing, and the command would end normally, with its summary on stderr).
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([REGCTL, *args], stdout=write, stderr=subprocess.PIPE, env=env)
    os.close(write)
    assert proc.stderr is not None
    with os.fdopen(read, "rb") as reader:
        reader.readline()  # and closes the pipe, as head does after its line
    errors = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 141)
    assert errors == b""
