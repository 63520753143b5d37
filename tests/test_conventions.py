"""The command in pipes, terminals and scripts: global options anywhere, one JSON
document, doctor's knowledge of regctl's own keys, formats, live views, messages."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from regctl.cli.render import COLUMNS
from regctl.codec import FIELDS
from regctl.keys import Keyspace, digest
from tests.conftest import REGCTL, Cli, at_terminal, regctl, subprocess_env
from tests.servers import RedisProcess
from tests.test_cli import EMAIL, PASSWORD, add


def client_of(proc: RedisProcess) -> redis.Redis:
    return proc.client()


def written(proc: RedisProcess, cli: Cli) -> tuple[frozenset[str], int]:
    """The keys under this test's prefix and its audit stream's length: what a command
    that must write nothing would change (other tests' keys expire on the shared server)."""
    keyspace = Keyspace(cli.env["REGCTL_PREFIX"])
    client = client_of(proc)
    return frozenset(client.scan_iter(keyspace.pattern())), int(client.xlen(keyspace.audit))


# --- global options anywhere on the line --------------------------------------------


def test_global_options_work_after_the_command(cli: Cli, redis_proc: RedisProcess):
    add(cli)
    ran = cli("purge", "--quiet", "--url", redis_proc.url, "--prefix", cli.env["REGCTL_PREFIX"])
    assert (ran.exit_code, ran.stdout, ran.stderr) == (0, "", "")
    listed = cli("list", "-q", "--output", "name")
    assert listed.stdout == EMAIL + "\n"


def test_an_option_after_double_dash_is_an_argument(cli: Cli):
    ran = cli("list", "--", "-q")
    assert ran.exit_code == 2
    assert "unexpected extra argument" in ran.stderr


def test_a_global_option_given_twice_takes_the_last(cli: Cli):
    add(cli)
    ran = cli("-o", "json", "inspect", EMAIL, "-o", "name")
    assert ran.stdout == EMAIL + "\n"


def test_command_help_lists_the_global_options(cli: Cli):
    ran = cli("purge", "--help")
    section = ran.stdout.partition("Global options (anywhere on the line):")[2]
    for option in ("--url", "--prefix", "-q, --quiet", "-o, --output", "--no-headers"):
        assert option in section


# --- one JSON document, wherever -o json is --------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "nobody@example.com", "-o", "json"),
        ("-o", "json", "inspect", "nobody@example.com"),
        ("inspect", "nobody@example.com", "--output=json"),
        ("inspect", "nobody@example.com", "-ojson"),
    ],
)
def test_an_error_is_one_json_object_wherever_json_was_asked_for(cli: Cli, args):
    ran = cli(*args)
    assert ran.exit_code == 3
    assert json.loads(ran.stdout) == {
        "ok": False,
        "reason": "not_found",
        "message": "no pending registration for nobody@example.com",
        "exit_code": 3,
        "hint": "it was verified, expired or never added",
    }


@pytest.mark.parametrize(
    "args",
    [("list", "--bogus", "-o", "json"), ("-qo", "json", "list", "--bogus")],  # (flags run together)
)
def test_a_usage_error_in_json_mode_is_a_json_object_too(cli: Cli, args):
    ran = cli(*args)
    assert ran.exit_code == 2
    error = json.loads(ran.stdout)
    assert (error["ok"], error["reason"], error["exit_code"]) == (False, "usage", 2)
    assert "--bogus" in error["message"]
    assert ran.stderr.startswith("Error: No such option: --bogus")


# --- doctor knows regctl's own keys ---------------------------------------------------------


def _findings(cli: Cli) -> dict[str, dict[str, Any]]:
    ran = cli("doctor", "-o", "json")
    return {f["code"]: f for f in json.loads(ran.stdout)["findings"]}


def test_doctor_accepts_regctls_own_keys_after_audited_commands(cli: Cli):
    add(cli)
    cli("unlock", EMAIL)
    cli("purge")
    findings = _findings(cli)
    assert "keys-without-ttl" not in findings
    assert "foreign-keys" not in findings


def test_doctor_tells_foreign_keys_from_regctls_keys_that_lost_their_ttl(
    cli: Cli, redis_proc: RedisProcess
):
    prefix = cli.env["REGCTL_PREFIX"]
    add(cli)
    client = client_of(redis_proc)
    client.set(f"{prefix}:someone-elses", "x")
    findings = _findings(cli)
    foreign = findings["foreign-keys"]
    assert foreign["severity"] == "info"  # not a problem: doctor still passes on it
    assert "delete" not in foreign["fix"]
    assert "keys-without-ttl" not in findings

    (record,) = client.keys(Keyspace(prefix).record_pattern())
    client.persist(record)
    lost = _findings(cli)["keys-without-ttl"]
    assert lost["severity"] == "warning"
    assert "key of regctl's" in lost["message"]
    assert "delete" not in lost["fix"]


