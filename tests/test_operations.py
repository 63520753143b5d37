"""Operations: cron-grade purge, metrics, export/import, the audit trail, rails, deployment."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regctl import RateLimited, RedisStore, RegistrationManager
from regctl.settings import Settings, env_names
from tests.conftest import REGCTL, SECRET, Cli, cli_env, subprocess_env
from tests.servers import RedisProcess

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "operations-password"


def add(cli: Cli, email: str, **env: str) -> str:
    ran = cli(
        "-o",
        "json",
        "add",
        email,
        "-f",
        "O",
        "-l",
        "P",
        "--password-stdin",
        "--show-code",
        input=PASSWORD + "\n",
        **env,
    )
    assert ran.exit_code == 0, ran.stderr
    return str(json.loads(ran.stdout)["code"])


# --- cron-grade purge -------------------------------------------------------------------------


def test_purge_writes_prometheus_metrics_and_a_json_summary(cli: Cli, tmp_path: Path):
    from prometheus_client.parser import text_string_to_metric_families

    add(cli, "m1@example.com")
    metrics = tmp_path / "regctl.prom"
    ran = cli("-o", "json", "purge", "--metrics-file", str(metrics))
    summary = json.loads(ran.stdout)
    assert summary["ok"] is True
    assert summary["duration_s"] >= 0
    assert summary["by_reason"] == {"expired": 0, "orphan": 0, "matched": 0}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples[("regctl_pending_registrations", ())] == 1
    assert samples[("regctl_purge_removed", (("reason", "expired"),))] == 0
    assert abs(samples[("regctl_purge_last_success_timestamp_seconds", ())] - time.time()) < 60


def test_two_purge_processes_never_overlap(redis_proc: RedisProcess, prefix: str):
    env = {**os.environ, **cli_env(redis_proc.url, prefix)}
    # The holder keeps the lock until told to let go (a line on its stdin), so no
    # timing decides which purge meets it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, redis; from regctl import RedisStore; "
            f"s = RedisStore(redis.Redis(unix_socket_path={str(redis_proc.socket)!r}, "
            f"decode_responses=True), prefix={prefix!r}); l = s.lease('purge', 600000, 0); "
            "print('held', flush=True); sys.stdin.readline(); l.release()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    queued = subprocess.Popen(
        [REGCTL, "purge", "--wait", "120"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        blocked = subprocess.run(
            [REGCTL, "purge"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert blocked.returncode == 75
        assert queued.poll() is None  # still waiting: the lock is held
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
        _out, err = queued.communicate(timeout=120)
        assert queued.returncode == 0, err
    finally:
        for proc in (holder, queued):
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


# --- export / import ------------------------------------------------------------------------


def test_export_is_redacted_by_default(cli: Cli):
    add(cli, "e1@example.com")
    line = json.loads(cli("export").stdout)
    assert line["email"] == "e1@example.com"
    assert "password_hash" not in line
    assert "code_hash" not in line


def exported(text: str) -> dict[str, dict[str, object]]:
    return {row["email"]: row for row in map(json.loads, text.splitlines())}


def test_export_import_round_trip_onto_another_server(cli: Cli, fresh_redis: RedisProcess):
    codes = {email: add(cli, email) for email in ("r1@example.com", "r2@example.com")}
    cli("verify", "r1@example.com", f"{(int(codes['r1@example.com']) + 1) % 10**6:06d}")
    dump = cli("export", "--include-secrets").stdout
    other = {"REGCTL_REDIS_URL": fresh_redis.url}
    dry = cli("-o", "json", "import", "-", "--dry-run", input=dump, **other)
    assert json.loads(dry.stdout)["restored"] == 2
    assert cli("list", "-o", "name", **other).stdout == ""
    ran = cli("-o", "json", "import", "-", input=dump, **other)
    assert json.loads(ran.stdout)["restored"] == 2
    assert exported(cli("export", "--include-secrets", **other).stdout) == exported(dump)
    source = {r["email"]: r for r in json.loads(cli("list", "-o", "json").stdout)}
    copied = {r["email"]: r for r in json.loads(cli("list", "-o", "json", **other).stdout)}
    for email, row in copied.items():
        assert row["expires_at"] == source[email]["expires_at"]  # remaining lifetime kept
        assert row["attempts"] == source[email]["attempts"]
    # the same code secret: the mailed code still works on the new server
    assert cli("verify", "r2@example.com", codes["r2@example.com"], **other).exit_code == 0


def test_a_dry_run_import_records_no_layout(cli: Cli, fresh_redis: RedisProcess):
    """A dry run changes nothing: not even the bucket count a later import may choose."""
    add(cli, "layout@example.com")
    dump = cli("export", "--include-secrets").stdout
    other = {"REGCTL_REDIS_URL": fresh_redis.url, "REGCTL_PREFIX": "moved"}
    assert cli("import", "-", "--dry-run", input=dump, **other).exit_code == 0
    assert fresh_redis.client().exists("moved:meta") == 0
    ran = cli("-o", "json", "import", "-", input=dump, REGCTL_BUCKETS="128", **other)
    assert json.loads(ran.stdout)["restored"] == 1
    assert fresh_redis.client().hget("moved:meta", "buckets") == "128"


def test_import_keeps_existing_records_unless_replace(cli: Cli):
    add(cli, "x1@example.com")
    dump = cli("export", "--include-secrets").stdout
    kept = json.loads(cli("-o", "json", "import", "-", input=dump).stdout)
    assert (kept["restored"], kept["existing"]) == (0, 1)
    replaced = json.loads(cli("-o", "json", "import", "-", "--replace", input=dump).stdout)
    assert replaced["restored"] == 1


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_a_line_that_is_not_utf8_is_refused_and_the_others_imported(
    cli: Cli, fresh_redis: RedisProcess, tmp_path, source: str
):
    for email in ("u1@example.com", "u2@example.com"):
        add(cli, email)
    first, second = cli("export", "--include-secrets").stdout.splitlines()
    broken = second.replace("u2@", "J\u00e9r\u00f4me@").encode().replace(b"\xc3\xa9", b"\xe9")
    data = first.encode() + b"\n" + broken + b"\n"
    other = {"REGCTL_REDIS_URL": fresh_redis.url}
    if source == "file":
        (tmp_path / "backup.ndjson").write_bytes(data)
        ran = cli("import", str(tmp_path / "backup.ndjson"), **other)
    else:
        ran = cli("import", "-", input=data, **other)
    assert ran.exit_code == 2
    assert "line 2: not UTF-8" in ran.stderr
    assert "Error: 1 line of " in ran.stderr
    assert cli("list", "-o", "name", **other).stdout == "u1@example.com\n"


def test_an_import_weighs_its_lines_in_the_bytes_a_file_size_counts(tmp_path):
    """The progress bar's weight: all of a file's lines add up to its size (non-ASCII
    text and stray bytes included), so the bar ends at 100 %."""
    from regctl.cli.transfer_cmd import byte_size

    data = b"plain\n" + "J\u00e9r\u00f4me \u2603\n".encode() + b"stray \xe9\xff\n"
    (tmp_path / "lines").write_bytes(data)
    with (tmp_path / "lines").open(encoding="utf-8", errors="surrogateescape") as handle:
        assert sum(byte_size(line) for line in handle) == len(data)


def test_an_import_names_its_refusal_even_quietly_and_counts_the_unnamed(cli: Cli):
    lines = "".join("{not json}\n" for _ in range(25))
    quiet = cli("-q", "import", "-", input=lines)
    assert quiet.exit_code == 2
    assert quiet.stderr.startswith("Error: 25 lines of stdin refused — none was valid; fix")
    told = cli("import", "-", input=lines)
    assert "line 20: not a JSON object" in told.stderr
    assert "and 5 more" in told.stderr
    as_json = cli("-o", "json", "import", "-", input=lines)
    data = json.loads(as_json.stdout)  # (one document: the report, a failure's fields in it)
    assert (data["invalid"], len(data["errors"])) == (25, 20)
    assert (data["ok"], data["reason"], data["exit_code"]) == (False, "invalid_input", 2)
    assert data["message"] == "25 lines of stdin refused"
    assert as_json.exit_code == 2


def test_an_overlong_line_is_refused_without_being_read_whole(cli: Cli, fresh_redis):
    """A corrupt or hostile backup (one line of gigabytes) cost its size in memory."""
    import io

    from regctl.transfer import MAX_LINE, bounded_lines

    add(cli, "kept@example.com")
    good = cli("export", "--include-secrets").stdout
    huge = '{"email": "' + "a" * 100_000 + '@example.com"}\n'
    assert [len(line) for line in bounded_lines(io.StringIO(huge + good))] == [
        MAX_LINE + 1,  # (cut: the rest was read in pieces and dropped)
        len(good),
    ]
    ran = cli("import", "-", input=huge + good, REGCTL_REDIS_URL=fresh_redis.url)
    assert ran.exit_code == 2
    assert f"line 1: longer than {MAX_LINE:,} characters" in ran.stderr
    assert cli("inspect", "kept@example.com", REGCTL_REDIS_URL=fresh_redis.url).exit_code == 0


def test_a_second_line_for_an_address_is_refused_not_counted_twice(cli: Cli, fresh_redis):
    add(cli, "twice@example.com")
    line = cli("export", "--include-secrets").stdout
    dump = line + line.replace("twice@", "TWICE@")
    other = {"REGCTL_REDIS_URL": fresh_redis.url}
    for flags in (["--dry-run"], [], ["--replace"]):
        ran = cli("-o", "json", "import", "-", *flags, input=dump, **other)
        data = json.loads(ran.stdout)
        assert ran.exit_code == 2
        assert data["errors"] == ["line 2: TWICE@example.com is on an earlier line too"]
        assert data["restored"] + data["existing"] == 1, flags


def test_codes_made_with_another_secret_are_refused_on_a_fresh_store(
    cli: Cli, fresh_redis: RedisProcess
):
    """They could never verify here, and the importer's secret becomes the store's."""
    add(cli, "secret@example.com")
    dump = cli("export", "--include-secrets").stdout
    other = {"REGCTL_REDIS_URL": fresh_redis.url, "REGCTL_CODE_SECRET": "another-" + "s" * 32}
    ran = cli("import", "-", input=dump, **other)
    assert ran.exit_code == 2
    assert "line 1: its code was made with another code secret" in ran.stderr
    assert [k for k in fresh_redis.client().keys("*") if "audit" not in k] == []  # no claim
    right = {"REGCTL_REDIS_URL": fresh_redis.url}  # the exporting store's secret, as told
    assert cli("-o", "json", "import", "-", input=dump, **right).exit_code == 0
    assert json.loads(cli("-o", "json", "secret", "status", **right).stdout)["secret"] == "matches"


def test_an_import_with_nothing_to_restore_writes_nothing(cli: Cli, fresh_redis, tmp_path):
    """Not even an audit entry: the trail is of what changed the store."""
    other = {"REGCTL_REDIS_URL": fresh_redis.url}
    assert cli("import", "-", input="", **other).exit_code == 0
    assert cli("import", "-", input="{not json}\n", **other).exit_code == 2
    assert fresh_redis.client().keys("*") == []
    add(cli, "bom@example.com")
    backup = tmp_path / "bom.ndjson"  # as some editors save it: a byte-order mark first
    backup.write_bytes(b"\xef\xbb\xbf" + cli("export", "--include-secrets").stdout.encode())
    assert cli("import", str(backup), **other).exit_code == 0
    assert cli("list", "-o", "name", **other).stdout == "bom@example.com\n"


def test_an_export_as_one_json_array_is_refused_with_the_way_to_import(cli: Cli):
    """(Past 16 384 characters, about 35 records, it was refused as too long a line.)"""
    add(cli, "array@example.com")
    (record,) = json.loads(cli("-o", "json", "export", "--include-secrets").stdout)
    array = json.dumps([record] * 100)
    assert len(array) > 16_384
    ran = cli("import", "-", input=array)
    assert ran.exit_code == 2
    assert "line 1: a JSON array: import reads one object a line, as `export` writes" in (
        ran.stderr
    )
    assert "none was valid; fix the lines named" in ran.stderr


def test_an_import_from_a_closed_stdin_is_refused(cli: Cli):
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    ran = subprocess.run(
        ["sh", "-c", f"'{REGCTL}' import - <&-"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (ran.returncode, ran.stderr) == (2, "Error: cannot read stdin: it is closed\n")


def test_a_redacted_or_broken_line_is_refused_by_line_number(cli: Cli):
    add(cli, "y1@example.com")
    redacted = cli("export").stdout
    ran = cli("import", "-", input=redacted + "{not json}\n")
    assert ran.exit_code == 2
    assert "line 1: no password_hash" in ran.stderr
    assert "line 2: not a JSON object" in ran.stderr


# --- audit trail -----------------------------------------------------------------------------


def test_every_mutating_command_leaves_an_audit_entry(cli: Cli):
    env = {"REGCTL_RESEND_COOLDOWN": "0"}
    add(cli, "a1@example.com", **env)
    dump = cli("export", "--include-secrets").stdout
    code = json.loads(cli("-o", "json", "resend", "a1@example.com", "--show-code", **env).stdout)
    cli("verify", "a1@example.com", "000000" if code["code"] != "000000" else "111111")
    cli("unlock", "a1@example.com")
    cli("verify", "a1@example.com", code["code"])
    cli("delete", "a1@example.com")
    cli("purge", "--domain", "example.com", "--yes")
    cli("import", "-", input=dump)
    entries = json.loads(cli("audit", "-o", "json").stdout)
    seen = [(e["command"], e["outcome"]) for e in reversed(entries)]
    assert seen == [
        ("add", "ok"),
        ("resend", "ok"),
        ("verify", "invalid_code"),
        ("unlock", "ok"),
        ("verify", "ok"),
        ("delete", "not_found"),
        ("purge", "ok"),
        ("import", "ok"),
    ]
    assert all("@" in e["who"] for e in entries)
    filtered = json.loads(cli("audit", "-o", "json", "--command", "verify").stdout)
    assert len(filtered) == 2


def test_an_audit_filter_on_a_command_never_recorded_is_refused(cli: Cli):
    """A misspelt command would match nothing, and an empty answer would look like
    "nobody did that"."""
    ran = cli("audit", "--command", "verfy")
    assert ran.exit_code == 2
    assert ran.stderr.startswith("Error: the audit trail records no command 'verfy' — one of:")
    assert "secret rotate" in ran.stderr
    assert ran.stdout == ""


# --- safety rails ------------------------------------------------------------------------------


def test_production_needs_yes_to_delete(cli: Cli):
    add(cli, "p1@example.com")
    ran = cli("delete", "p1@example.com", REGCTL_ENV="production")
    assert ran.exit_code == 2
    assert "--yes" in ran.stderr
    assert cli("delete", "p1@example.com", "--yes", REGCTL_ENV="production").exit_code == 0


# --- deployment examples -----------------------------------------------------------------------


def test_the_compose_file_uses_only_real_commands_and_settings():
    import yaml
    from typer.core import TyperGroup
    from typer.main import get_command

    from regctl.cli.app import build_app

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    redis_cmd = compose["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "healthcheck" in compose["services"]["redis"]
    assert compose["networks"]["backend"]["internal"] is True
    purge = compose["services"]["purge"]
    known = {variable for name in Settings.model_fields for variable in env_names(name)}
    assert set(purge["environment"]) <= known
    segment = next(part for part in purge["command"][0].split(";") if "regctl" in part)
    words = shlex.split(segment)
    words = words[words.index("regctl") :]
    root = get_command(build_app())
    assert isinstance(root, TyperGroup)
    command = root.commands[words[2]]
    options = {o for p in root.params + command.params for o in p.opts}
    assert {w for w in words[1:] if w.startswith("-")} <= options


def test_the_dockerfile_copies_what_exists_and_runs_a_real_command():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY"):
            for path in line.split()[1:-1]:
                assert (ROOT / path).exists(), path
    assert 'CMD ["health"]' in text


@pytest.mark.parametrize("doc", ["docs/runbook.md"])
def test_the_runbook_commands_exist(doc: str):
    from typer.core import TyperGroup
    from typer.main import get_command

    from regctl.cli.app import build_app

    root = get_command(build_app())
    assert isinstance(root, TyperGroup)
    text = (ROOT / doc).read_text()
    used = {
        line.split()[1]
        for line in text.splitlines()
        if line.startswith("regctl ") and not line.split()[1].startswith("-")
    }
    assert used
    assert used <= set(root.commands), used - set(root.commands)


# --- live view -------------------------------------------------------------------------------


def test_stats_interval_prints_one_sample_per_line_when_piped(cli: Cli):
    add(cli, "l1@example.com")
    header, *lines = cli("stats", "--interval", "0.1", "--count", "3").stdout.splitlines()
    assert header.startswith("timestamp\tpending\t")
    assert len(lines) == 3
    assert all(line.split("\t")[1] == "1" for line in lines)
    samples = [
        json.loads(x)
        for x in cli(
            "-o", "ndjson", "stats", "--interval", "0.1", "--count", "2"
        ).stdout.splitlines()
    ]
    assert [s["total"] for s in samples] == [1, 1]


def test_health_interval_samples_and_exits_0(cli: Cli):
    ran = cli("health", "--interval", "0.1", "--count", "2")
    assert ran.exit_code == 0
    samples = ran.stdout.splitlines()[1:]
    assert [line.split("\t")[1] for line in samples] == ["OK", "OK"]


# --- bulk resend -------------------------------------------------------------------------------


def test_bulk_resend_respects_filters_rate_and_reruns(cli: Cli, smtp):
    env = {"REGCTL_RESEND_COOLDOWN": "0", "REGCTL_MAIL_URL": smtp.url}
    for i in range(4):
        add(cli, f"b{i}@bulk.example", REGCTL_MAIL_URL="none")
    add(cli, "other@keep.example", REGCTL_MAIL_URL="none")
    dry = cli("resend-many", "--domain", "bulk.example", "--never-resent", "--dry-run", **env)
    assert sorted(dry.stdout.split()) == [f"b{i}@bulk.example" for i in range(4)]
    as_csv = cli("-o", "csv", "resend-many", "--domain", "bulk.example", "--dry-run", **env)
    header, row = as_csv.stdout.splitlines()  # the report as one CSV row, not addresses
    assert dict(zip(header.split(","), row.split(","), strict=True))["sent"] == "4"
    assert smtp.sink.messages == []
    started = time.monotonic()
    first = json.loads(
        cli(
            "-o",
            "json",
            "resend-many",
            "--domain",
            "bulk.example",
            "--never-resent",
            "--limit",
            "2",
            "--rate",
            "4/s",
            **env,
        ).stdout
    )
    assert first["sent"] == 2
    assert time.monotonic() - started >= 0.25  # paced: 4/s means a pause between mails
    rerun = json.loads(
        cli("-o", "json", "resend-many", "--domain", "bulk.example", "--never-resent", **env).stdout
    )
    assert rerun["sent"] == 2  # only the two not reached before
    assert sorted(first["recipients"] + rerun["recipients"]) == [
        f"b{i}@bulk.example" for i in range(4)
    ]
    assert len(smtp.sink.messages) == 4
    assert all(m["To"].endswith("@bulk.example") for m in smtp.sink.messages)


def test_bulk_resend_stops_on_a_delivery_outage_and_a_rerun_resumes(cli: Cli, smtp):
    env = {"REGCTL_RESEND_COOLDOWN": "0", "REGCTL_MAIL_URL": smtp.url}
    for i in range(10):
        add(cli, f"o{i}@outage.example", REGCTL_MAIL_URL="none")
    smtp.sink.refusing = True
    ran = cli("-o", "json", "resend-many", "--domain", "outage.example", **env)
    assert ran.exit_code == 74
    report = json.loads(ran.stdout)
    assert (report["stopped"], report["failed"], report["sent"]) == (True, 3, 0)
    assert (report["ok"], report["reason"], report["exit_code"]) == (False, "delivery_failed", 74)
    assert len(report["undelivered"]) == 3
    listed = json.loads(cli("list", "--domain", "outage.example", "-o", "json").stdout)
    assert sum(r["resend_count"] for r in listed) == 3  # the outage cost three users a resend
    smtp.sink.refusing = False
    rerun = json.loads(cli("-o", "json", "resend-many", "--domain", "outage.example", **env).stdout)
    assert (rerun["stopped"], rerun["failed"], rerun["sent"]) == (False, 0, 10)
    assert {m["To"] for m in smtp.sink.messages} == {f"o{i}@outage.example" for i in range(10)}
    trail = json.loads(cli("-o", "json", "audit", "--target", "o9@outage.example").stdout)
    assert [(e["command"], e["outcome"]) for e in trail] == [("resend-many", "ok"), ("add", "ok")]


def test_bulk_resend_skips_those_inside_the_cooldown(cli: Cli):
    add(cli, "c1@cool.example")
    ran = json.loads(
        cli("-o", "json", "resend-many", "--domain", "cool.example", "--no-send").stdout
    )
    assert ran["sent"] == 0
    assert ran["skipped"] == {"cooldown": 1}


def test_a_bulk_resend_without_mail_is_refused_unless_asked_not_to_send(cli: Cli):
    """With mail off every new code would reach nobody and each old code would die."""
    env = {"REGCTL_RESEND_COOLDOWN": "0", "REGCTL_MAIL_URL": "none"}
    add(cli, "m1@nomail.example")
    before = json.loads(cli("inspect", "m1@nomail.example", "-o", "json").stdout)
    for dry in ([], ["--dry-run"]):
        ran = cli("resend-many", "--domain", "nomail.example", *dry, **env)
        assert ran.exit_code == 78
        assert "REGCTL_MAIL_URL is none" in ran.stderr
    after = json.loads(cli("inspect", "m1@nomail.example", "-o", "json").stdout)
    assert after["resend_count"] == before["resend_count"]
    quiet = json.loads(
        cli("-o", "json", "resend-many", "--domain", "nomail.example", "--no-send", **env).stdout
    )
    assert (quiet["sent"], quiet["not_sent"]) == (0, 1)
    foretold = cli(
        "-o", "json", "resend-many", "--domain", "nomail.example", "--no-send", "--dry-run", **env
    )
    assert (json.loads(foretold.stdout)["sent"], json.loads(foretold.stdout)["not_sent"]) == (0, 1)
    told = cli("resend-many", "--domain", "nomail.example", "--no-send", **env)
    assert told.stdout.startswith("resent 1 (not sent: 1);")


def test_a_resend_needs_an_address_and_a_bulk_resend_filters(cli: Cli):
    ran = cli("resend")
    assert ran.exit_code == 2
    assert "missing argument 'email'" in ran.stderr.lower()
    ran = cli("resend-many")
    assert ran.exit_code == 2
    assert "give filters for a bulk resend" in ran.stderr
    ran = cli("resend", "a@example.com", "--older-than", "2h")  # bulk options: not here
    assert ran.exit_code == 2


# --- funnel statistics -------------------------------------------------------------------------


def test_stats_shows_the_funnel_and_the_age_histogram(cli: Cli):
    code = add(cli, "f1@funnel.example")
    add(cli, "f2@funnel.example")
    cli("verify", "f1@funnel.example", code)
    data = json.loads(cli("stats", "-o", "json", "--days", "3").stdout)
    today = data["funnel"][0]
    assert (today["created"], today["sent"], today["verified"]) == (2, 2, 1)
    assert today["conversion"] == 0.5
    assert len(data["funnel"]) == 3
    assert {"age": "< 15m", "count": 1} in data["ages"]
    lines = cli("stats").stdout.splitlines()
    assert f"funnel {today['day']} verified\t1" in lines


# --- client limits -----------------------------------------------------------------------


def test_limits_show_and_reset_a_client_key(cli: Cli, redis_proc: RedisProcess, pw_hash: str):

    store = RedisStore(redis_proc.client(), prefix=cli.env["REGCTL_PREFIX"])
    manager = RegistrationManager(store, secret=SECRET)
    for i in range(10):
        manager.add(f"l{i}@example.com", "L", "M", password_hash=pw_hash, client="203.0.113.9")
    with pytest.raises(RateLimited):
        manager.add("l10@example.com", "L", "M", password_hash=pw_hash, client="203.0.113.9")
    shown = cli("-o", "json", "limits", "show", "203.0.113.9")
    data = json.loads(shown.stdout)
    assert (data["signups"], data["signup_limit"], data["codes"]) == (10, 10, 10)
    assert 0 < data["signup_wait_ms"] <= 3_600_000
    csv = cli("-o", "csv", "limits", "show", "203.0.113.9").stdout.splitlines()
    assert csv[0].split(",")[:4] == ["client", "window_s", "signups", "signup_limit"]
    assert csv[1].startswith("203.0.113.9,3600,10,10,")
    text = cli("limits", "show", "203.0.113.9").stdout
    assert "signups: 10 of 10 per 1h00m, the oldest leaves in" in text
    checked = json.loads(cli("-o", "json", "doctor").stdout)
    assert "foreign-keys" not in {f["code"] for f in checked["findings"]}  # regctl's own
    reset = cli("limits", "reset", "203.0.113.9")
    assert (reset.exit_code, reset.stdout) == (0, "limits of 203.0.113.9 reset\n")
    manager.add("l10@example.com", "L", "M", password_hash=pw_hash, client="203.0.113.9")
    audit = json.loads(cli("-o", "json", "audit", "--command", "limits reset").stdout)
    assert audit[0]["target"] == "203.0.113.9"
    again = cli("limits", "reset", "203.0.113.9")
    assert "limits of 203.0.113.9 reset" in again.stdout  # the add above counted again
    empty = cli("limits", "reset", "198.51.100.200")
    assert empty.stdout == "198.51.100.200 had no sign-ups or codes counted\n"


def test_limits_refuse_a_bad_client_key(cli: Cli):
    ran = cli("limits", "show", "bad\x1b[2Jkey")
    assert ran.exit_code == 2
    assert ran.stderr == "Error: a client key must be printable text\n"
