"""The regctl command in a pipe: exit codes, stdout, stderr, formats."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from regctl import __version__
from tests.conftest import Cli, at_terminal, subprocess_env

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery"


def add(cli: Cli, email: str = EMAIL, *extra: str, **env: str) -> dict[str, Any]:
    ran = cli(
        "-o",
        "json",
        "add",
        email,
        "-f",
        "Alice",
        "-l",
        "Liddell",
        "--password-stdin",
        "--show-code",
        *extra,
        input=PASSWORD + "\n",
        **env,
    )
    assert ran.exit_code == 0, ran.stderr
    document: dict[str, Any] = json.loads(ran.stdout)
    return document


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


# --- basics -------------------------------------------------------------------


def test_version_prints_the_version(cli: Cli):
    ran = cli("--version")
    assert ran.exit_code == 0
    assert ran.stdout == f"regctl {__version__}\n"


@pytest.mark.parametrize("group", [[], ["server"], ["secret"]])
def test_a_bare_command_or_group_prints_readable_help(cli: Cli, group: list[str]):
    ran = cli(*group)
    assert ran.exit_code == 0
    first = ran.stdout.splitlines()[0]
    assert first.startswith("Usage: ")
    assert first.endswith(f"{' '.join(group)} [OPTIONS] COMMAND [ARGS]...".lstrip())
    assert ran.stdout.count("\n") > 5  # laid out, not squashed into one line
    assert ran.stderr == ""


def test_help_lists_every_command(cli: Cli):
    ran = cli("--help")
    assert ran.exit_code == 0
    for command in (
        "add",
        "list",
        "inspect",
        "resend",
        "resend-many",
        "verify",
        "unlock",
        "delete",
        "purge",
        "stats",
        "health",
        "doctor",
        "selftest",
        "config",
        "completion",
        "server",
    ):
        assert command in ran.stdout


def test_an_unknown_option_is_a_one_line_usage_error(cli: Cli):
    ran = cli("list", "--bogus")
    assert ran.exit_code == 2
    assert ran.stderr == "Error: No such option: --bogus — see `root list --help`\n"


def test_an_address_that_looks_like_an_option_needs_a_double_dash(cli: Cli):
    ran = cli("inspect", "-0")
    assert ran.exit_code == 2
    assert ran.stderr.count("\n") == 1
    assert cli("inspect", "--", "-0@example.com").exit_code == 3


# --- add ------------------------------------------------------------------------


def test_add_prints_json_with_the_code_only_when_asked(cli: Cli):
    data = add(cli)
    assert data["email"] == EMAIL
    assert len(data["code"]) == 6
    assert data["delivery"] == "not_sent"
    assert "password_hash" not in data
    ran = cli(
        "-o",
        "json",
        "add",
        "bob@example.com",
        "-f",
        "B",
        "-l",
        "S",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    assert ran.exit_code == 0
    assert "code" not in json.loads(ran.stdout)


def test_add_in_a_pipe_without_a_password_source_is_refused(cli: Cli):
    ran = cli("add", EMAIL, "-f", "A", "-l", "B")
    assert ran.exit_code == 2
    assert ran.stderr.startswith("Error: no password given")
    assert cli("list", "-o", "name").stdout == ""


def test_add_of_a_pending_address_exits_1(cli: Cli):
    add(cli)
    ran = cli("add", EMAIL.upper(), "-f", "A", "-l", "B", "--password-stdin", input=PASSWORD)
    assert ran.exit_code == 1
    assert "already pending" in ran.stderr


@pytest.mark.parametrize(
    ("email", "first"),
    [("not-an-email", "A"), ("a@example.com", "[bold]\x1b[31m"), ("a{b}@x", "A")],
)
def test_add_with_invalid_input_exits_2_and_writes_nothing(cli: Cli, email: str, first: str):
    ran = cli("add", email, "-f", first, "-l", "B", "--password-stdin", input=PASSWORD)
    assert ran.exit_code == 2
    assert ran.stderr.count("\n") == 1
    assert ran.stderr.startswith("Error: ")
    assert "Traceback" not in ran.stderr
    assert cli("list", "-o", "name").stdout == ""


def test_add_accepts_a_prehashed_password(cli: Cli, pw_hash: str):
    ran = cli("add", EMAIL, "-f", "A", "-l", "B", "--password-hash", pw_hash)
    assert ran.exit_code == 0
    assert pw_hash not in ran.stdout + ran.stderr


# --- list -----------------------------------------------------------------------


def test_an_empty_list_exits_0(cli: Cli):
    assert cli("list").stdout.splitlines() == ["email\tname\tstatus\tattempts\tresends\texpires_in"]
    assert cli("-o", "json", "list").stdout == "[]\n"
    assert cli("list", "-o", "ndjson").stdout == ""


def test_list_formats(cli: Cli):
    add(cli)
    add(cli, "bob@other.example")
    tsv = cli("list").stdout.splitlines()
    assert len(tsv) == 3
    assert all(line.count("\t") == 5 for line in tsv)
    rows = json.loads(cli("list", "-o", "json").stdout)
    assert {r["email"] for r in rows} == {EMAIL, "bob@other.example"}
    nd = [json.loads(line) for line in cli("list", "-o", "ndjson").stdout.splitlines()]
    assert len(nd) == 2
    table = list(csv.DictReader(io.StringIO(cli("list", "-o", "csv").stdout)))
    assert {r["email"] for r in table} == {EMAIL, "bob@other.example"}
    assert cli("list", "-o", "name", "--domain", "other.example").stdout == "bob@other.example\n"


def test_list_rejects_a_bad_duration(cli: Cli):
    ran = cli("list", "--older-than", "2 weeks")
    assert ran.exit_code == 2
    assert "invalid duration" in ran.stderr


def test_pipe_output_has_no_ansi_and_no_truncation(cli: Cli):
    long = "x" * 90 + "@example.com"
    add(cli, long)
    out = cli("list", "-o", "wide").stdout
    assert "\x1b[" not in out
    assert long in out


# --- inspect ----------------------------------------------------------------------


def test_inspect_shows_the_state_without_code_or_hash(cli: Cli):
    code = add(cli)["code"]
    ran = cli("inspect", EMAIL)
    assert ran.exit_code == 0
    fields = dict(line.split("\t", 1) for line in ran.stdout.splitlines()[1:])
    assert fields["attempts"] == "0 used, 5 left"
    assert fields["resends"] == "0 used, 5 left"
    assert fields["status"] == "pending"
    assert code not in ran.stdout
    assert "argon2" not in ran.stdout


def test_inspect_of_an_unknown_address_exits_3(cli: Cli):
    ran = cli("inspect", "nobody@example.com")
    assert ran.exit_code == 3
    assert ran.stderr.startswith("Error: no pending registration for nobody@example.com")


def test_json_errors_carry_a_machine_readable_reason_and_the_hint(cli: Cli):
    """(The hint, what to do, was on stderr only: an import's count of lines restored
    before a lost server was in no JSON.)"""
    ran = cli("-o", "json", "inspect", "nobody@example.com")
    assert json.loads(ran.stdout) == {
        "ok": False,
        "reason": "not_found",
        "exit_code": 3,
        "message": "no pending registration for nobody@example.com",
        "hint": "it was verified, expired or never added",
    }
    assert ran.stderr == (
        "Error: no pending registration for nobody@example.com — it was verified, expired or "
        "never added\n"
    )


def test_user_data_is_escaped_before_rich_markup(cli: Cli):
    cli("add", EMAIL, "-f", "[bold]x[/bold]", "-l", "[red]y", "--password-stdin", input=PASSWORD)
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    seen = at_terminal(["inspect", EMAIL], env | {"COLUMNS": "120"})
    assert seen.exit_code == 0
    assert "[bold]x[/bold] [red]y" in seen.output


# --- verify -----------------------------------------------------------------------


def test_verify_with_the_right_code_prints_the_consumed_record(cli: Cli):
    code = add(cli)["code"]
    ran = cli("-o", "json", "verify", EMAIL, code)
    assert ran.exit_code == 0
    data = json.loads(ran.stdout)
    assert data["ok"] is True
    assert data["reason"] == "verified"
    assert data["registration"]["password_hash"].startswith("$argon2id$")
    assert data["registration"]["status"] == "verified"  # (consumed: no longer pending)
    assert cli("inspect", EMAIL).exit_code == 3


def test_verify_reads_the_code_from_stdin(cli: Cli):
    code = add(cli)["code"]
    ran = cli("verify", EMAIL, input=code + "\n")
    assert ran.exit_code == 0
    header, row = ran.stdout.splitlines()  # in a pipe: the consumed record, as TSV
    assert header.startswith("email\tname\tstatus")
    assert row.startswith(f"{EMAIL}\tAlice Liddell\tverified\t")
    assert "argon2" not in ran.stdout


def test_wrong_code_exits_1_with_attempts_left(cli: Cli):
    code = add(cli)["code"]
    ran = cli("verify", EMAIL, wrong(code))
    assert ran.exit_code == 1
    assert ran.stderr == f"Error: wrong code for {EMAIL}; 4 attempts left\n"
    data = json.loads(cli("-o", "json", "verify", EMAIL, wrong(code)).stdout)
    assert data == {  # (a failure's shape: reason, message and exit code, as every one)
        "ok": False,
        "reason": "invalid_code",
        "message": f"wrong code for {EMAIL}; 3 attempts left",
        "exit_code": 1,
        "attempts_left": 3,
        "store": data["store"],
    }


def test_malformed_code_exits_2_and_costs_nothing(cli: Cli):
    add(cli)
    ran = cli("verify", EMAIL, "１２３４５６")
    assert ran.exit_code == 2
    assert json.loads(cli("-o", "json", "inspect", EMAIL).stdout)["attempts"] == 0


def test_verify_of_an_unknown_address_exits_3(cli: Cli):
    assert cli("verify", "nobody@example.com", "123456").exit_code == 3


def test_lockout_then_unlock(cli: Cli):
    code = add(cli)["code"]
    for _ in range(5):
        cli("verify", EMAIL, wrong(code))
    ran = cli("verify", EMAIL, code)
    assert ran.exit_code == 1
    assert "locked" in ran.stderr
    assert cli("unlock", EMAIL).exit_code == 0
    assert cli("verify", EMAIL, code).exit_code == 0


def test_unlock_and_delete_of_unknown_addresses_exit_3(cli: Cli):
    assert cli("unlock", "nobody@example.com").exit_code == 3
    assert cli("delete", "nobody@example.com").exit_code == 3


def test_delete_removes_the_registration(cli: Cli):
    add(cli)
    assert cli("delete", EMAIL).stdout == f"deleted {EMAIL}\n"
    assert cli("inspect", EMAIL).exit_code == 3


# --- resend -----------------------------------------------------------------------


def test_resend_inside_the_cooldown_says_how_long_to_wait(cli: Cli):
    add(cli)
    ran = cli("resend", EMAIL)
    assert ran.exit_code == 1
    assert "wait" in ran.stderr
    assert "s before resending" in ran.stderr
    as_json = json.loads(cli("-o", "json", "resend", EMAIL).stdout)
    assert as_json["reason"] == "cooldown"
    assert 0 < as_json["retry_after_ms"] <= 60_000  # (when a script may try again)


def test_resend_gives_a_new_working_code(cli: Cli):
    old = add(cli)["code"]
    ran = cli("-o", "json", "resend", EMAIL, "--show-code", REGCTL_RESEND_COOLDOWN="0")
    assert ran.exit_code == 0
    new = json.loads(ran.stdout)["code"]
    if new != old:
        assert cli("verify", EMAIL, old).exit_code == 1
    assert cli("verify", EMAIL, new).exit_code == 0


# --- purge and stats ---------------------------------------------------------------


def test_purge_with_filters_needs_yes_in_a_pipe(cli: Cli):
    add(cli)
    ran = cli("purge", "--domain", "example.com")
    assert ran.exit_code == 2
    assert "--yes" in ran.stderr
    assert cli("list", "-o", "name").stdout == f"{EMAIL}\n"


def test_purge_dry_run_changes_nothing(cli: Cli):
    add(cli)
    ran = cli("purge", "--domain", "example.com", "--dry-run")
    assert ran.exit_code == 0
    assert ran.stdout.startswith("would purge 1 ")
    assert cli("list", "-o", "name").stdout == f"{EMAIL}\n"


def test_purge_with_yes_deletes_matching_records_and_reports_json(cli: Cli):
    add(cli)
    add(cli, "bob@keep.example")
    ran = cli("-o", "json", "purge", "--domain", "example.com", "--yes")
    data = json.loads(ran.stdout)
    assert data["purged"] == 1
    assert data["by_reason"] == {"expired": 0, "orphan": 0, "matched": 1}
    assert cli("list", "-o", "name").stdout == "bob@keep.example\n"


def test_quiet_purge_is_silent(cli: Cli):
    ran = cli("--quiet", "purge")
    assert ran.exit_code == 0
    assert ran.stdout == ""
    assert ran.stderr == ""


def test_stats_json(cli: Cli):
    add(cli)
    add(cli, "b@example.com")
    data = json.loads(cli("stats", "-o", "json").stdout)
    assert data["total"] == 2
    assert data["top_domains"] == [{"domain": "example.com", "count": 2}]


# --- health, doctor, selftest, config ------------------------------------------------


def test_health_json_keeps_the_original_shape(cli: Cli):
    ran = cli("health", "-o", "json")
    assert ran.exit_code == 0
    data = json.loads(ran.stdout)
    assert {"status", "timestamp", "version", "redis", "pending_registrations"} <= set(data)
    assert {"status", "ping", "connected_clients", "used_memory_human", "uptime_in_seconds"} <= set(
        data["redis"]
    )
    assert data["pending_registrations"] == {"total": 0, "redis_connected": True}
    assert data["redis"]["ping"] is True


def test_health_of_a_down_server_is_critical(cli: Cli, tmp_path):
    ran = cli("health", REGCTL_REDIS_URL=f"unix://{tmp_path}/nothing.sock")
    assert ran.exit_code == 2


def test_health_warns_above_the_latency_threshold(cli: Cli):
    assert cli("health", "--warn-latency", "0", "--crit-latency", "10000").exit_code == 1


def test_doctor_reports_missing_persistence_with_a_fix(cli: Cli):
    ran = cli("doctor", "-o", "json")
    data = json.loads(ran.stdout)
    codes = {f["code"] for f in data["findings"]}
    assert "persistence-off" in codes  # the test server runs without AOF
    assert ran.exit_code == 1
    assert all(f["fix"] for f in data["findings"])


def test_selftest_passes_and_leaves_nothing_behind(cli: Cli, redis_proc):
    before = set(redis_proc.client().scan_iter("*"))
    ran = cli("selftest", "-o", "json")
    assert ran.exit_code == 0, ran.stdout
    data = json.loads(ran.stdout)
    assert [s["step"] for s in data["steps"]] == [
        "health",
        "list pending",
        "create",
        "read",
        "new code",
        "verify",
        "purge",
        "stats",
    ]
    assert all(s["ok"] for s in data["steps"])
    after = set(redis_proc.client().scan_iter("*"))
    assert {k for k in after - before if "selftest" in k} == set()


def test_config_masks_secrets_and_names_sources(cli: Cli, tmp_path):
    (tmp_path / "regctl.toml").write_text('max_attempts = 7\nprefix = "fromtoml"\n')
    ran = cli(
        "--config",
        str(tmp_path / "regctl.toml"),
        "config",
        "-o",
        "json",
        REGCTL_REDIS_URL="redis://user:hunter2@localhost:6379/0",
    )
    data = json.loads(ran.stdout)
    assert data["max_attempts"] == {
        "value": "7",
        "source": f"config file {tmp_path}/regctl.toml line 1",
    }
    assert data["prefix"]["source"] == "environment REGCTL_PREFIX"  # env beats the file
    assert data["code_secret"]["value"] == "***"
    assert data["redis_url"]["value"] == "redis://user:***@localhost:6379/0"
    assert "hunter2" not in ran.stdout


def test_flags_beat_the_environment(cli: Cli):
    data = json.loads(cli("--prefix", "fromflag", "config", "-o", "json").stdout)
    assert data["prefix"]["value"] == "fromflag"
    assert data["prefix"]["source"] == "flag --prefix"
    assert data["prefix"]["ignored"] == ["environment REGCTL_PREFIX (overridden)"]


def test_legacy_variable_names_are_read(cli: Cli):
    data = json.loads(cli("config", "-o", "json", REDIS_MAX_CONNECTIONS="7").stdout)
    assert data["max_connections"]["value"] == "7"


# --- exit codes --------------------------------------------------------------------


def test_an_unreachable_configured_server_exits_69(cli: Cli, tmp_path):
    ran = cli("list", REGCTL_REDIS_URL=f"unix://{tmp_path}/nothing.sock", REGCTL_RETRIES="0")
    assert ran.exit_code == 69
    assert ran.stderr.startswith("Error: Redis is unavailable")


@pytest.mark.parametrize("command", [("export",), ("list",)])
def test_a_json_array_of_an_unreachable_server_is_the_error_alone(
    cli: Cli, tmp_path, command: tuple[str, ...]
):
    """Not `[]` and then an exit status: an empty array would read as an empty store."""
    url = f"unix://{tmp_path}/nothing.sock"
    ran = cli(*command, "-o", "json", REGCTL_REDIS_URL=url, REGCTL_RETRIES="0")
    assert ran.exit_code == 69
    assert json.loads(ran.stdout)["reason"] == "unavailable"


def test_a_wrong_redis_password_exits_77(cli: Cli, tmp_path):
    from tests.servers import RedisProcess

    proc = RedisProcess(tmp_path / "auth", password="right-password").start()
    try:
        ran = cli("list", REGCTL_REDIS_URL=proc.url, REGCTL_REDIS_PASSWORD="wrong-password")
        assert ran.exit_code == 77
        assert "wrong-password" not in ran.stderr
        assert (
            cli("list", REGCTL_REDIS_URL=proc.url, REGCTL_REDIS_PASSWORD="right-password").exit_code
            == 0
        )
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REGCTL_MAX_CONNECTIONS", "many"),
        ("REGCTL_PREFIX", "a b"),
        ("REGCTL_REDIS_URL", "http://x"),
        ("REGCTL_REDIS_URL", "unix://"),
        ("REGCTL_REDIS_URL", "redis://localhost/x"),
    ],
)
def test_bad_configuration_exits_78(cli: Cli, name: str, value: str):
    ran = cli("list", **{name: value})
    assert ran.exit_code == 78
    assert ran.stderr.startswith("Error: ")
    assert ran.stderr.count("\n") == 1


def test_a_missing_code_secret_exits_78_before_anything_is_written(cli: Cli):
    ran = cli(
        "add",
        EMAIL,
        "-f",
        "A",
        "-l",
        "B",
        "--password-stdin",
        input=PASSWORD,
        REGCTL_CODE_SECRET="",
    )
    assert ran.exit_code == 78
    assert cli("list", "-o", "name").stdout == ""


def test_a_failed_delivery_exits_74_and_keeps_the_record(cli: Cli, unused_port: int):
    ran = cli(
        "-o",
        "json",
        "add",
        EMAIL,
        "-f",
        "A",
        "-l",
        "B",
        "--password-stdin",
        input=PASSWORD,
        REGCTL_MAIL_URL=f"smtp://127.0.0.1:{unused_port}",
        REGCTL_MAIL_TIMEOUT="2",
    )
    assert ran.exit_code == 74
    assert "the code was stored but the mail" in ran.stderr
    data = json.loads(ran.stdout)  # one document that says both: stored, not delivered
    assert (data["ok"], data["reason"], data["exit_code"]) == (False, "delivery_failed", 74)
    assert (data["email"], data["delivery"]) == (EMAIL, "failed")
    assert cli("inspect", EMAIL).exit_code == 0
    assert cli("resend", EMAIL, REGCTL_RESEND_COOLDOWN="0").exit_code == 0


def test_a_purge_while_another_runs_exits_75(cli: Cli, redis_proc, prefix: str):
    from regctl import RedisStore

    store = RedisStore(redis_proc.client(), prefix=prefix)
    lease = store.lease("purge", 10_000, 0)
    try:
        ran = cli("purge")
        assert ran.exit_code == 75
        assert ran.stderr.startswith("Error: another purge is running")
        waited = cli("purge", "--wait", "0.2")  # (its hint: a longer wait)
        assert waited.exit_code == 75
        assert waited.stderr == (
            "Error: another purge is still running after a 0.2s wait — let it finish, or "
            "wait longer (--wait SECONDS)\n"
        )
    finally:
        lease.release()
    assert cli("purge").exit_code == 0


def test_a_bug_exits_70_with_one_line_and_no_traceback(cli: Cli, monkeypatch: pytest.MonkeyPatch):
    from regctl.manager import RegistrationManager

    def broken(self: RegistrationManager, top: int = 5) -> None:
        raise RuntimeError("secret-bearing detail must not leak")

    monkeypatch.setattr(RegistrationManager, "stats", broken)
    ran = cli("stats")
    assert ran.exit_code == 70
    assert ran.stderr == (
        "Error: unexpected RuntimeError — rerun with --debug and report the traceback\n"
    )
    assert "Traceback" in cli("--debug", "stats").stderr


def test_an_unreachable_server_prints_no_partial_list(cli: Cli, tmp_path):
    for fmt in ("table", "json", "csv"):
        ran = cli(
            "list", "-o", fmt, REGCTL_REDIS_URL=f"unix://{tmp_path}/none.sock", REGCTL_RETRIES="0"
        )
        assert ran.exit_code == 69
        if fmt == "json":  # the error object, and nothing of a list
            assert json.loads(ran.stdout)["reason"] == "unavailable"
        else:
            assert ran.stdout == ""


# --- the code secret -----------------------------------------------------------------

OTHER_SECRET = "another-secret-0123456789abcdef"


def test_a_writer_with_another_code_secret_exits_78_and_counts_nothing(cli: Cli):
    code = add(cli)["code"]
    ran = cli("verify", EMAIL, wrong(code), REGCTL_CODE_SECRET=OTHER_SECRET)
    assert ran.exit_code == 78
    assert ran.stderr.startswith("Error: this store's codes were made with another code secret")
    shown = json.loads(cli("inspect", EMAIL, "-o", "json").stdout)
    assert shown["attempts"] == 0
    assert cli("secret", "status", REGCTL_CODE_SECRET=OTHER_SECRET).exit_code == 78
    assert cli("secret", "status").exit_code == 0
    assert cli("verify", EMAIL, code).exit_code == 0


def test_rotating_the_secret_needs_yes_in_a_pipe_and_says_what_died(cli: Cli):
    add(cli)
    refused = cli("secret", "rotate", REGCTL_CODE_SECRET=OTHER_SECRET)
    assert refused.exit_code == 2
    assert "add --yes" in refused.stderr
    ran = cli("-o", "json", "secret", "rotate", "--yes", REGCTL_CODE_SECRET=OTHER_SECRET)
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == {"rotated": True, "pending_codes_invalidated": 1}
    assert cli("secret", "status", REGCTL_CODE_SECRET=OTHER_SECRET).exit_code == 0
    assert cli("secret", "status").exit_code == 78


def test_a_rotation_finished_by_a_rerun_is_audited_too(cli: Cli):
    """The rerun that finishes a rotation stopped part-way expires codes: it left no
    entry in the trail."""
    add(cli)
    assert cli("secret", "rotate", "--yes", REGCTL_CODE_SECRET=OTHER_SECRET).exit_code == 0
    rerun = cli("-o", "json", "secret", "rotate", REGCTL_CODE_SECRET=OTHER_SECRET)
    assert json.loads(rerun.stdout) == {"rotated": False, "pending_codes_invalidated": 0}
    trail = json.loads(cli("-o", "json", "audit", "--command", "secret rotate").stdout)
    assert [e["outcome"] for e in trail] == ["ok", "ok"]


def test_the_rotate_prompt_counts_the_codes_that_die(cli: Cli, redis_proc, prefix: str):
    add(cli)
    env = subprocess_env(redis_proc.url, prefix) | {"REGCTL_CODE_SECRET": OTHER_SECRET}
    seen = at_terminal(["secret", "rotate"], env, keys=b"n\n")
    assert seen.exit_code == 1
    assert "1 pending code stops working." in seen.output