def test_the_audit_trail_is_capped_as_configured(cli: Cli, redis_proc: RedisProcess):
    prefix = cli.env["REGCTL_PREFIX"]
    client = client_of(redis_proc)
    for i in range(300):
        client.xadd(Keyspace(prefix).audit, {"who": "w", "command": "add", "target": str(i)})
    assert "audit-over-cap" in _findings(cli.with_env(REGCTL_AUDIT_MAX_ENTRIES="100"))
    cli("unlock", "nobody@example.com", REGCTL_AUDIT_MAX_ENTRIES="100")  # audited: trims
    assert client.xlen(Keyspace(prefix).audit) <= 200  # MAXLEN ~ keeps whole stream nodes
    assert "audit-over-cap" not in _findings(cli.with_env(REGCTL_AUDIT_MAX_ENTRIES="100"))


# --- formats mean what they say ----------------------------------------------------------


def test_name_prints_the_address_for_every_command_about_one_record(cli: Cli):
    ran = cli("add", EMAIL, "-f", "A", "-l", "L", "--password-stdin", "-o", "name", input=PASSWORD)
    assert ran.stdout == EMAIL + "\n"
    for command in ("inspect", "unlock", "delete"):
        assert cli(command, EMAIL, "-o", "name").stdout == EMAIL + "\n", command


def test_csv_of_a_mutating_command_is_csv(cli: Cli):
    ran = cli(
        "add",
        EMAIL,
        "-f",
        "A",
        "-l",
        "L",
        "--password-stdin",
        "--show-code",
        "-o",
        "csv",
        input=PASSWORD,
    )
    (row,) = csv.DictReader(io.StringIO(ran.stdout))
    assert row["email"] == EMAIL
    assert row["delivery"] == "not_sent"
    assert len(row["code"]) == 6
    purged = next(csv.DictReader(io.StringIO(cli("purge", "-o", "csv").stdout)))
    assert purged["ok"] == "true"
    assert purged["purged"] == "0"


@pytest.mark.parametrize(
    "args", [("-o", "json"), ("-o", "json", "server"), ("limits", "-o", "json")]
)
def test_a_missing_command_under_o_json_is_one_json_usage_error(cli: Cli, args: tuple[str, ...]):
    """(A group without its command printed its help, exit 0: not a JSON document.)"""
    ran = cli(*args)
    assert ran.exit_code == 2
    assert json.loads(ran.stdout)["reason"] == "usage"


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("purge", "-o", "name"), "`regctl purge` has no -o name output"),
        (("export", "-o", "csv"), "`regctl export` has no -o csv output"),
        (("stats", "-o", "name"), "`regctl stats` has no -o name output"),
        (("limits", "reset", "203.0.113.7", "-o", "name"), "`regctl limits reset` has no -o"),
        (("list", "-o", "json", "--field", "email"), "--field selects columns"),
        (("list", "--raw-csv"), "--raw-csv needs -o csv"),
        (("list", "--field", "password"), "unknown field 'password'"),
        (("list", "--limit", "0"), "Invalid value for '--limit': must be at least 1"),
        (("resend", EMAIL, "--older-than", "2h"), "a resend by filters is `regctl resend-many`"),
        (("stats", "--count", "3"), "--count needs --interval"),
        (("stats", "--interval", "1", "-o", "json"), "use -o ndjson"),
    ],
)
def test_a_format_or_option_that_cannot_apply_is_refused_before_anything_runs(
    cli: Cli, redis_proc: RedisProcess, args: tuple[str, ...], refused: str
):
    add(cli)
    before = written(redis_proc, cli)
    ran = cli(*args)
    assert ran.exit_code == 2
    assert refused in ran.stderr
    assert written(redis_proc, cli) == before  # nothing written, not even audit


def test_no_headers_and_fields_for_scripts(cli: Cli):
    add(cli)
    ran = cli("list", "--no-headers", "--field", "status,email")
    assert ran.stdout == f"pending\t{EMAIL}\n"
    ran = cli("list", "-o", "csv", "--no-headers", "-F", "email")
    assert ran.stdout.splitlines() == [EMAIL]  # (the runner reads \r\n as \n)
    assert cli("config", "--no-headers").stdout.startswith("redis_url\t")


def test_force_color_in_a_pipe_keeps_the_pipe_shape(cli: Cli):
    add(cli)
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    ran = regctl(env | {"FORCE_COLOR": "1"}, "list")
    assert ran.stdout.splitlines()[0] == "\t".join(COLUMNS)
    assert "\x1b[" not in ran.stdout


# --- monitoring and live views ----------------------------------------------------------------


def test_health_nagios_is_one_status_line_with_performance_data(cli: Cli):
    add(cli)
    ran = cli("health", "--nagios", "--warn-latency", "40")
    assert ran.exit_code == 0
    (line,) = ran.stdout.splitlines()
    status, _, perf = line.partition(" | ")
    assert status.startswith("REGCTL OK - 1 pending, ")
    fields = dict(item.split("=", 1) for item in perf.split())
    assert fields["pending"] == "1;;;0"
    assert fields["latency_ms"].split(";")[1:3] == ["40", "500"]
    assert int(fields["memory_used"].split("B")[0]) > 0


def test_health_nagios_says_unknown_for_a_bad_setting(cli: Cli):
    ran = cli("health", "--nagios", REGCTL_HEALTH_TIMEOUT="0")
    assert ran.exit_code == 3
    assert ran.stdout.startswith("REGCTL UNKNOWN - ")
    assert "health_timeout" in ran.stdout or "HEALTH_TIMEOUT" in ran.stdout


def test_health_nagios_says_critical_for_a_server_that_is_down(cli: Cli, tmp_path):
    ran = cli("health", "--nagios", REGCTL_REDIS_URL=f"unix://{tmp_path}/none.sock")
    assert ran.exit_code == 2
    assert ran.stdout.startswith("REGCTL CRITICAL - connection: Redis is unavailable")
    assert ran.stdout.count("\n") == 1


def test_a_streamed_live_view_starts_with_a_header_and_stamps_each_sample(cli: Cli):
    ran = cli("stats", "--interval", "0.1", "--count", "2")
    header, *samples = ran.stdout.splitlines()
    assert header.split("\t")[:2] == ["timestamp", "pending"]
    assert len(samples) == 2
    assert all(s.split("\t")[0].startswith("20") for s in samples)
    health = cli("health", "--interval", "0.1", "--count", "2", "-o", "csv").stdout
    assert health.splitlines()[0] == "timestamp,status,latency_ms,pending,used_memory,problems"
    ndjson = cli("stats", "--interval", "0.1", "--count", "2", "-o", "ndjson").stdout
    assert [json.loads(line)["total"] for line in ndjson.splitlines()] == [0, 0]


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        (signal.SIGINT, 130),
        # systemd, `timeout` and Kubernetes stop with SIGTERM: the command's cleanup runs
        # as at Ctrl-C (it died at once, its cleanup skipped), then the process ends by
        # the signal, as a supervisor expects (143 to a shell)
        (signal.SIGTERM, -signal.SIGTERM),
    ],
)
def test_ctrl_c_or_sigterm_ends_a_live_view_after_its_cleanup(
    cli: Cli, stop: signal.Signals, status: int
):
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    proc = subprocess.Popen(
        [REGCTL, "-o", "ndjson", "stats", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # a sample: it is running
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status
    assert err.strip().endswith("Interrupted")
    assert "Traceback" not in err
    assert all(json.loads(line) for line in out.splitlines())  # (each sample whole)


def test_ctrl_c_again_during_a_purges_cleanup_still_releases_its_lease(
    cli: Cli, redis_proc: RedisProcess, pw_hash: str
):
    """Each Ctrl-C raised: one pressed again while the first's cleanup released the
    lease cut that short, and the lease stayed held (the next purge exited 75)."""
    from regctl import RedisStore
    from tests.conftest import started
    from tests.test_reliability import bulk_load

    prefix = cli.env["REGCTL_PREFIX"]
    client = client_of(redis_proc)
    bulk_load(RedisStore(client, prefix=prefix), 3000, pw_hash)
    lease = Keyspace(prefix).lock("purge")
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], prefix)
    proc = started(env, "purge", "--older-than", "0s", "--yes", "--batch", "1")
    deadline = time.monotonic() + 60
    while not client.exists(lease) and time.monotonic() < deadline:
        time.sleep(0.01)
    burst = time.monotonic() + 0.3  # (the first, then more while it cleans up: a key
    while time.monotonic() < burst:  # pressed twice, well within AGAIN_S)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not client.exists(lease)


def test_an_interruption_is_held_off_inside_a_condition_taken_or_a_finalizer():
    """Raised inside ``threading``'s ``Condition.__enter__`` (a pool's queue) just after
    its lock was taken, an interruption left that lock held, and the purge's cleanup
    waited on it for ever; raised inside a ``__del__``, it was lost. Both come a little
    later instead; anywhere else, at once."""
    import threading

    from regctl.cli import _held_off

    frames: dict[str, Any] = {}

    def watch(frame: Any, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code.co_name in ("__enter__", "__del__"):
            frames.setdefault(frame.f_code.co_name, frame)

    class Collected:
        def __del__(self) -> None:
            pass

    condition = threading.Condition()
    sys.setprofile(watch)
    try:
        with condition:
            pass
        Collected().__del__()
    finally:
        sys.setprofile(None)
    assert _held_off(frames["__enter__"])
    assert _held_off(frames["__del__"])
    assert not _held_off(sys._getframe())
    assert not _held_off(None)


def _connecting(pid: int) -> bool:
    """Whether process ``pid`` holds a socket (regctl opens one only to reach Redis)."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith("socket:"):
                    return True
    return False


def test_ctrl_c_pressed_again_later_ends_a_stalled_cleanup_at_once(tmp_path: Path):
    """Every stop after the first was ignored: a cleanup waiting on a paused Redis
    (its audit entry) held the command its whole deadline, a minute here."""
    from regctl.cli import AGAIN_S
    from tests.conftest import started

    proc = RedisProcess(tmp_path / "paused").start()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        env = subprocess_env(proc.url, "paused") | {"REGCTL_TIMEOUT": "60"}
        command = started(env, "verify", "a@example.com", "123456")
        deadline = time.monotonic() + 60
        while not _connecting(command.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        command.send_signal(signal.SIGINT)  # (its cleanup waits on the paused server too)
        time.sleep(AGAIN_S + 0.5)
        command.send_signal(signal.SIGINT)
        _, err = command.communicate(timeout=30)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.stop()
    assert command.returncode == -signal.SIGINT, err
    assert err.endswith("Stopped again: ending without cleanup\n")


def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_command():
    """Raised inside a ``__del__`` (a redis-py parser collected mid-purge, in CI), the
    interruption was printed as ignored and lost, and the purge ran to its end."""
    stand_in = """
import os, signal, sys, time
import regctl.cli.app

class Collected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)  # (handled here, inside __del__)
        time.sleep(0.2)

def build_app():
    def command(**_):
        Collected()
        time.sleep(10)
        sys.exit(0)
    return command

regctl.cli.app.build_app = build_app
from regctl.cli import main
main()
"""
    ran = subprocess.run(
        [sys.executable, "-c", stand_in], capture_output=True, text=True, timeout=60, check=False
    )
    assert (ran.returncode, ran.stderr) == (130, "Interrupted\n")


def test_a_stopped_bulk_resend_leaves_each_new_code_on_the_record(cli: Cli):
    for n in range(3):
        add(cli, f"w{n}@bulk.example")
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    proc = subprocess.Popen(
        [REGCTL, "resend-many", "--older-than", "0s", "--rate", "1/min", "--no-send"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env | {"REGCTL_RESEND_COOLDOWN": "0"},
        text=True,
    )

    def trail() -> list[dict[str, str]]:
        entries = json.loads(cli("audit", "-o", "json").stdout)
        return [e for e in entries if e["command"] == "resend-many"]

    deadline = time.monotonic() + 60
    while not trail() and time.monotonic() < deadline:  # the first new code: then it waits
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: new codes 1 before Ctrl-C" in err
    resent = [e["target"] for e in trail() if e["target"].endswith("@bulk.example")]
    records = [
        json.loads(cli("inspect", f"w{n}@bulk.example", "-o", "json").stdout) for n in range(3)
    ]
    assert resent == [r["email"] for r in records if r["resend_count"] == 1]


def test_ctrl_c_says_how_far_of_how_much_in_the_units_counted():
    from regctl.cli.state import Tally

    purge = Tally("buckets, then records examined", None)
    purge.at(10, 64)
    assert purge.summary(interrupted="Ctrl-C").startswith(
        "interrupted: buckets, then records examined 10 of 64 before Ctrl-C"
    )
    lines = Tally("lines read", 9_000, sized=True)  # a file's size: not a count of lines
    assert lines.summary(interrupted="Ctrl-C").startswith("interrupted: lines read 0 before Ctrl-C")
    lines.add(3, weight=120)
    assert lines.summary(interrupted="Ctrl-C").startswith("interrupted: lines read 3 before Ctrl-C")


def test_a_summary_names_the_signal_that_stopped_the_work():
    from regctl.cli import Terminated
    from regctl.cli.state import _by

    assert (_by(Terminated()), _by(KeyboardInterrupt())) == ("SIGTERM", "Ctrl-C")


def test_the_terminal_view_of_stats_is_the_whole_view_with_its_time(cli: Cli):
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    seen = at_terminal(["stats", "--interval", "0.1", "--count", "1"], env | {"COLUMNS": "150"})
    assert seen.exit_code == 0
    assert "sample 1 of 1 · every 0.1s" in seen.output
    for part in ("pending", "age of pending registrations", "funnel"):
        assert part in seen.output


# --- validated before writing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("missing/regctl.prom", "no directory"),
        # (its draft, "<name>.<pid>.<thread>", was refused only after the purge)
        ("x" * 250 + ".prom", "is too long: its draft beside it takes"),
    ],
)
def test_a_bad_metrics_file_is_refused_before_the_purge(
    cli: Cli, tmp_path, redis_proc, name: str, refused: str
):
    add(cli)
    before = written(redis_proc, cli)
    ran = cli("purge", "--metrics-file", str(tmp_path / name))
    assert ran.exit_code == 78
    assert refused in ran.stderr
    assert written(redis_proc, cli) == before  # no purge ran, no audit entry


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dry-run", "--wait", "5"), "--wait is for a running purge's lease"),
        (("--dry-run", "--metrics-file", "m.prom"), "--metrics-file is written after a real"),
        (("--metrics-file", ""), "--metrics-file names no file"),
    ],
)
def test_a_purge_flag_a_dry_run_or_no_file_would_ignore_is_refused(
    cli: Cli, redis_proc, args: tuple[str, ...], message: str
):
    """(A dry run waited for no lease and wrote no metrics, unsaid.)"""
    add(cli)
    before = written(redis_proc, cli)
    ran = cli("purge", *args)
    assert ran.exit_code == 2
    assert message in ran.stderr
    assert written(redis_proc, cli) == before


def test_a_metrics_file_that_fails_after_the_purge_is_a_local_error(cli: Cli, tmp_path):
    """The purge is done by then: bad configuration (78, "found before anything is
    written") was the wrong word for a full disk, and its report was lost. A file size
    limit of 0 makes the write fail as a full disk would (EFBIG)."""
    import resource

    metrics = tmp_path / "regctl.prom"
    ran = subprocess.run(
        [REGCTL, "-o", "json", "purge", "--metrics-file", str(metrics)],
        capture_output=True,
        text=True,
        env=subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"]),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
        timeout=120,
        check=False,
    )
    assert ran.returncode == 71, ran.stderr
    document = json.loads(ran.stdout)
    assert (document["reason"], document["purged"]) == ("local_io", 0)
    assert document["message"].startswith(f"the purge ran, but its metrics file {metrics}")
    assert not metrics.exists()


# --- messages ------------------------------------------------------------------------------------


LIBRARY_WORDING = ("Value error", "Input should be", "HELLO", "Traceback", "Exception", "errno")


def test_error_messages_are_regctls_own_words(cli: Cli, tmp_path, redis_proc):
    code = add(cli)["code"]
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    runs = [
        cli("verify", EMAIL, wrong),
        cli("--url", "http://x", "list"),
        cli("list", REGCTL_REDIS_URL="unix://"),
        cli("list", REGCTL_REDIS_URL=f"unix://{tmp_path}/none.sock"),
        cli("list", REGCTL_MAX_ATTEMPTS="many"),
        cli("list", REGCTL_LIFETIME="-1"),
        cli("list", "--older-than", "2 weeks"),
        cli("add", "not-an-address", "-f", "A", "-l", "B", "--password-stdin", input=PASSWORD),
        cli("inspect", "nobody@example.com"),
        cli("import", str(tmp_path / "missing.ndjson")),
        cli("audit", "--limit", "0"),
        cli("stats", "--top", "1000"),
    ]
    for ran in runs:
        assert ran.stderr.startswith("Error: "), ran.stderr
        assert ran.stderr.count("\n") == 1, ran.stderr
        for words in LIBRARY_WORDING:
            assert words not in ran.stderr, ran.stderr
    assert runs[0].stderr == f"Error: wrong code for {EMAIL}; 4 attempts left\n"
    assert "invalid --url" in runs[1].stderr
    assert runs[2].exit_code == 78  # a configuration mistake, not an outage


def test_a_missing_redis_password_is_named(cli: Cli, tmp_path):
    proc = RedisProcess(tmp_path / "auth", password="sekret").start()
    try:
        ran = cli("list", REGCTL_REDIS_URL=f"unix://{proc.socket}")  # no password in it
        assert ran.exit_code == 77
        assert ran.stderr.startswith("Error: Redis requires a password, and none was given")
    finally:
        proc.stop()


def test_the_audit_trail_records_a_wrong_code_by_its_reason(cli: Cli):
    code = add(cli)["code"]
    cli("verify", EMAIL, f"{(int(code) + 1) % 10**6:06d}")
    cli("purge", "--dry-run")
    entries = json.loads(cli("audit", "-o", "json").stdout)
    assert [(e["command"], e["outcome"]) for e in entries] == [
        ("verify", "invalid_code"),
        ("add", "ok"),
    ]


def test_one_attempt_left_is_singular(cli: Cli):
    code = add(cli)["code"]
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(3):
        cli("verify", EMAIL, wrong)
    assert cli("verify", EMAIL, wrong).stderr == f"Error: wrong code for {EMAIL}; 1 attempt left\n"


# --- at a terminal, with stdout redirected ---------------------------------------------------


def _terminal_env(cli: Cli) -> dict[str, str]:
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    return env | {"COLUMNS": "150"}


def test_export_at_a_terminal_writes_its_data_to_stdout_and_progress_to_the_terminal(
    cli: Cli, tmp_path
):
    for i in range(3):
        add(cli, f"t{i}@example.com")
    target = tmp_path / "backup.ndjson"
    seen = at_terminal(["export"], _terminal_env(cli), stdout=target)
    assert seen.exit_code == 0
    assert len(target.read_text().splitlines()) == 3
    assert "t0@example.com" not in seen.output  # no record reached the screen
    assert "exported: 3" in seen.output  # the summary did


@pytest.mark.parametrize(
    ("answer", "status", "document"),
    [(b"y\n", 0, {"ok": True}), (b"n\n", 1, {"ok": False, "reason": "declined"})],
)
def test_a_confirmation_asks_on_the_terminal_not_into_the_output(
    cli: Cli, tmp_path, answer: bytes, status: int, document: dict[str, Any]
):
    add(cli, "x@drop.example")
    target = tmp_path / "purge.json"
    seen = at_terminal(
        ["-o", "json", "purge", "--domain", "drop.example"],
        _terminal_env(cli),
        keys=answer,
        stdout=target,
    )
    assert seen.exit_code == status
    assert "Delete 1 live registration from unix://" in seen.output
    assert target.read_text().startswith("{")  # (not the prompt's last character)
    written = json.loads(target.read_text())  # one clean document, either way
    assert document.items() <= written.items()
    if status == 0:
        assert written["by_reason"]["matched"] == 1


def test_the_code_prompt_asks_on_the_terminal_not_into_the_output(cli: Cli, tmp_path):
    add(cli, "x@drop.example")
    target = tmp_path / "verify.json"
    seen = at_terminal(
        ["-o", "json", "verify", "x@drop.example"],
        _terminal_env(cli),
        keys=b"\n000000\n",  # (Enter alone asks again)
        stdout=target,
    )
    assert seen.exit_code == 1
    assert seen.output.count("Code: ") == 2
    assert target.read_text().startswith("{"), target.read_text()


def test_a_declined_or_abandoned_command_leaves_no_audit_entry(cli: Cli):
    add(cli, "x@drop.example")
    env = _terminal_env(cli)
    declined = at_terminal(["purge", "--domain", "drop.example"], env, keys=b"n\n")
    assert declined.exit_code == 1
    assert "nothing changed" in declined.output
    abandoned = at_terminal(["verify", "x@drop.example"], env, keys=b"\x04")  # Ctrl-D
    assert abandoned.exit_code == 130
    entries = json.loads(cli("audit", "-o", "json").stdout)
    assert [e["command"] for e in entries] == ["add"]
    assert cli("inspect", "x@drop.example").exit_code == 0


# --- more that cannot apply, refused ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("list", "--domain", ""), "--domain must not be empty"),
        (("inspect", ""), "EMAIL must not be empty"),
        (("list", "-o"), "-o needs a value"),
        (("resend-many", "--rate", ""), "--rate must not be empty"),
        (("resend-many", "--older-than", "1h", "--rate", "0/s"), "invalid rate '0/s'"),
        (("export", "-o", "table"), "`regctl export` has no -o table output"),
        (("list", "--locked", "--unlocked"), "give one of --locked and --unlocked"),
        (("list", "--code-valid", "--code-expired"), "give one of --code-expired and --code-valid"),
        (("list", "--older-than", "2h", "--newer-than", "1h"), "select nothing"),
        (("list", "--older-than", "9999999999999999d"), "'9999999999999999d' is too long"),
        (("stats", "--interval", "inf", "--count", "1"), "must be at most 86400"),
        (("-o", "name", "resend", EMAIL, "--show-code"), "--show-code needs another -o"),
    ],
)
def test_an_empty_or_conflicting_value_is_a_usage_error(cli: Cli, args, refused):
    ran = cli(*args)
    assert ran.exit_code == 2
    assert refused in ran.stderr


def test_a_code_asked_for_where_it_cannot_be_shown_is_refused_before_the_add(cli: Cli):
    ran = cli(
        "-o",
        "name",
        "add",
        EMAIL,
        "-f",
        "A",
        "-l",
        "L",
        "--password-stdin",
        "--show-code",
        "--no-send",
        input=PASSWORD,
    )
    assert (ran.exit_code, ran.stdout) == (2, "")
    assert "--show-code needs another -o" in ran.stderr
    assert cli("inspect", EMAIL).exit_code == 3  # nothing stored, no code lost


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("health", "--warn-latency", "600"), "latency warning must not be above"),
        (("health", "--bogus"), "No such option: --bogus"),
        (("-o", "json", "health", "--count", "2"), "--count needs --interval"),
        (("health", "-o", "name"), "`regctl health` has no -o name output"),
        (("--prefix", "p", "health", "--url"), "--url needs a value"),
        (("-qo", "json", "--bogus", "health"), "No such option: --bogus"),
    ],
)
def test_a_usage_error_of_health_is_unknown_not_critical(cli: Cli, args, refused):
    """health's exits are a monitoring plugin's, with or without --nagios: 2 is CRITICAL."""
    ran = cli(*args)
    assert ran.exit_code == 3
    assert refused in ran.stderr
    assert "REGCTL" not in ran.stdout  # (the plugin line is --nagios's)


@pytest.mark.parametrize(
    "args",
    [
        ("--prefix", "health", "lsit"),
        ("-o", "xml", "audit", "--command", "health"),
        ("--prefix", "health", "list", "--url"),
    ],
)
def test_health_as_an_options_value_makes_no_health_usage_error(cli: Cli, args):
    assert cli(*args).exit_code == 2


def test_a_format_health_has_not_is_unknown_as_a_plugin_line(cli: Cli):
    ran = cli("health", "-o", "name", "--nagios")
    assert (ran.exit_code, ran.stdout) == (
        3,
        "REGCTL UNKNOWN - `regctl health` has no -o name output\n",
    )


def test_short_flags_run_together_after_the_command(cli: Cli):
    add(cli)
    assert cli("list", "-qo", "name").stdout == EMAIL + "\n"


def test_a_usage_error_of_a_nagios_check_is_unknown(cli: Cli):
    ran = cli("health", "--nagios", "--warn-latency", "x")
    assert ran.exit_code == 3
    assert ran.stdout.startswith("REGCTL UNKNOWN - ")
    ran = cli("health", "--nagios", "--warn-latency", "600", "--prefix", "a|b")
    assert ran.exit_code == 3
    assert cli("health", "--nagios", "-o", "json").exit_code == 3
    assert "|" not in ran.stdout  # nothing a runner would take for performance data


def test_nagios_given_to_another_command_is_a_plain_usage_error(cli: Cli):
    """Found by a fuzzed code: `verify EMAIL --nagios` answered as a failed check."""
    ran = cli("verify", EMAIL, "--nagios")
    assert (ran.exit_code, ran.stdout) == (2, "")
    assert ran.stderr.startswith("Error: No such option: --nagios")


def test_a_key_of_another_type_is_named_not_a_crash(cli: Cli, redis_proc: RedisProcess):
    prefix = cli.env["REGCTL_PREFIX"]
    client_of(redis_proc).set(Keyspace(prefix).audit, "not a stream")
    ran = cli("add", EMAIL, "-f", "A", "-l", "L", "--password-stdin", input=PASSWORD)
    assert ran.exit_code == 0  # stored; only its audit entry could not be written
    assert ran.stderr.startswith("Warning: the audit entry was not written: a key under")
    assert _findings(cli)["wrong-type"]["severity"] == "error"


def test_doctor_does_not_take_another_applications_keys_for_regctls(
    cli: Cli, redis_proc: RedisProcess
):
    prefix = cli.env["REGCTL_PREFIX"]
    client = client_of(redis_proc)
    client.set(f"{prefix}:sessions:meta", "x")
    assert "foreign-keys" in _findings(cli)
    client.set(Keyspace(prefix).lock("purge"), "held", ex=10 * 365 * 86400)
    assert "ttl-too-long" in _findings(cli)


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["list", "--help"]])
def test_help_and_version_into_a_closed_pipe_end_quietly(cli: Cli, args: list[str]):
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before regctl writes a byte
    proc = subprocess.run(
        [REGCTL, *args], stdout=write, stderr=subprocess.PIPE, env=env, timeout=60, check=False
    )
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_an_output_the_disk_cannot_take_is_a_local_io_error(
    cli: Cli, redis_proc: RedisProcess, stream: str
):
    """A full disk under the output is the machine's fault, not a bug of regctl's:
    its own status (71), and the line says so, wherever it still can."""
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    with open("/dev/full", "w") as full:  # (every write to it: ENOSPC)
        if stream == "stdout":  # JSON: "[]" at least, written to the full disk
            proc = subprocess.run(
                [REGCTL, "-o", "json", "export"],
                stdout=full,
                stderr=subprocess.PIPE,
                env=env,
                timeout=60,
                check=False,
            )
            said = proc.stderr
        else:  # a warning to a full stderr: nothing can say it, the status does
            record = Keyspace(cli.env["REGCTL_PREFIX"]).record(digest(EMAIL))
            add(cli)
            client_of(redis_proc).hset(record, FIELDS["attempts"], "many")  # (damaged)
            proc = subprocess.run(
                [REGCTL, "list"],
                stdout=subprocess.PIPE,
                stderr=full,
                env=env,
                timeout=60,
                check=False,
            )
            said = b"No space left on device"
    assert proc.returncode == 71, proc
    assert b"No space left on device" in said
    assert b"Traceback" not in said


def test_a_missing_value_is_a_json_error_or_a_plugin_line(cli: Cli):
    ran = cli("-o", "json", "list", "--limit")
    assert ran.exit_code == 2
    assert json.loads(ran.stdout)["message"] == "--limit needs a value"
    ran = cli("health", "--nagios", "--warn-latency")
    assert (ran.exit_code, ran.stdout) == (3, "REGCTL UNKNOWN - --warn-latency needs a value\n")


def test_a_cluster_nobody_answers_is_critical_not_a_crash(cli: Cli, unused_port: int):
    url = f"redis+cluster://127.0.0.1:{unused_port}"
    ran = cli("health", "--nagios", REGCTL_REDIS_URL=url)
    assert ran.exit_code == 2
    assert ran.stdout.startswith("REGCTL CRITICAL - ")
    assert "Exception" not in ran.stdout
    listed = cli("list", REGCTL_REDIS_URL=url)
    assert listed.exit_code == 69
    assert "no node of the cluster answered" in listed.stderr


def test_a_record_of_another_type_is_left_out_of_list_and_stats_and_named_by_doctor(
    cli: Cli, redis_proc
):
    """As a damaged hash is: one bad key stops no whole listing or count; doctor says
    which."""
    add(cli)
    add(cli, "other@example.com")
    record = Keyspace(cli.env["REGCTL_PREFIX"]).record(digest(EMAIL))
    client_of(redis_proc).delete(record)
    client_of(redis_proc).set(record, "x")
    ran = cli("-o", "json", "list")
    assert ran.exit_code == 0, ran.stderr
    assert [row["email"] for row in json.loads(ran.stdout)] == ["other@example.com"]
    counted = cli("-o", "json", "stats")
    assert counted.exit_code == 0, counted.stderr
    assert (json.loads(counted.stdout)["total"], json.loads(counted.stdout)["damaged"]) == (1, 1)
    checked = cli("-o", "json", "doctor")
    assert "wrong-type" in {finding["code"] for finding in json.loads(checked.stdout)["findings"]}


# --- the bucket count -----------------------------------------------------------------------


def test_a_bucket_count_unlike_the_stored_layout_is_refused_and_can_be_moved(cli: Cli):
    add(cli)
    ran = cli("list", REGCTL_BUCKETS="128")
    assert ran.exit_code == 78
    assert "has 64 buckets; REGCTL_BUCKETS asks for 128" in ran.stderr
    # The documented way: export, then import under a new prefix with the new count.
    backup = cli("export", "--include-secrets").stdout
    moved = cli("import", "-", "--prefix", "moved", REGCTL_BUCKETS="128", input=backup)
    assert moved.exit_code == 0, moved.stderr
    assert cli("list", "-o", "name", "--prefix", "moved").stdout == EMAIL + "\n"
    assert cli("list", "--prefix", "moved", REGCTL_BUCKETS="128").exit_code == 0
    assert cli("list", "--prefix", "moved", REGCTL_BUCKETS="64").exit_code == 78


def test_the_audit_trail_as_ndjson_is_one_object_a_line(cli: Cli):
    add(cli)
    cli("unlock", EMAIL)
    lines = cli("audit", "-o", "ndjson").stdout.splitlines()
    assert [json.loads(line)["command"] for line in lines][:2] == ["unlock", "add"]


def test_an_index_of_another_type_is_named_by_doctor_not_a_crash(
    cli: Cli, redis_proc: RedisProcess
):
    prefix = cli.env["REGCTL_PREFIX"]
    add(cli)
    ks = Keyspace(prefix)
    index = ks.index(ks.bucket_of(digest(EMAIL.casefold())))
    client = client_of(redis_proc)
    client.delete(index)
    client.set(index, "not an index")
    ran = cli("doctor", "-o", "json")
    assert ran.exit_code == 1, ran.stderr
    findings = {f["code"]: f for f in json.loads(ran.stdout)["findings"]}
    assert index in findings["wrong-type"]["message"]


def test_a_filtered_purge_is_audited_with_the_filters_it_was_given(cli: Cli):
    add(cli)
    assert cli("purge", "--domain", "example.com", "--older-than", "0s", "--yes").exit_code == 0
    newest = json.loads(cli("audit", "-o", "json", "--command", "purge").stdout)[0]
    assert newest["target"] == "domain=example.com older-than=0s"
