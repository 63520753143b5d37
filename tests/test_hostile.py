"""Hostile data in, safe data out: what others wrote reaches no terminal or spreadsheet raw."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regctl import (
    DamagedRecord,
    Filter,
    InvalidInput,
    MemoryStore,
    Policy,
    RedisStore,
    RegistrationManager,
    SortKey,
    Thresholds,
)
from regctl.cli.render import csv_cell, record_json, record_line, to_json
from regctl.codec import FIELDS, ROW
from regctl.errors import first_line
from regctl.keys import Keyspace, digest
from regctl.model import NUMBER_FIELDS, PendingRegistration
from regctl.store import NewRegistration
from regctl.text import visible
from regctl.transfer import parse_record
from regctl.validation import PLAIN_ADDRESS, plain_address
from tests.conftest import REGCTL, SECRET, Cli, at_terminal, subprocess_env
from tests.servers import RedisProcess

# Strings a backend, an import file or a caller could hand over.
HOSTILE = {
    "clear-screen": "\x1b[2J\x1b[H",
    "osc-title": "\x1b]0;pwned\x07",
    "fake-line": "\r\x1b[31mSYSTEM: reboot now\x1b[0m",
    "bidi": "\u202eevil\u202c",
    "nul": "a\x00b",
    "crlf": "a\r\nb",
    "long": "x" * 10_000,
    "formula": '=HYPERLINK("http://x","y")',
    "plus": "+1+1",
    "at": "@SUM(1)",
    "minus": "-2",
    "markup": "[red]x[/red]",
    "braces": "{b01}*",
}
# What must never reach a terminal: ESC, BEL, NUL, the bidi override.
RAW = ("\x1b", "\x07", "\x00", "\u202e")


def backend_writes(store: RedisStore, pw_hash: str) -> dict[str, str]:
    """Records written without regctl's validation (as a backend could): name -> email."""
    emails = {}
    for n, (name, text) in enumerate(HOSTILE.items()):
        email = f"h{n}@hostile.example"
        store.add(NewRegistration(email, text, text, pw_hash, "0" * 64), Policy(), f"t{n}")
        emails[name] = email
    store.audit_append(
        {
            "who": HOSTILE["osc-title"],
            "command": "add",
            "target": "x",
            "outcome": HOSTILE["fake-line"],
        }
    )
    return emails


@pytest.fixture
def hostile(cli: Cli, redis_proc: RedisProcess, pw_hash: str) -> dict[str, str]:
    store = RedisStore(redis_proc.client(), prefix=cli.env["REGCTL_PREFIX"])
    try:
        return backend_writes(store, pw_hash)
    finally:
        store.close()


def assert_safe(text: str, where: object) -> None:
    for raw in RAW:
        assert raw not in text, (where, raw)


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "-o", "wide"],
        ["list", "-o", "name"],
        ["audit"],
        ["stats"],
    ],
)
def test_piped_output_is_never_raw(cli: Cli, hostile: dict[str, str], args: list[str]):
    ran = cli(*args)
    assert ran.exit_code == 0, ran.stderr
    assert_safe(ran.stdout + ran.stderr, args)


def test_inspect_and_errors_show_hostile_names_escaped(cli: Cli, hostile: dict[str, str]):
    for name, email in hostile.items():
        ran = cli("inspect", email)
        assert_safe(ran.stdout, name)
    shown = cli("inspect", hostile["osc-title"]).stdout
    assert "\\x1b]0;pwned\\x07" in shown
    error = cli("inspect", "nobody\x1b[2J@hostile.example")
    assert error.exit_code in (2, 3)
    assert_safe(error.stderr, "error")


def test_json_keeps_the_exact_strings(cli: Cli, hostile: dict[str, str]):
    rows = json.loads(cli("list", "-o", "json").stdout)
    names = {r["first_name"] for r in rows}
    assert set(HOSTILE.values()) <= names


def test_csv_is_safe_to_open_in_a_spreadsheet(cli: Cli, hostile: dict[str, str]):
    text = cli("list", "-o", "csv").stdout
    assert_safe(text, "csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][0] == "email"
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    raw = list(csv.reader(io.StringIO(cli("list", "-o", "csv", "--raw-csv").stdout)))
    assert any(cell == HOSTILE["formula"] + " " + HOSTILE["formula"] for r in raw for cell in r)


def test_csv_cells_follow_owasp():
    assert csv_cell("=1+1") == "'=1+1"
    assert csv_cell("+1") == "'+1"
    assert csv_cell("-1") == "'-1"
    assert csv_cell("@x") == "'@x"
    assert csv_cell("\tx") == "'\\x09x"
    assert csv_cell("=cmd|'/Ccalc'!A0@example.com") == "'=cmd|'/Ccalc'!A0@example.com"
    assert csv_cell("alice") == "alice"


@pytest.mark.parametrize("text", list(HOSTILE.values()))
def test_visible_leaves_nothing_invisible(text: str):
    shown = visible(text)
    assert shown.isprintable()
    assert_safe(shown, text)


@pytest.mark.parametrize(
    "args",
    [["list"], ["audit"], ["inspect", "h1@hostile.example"], ["list", "-o", "csv", "--raw-csv"]],
)
def test_a_terminal_sees_no_escape_from_data(cli: Cli, hostile: dict[str, str], args: list[str]):
    env = {
        **subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"]),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    seen = at_terminal(args, env).output
    assert "pwned" in seen or "hostile" in seen  # the data is there, shown
    assert "\x1b]0;" not in seen  # no title change
    assert "\x1b[2J" not in seen  # no clear screen
    assert "\u202e" not in seen


# --- import cannot forge what the API cannot create --------------------------------


def _line(**changes: object) -> str:
    now = 1_800_000_000_000
    record = {
        "email": "imp@example.com",
        "first_name": "I",
        "last_name": "M",
        "created_at": now,
        "expires_at": now + 3_600_000,
        "code_expires_at": now + 900_000,
        "last_sent_at": now,
        "resend_count": 0,
        "attempts": 0,
        "locked": False,
        "schema": 1,
        "password_hash": PW_HASH[0],
        "code_hash": "0" * 64,
    }
    record.update(changes)
    return json.dumps(record)


PW_HASH: list[str] = []


@pytest.fixture(autouse=True)
def _pw_hash(pw_hash: str) -> None:
    PW_HASH[:] = [pw_hash]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"expires_at": 10**17}, "2^53"),
        ({"expires_at": 1_800_000_000_000 + 974 * 365 * 86_400_000}, "record lifetime"),
        ({"code_expires_at": 1_800_000_000_000 + 31 * 365 * 86_400_000}, "code lifetime"),
        ({"last_sent_at": 1_800_000_000_000 + 7_200_000}, "last_sent_at"),
        ({"attempts": 9}, "attempts must be 0 to 5"),
        ({"resend_count": -1}, "resend_count"),
        ({"attempts": 5, "locked": False}, "locked must be true exactly"),
        ({"locked": True}, "locked must be true exactly"),
        ({"first_name": "\x1b[2J"}, "first name"),
        ({"expires_at": 1.5e12}, "integer"),
        ({"locked": "yes"}, "locked"),
        ({"schema": True}, "unknown schema"),  # (True == 1 in Python)
        ({"schema": 1.0}, "unknown schema"),
    ],
)
def test_import_refuses_what_the_api_could_not_make(changes: dict[str, object], message: str):
    with pytest.raises(InvalidInput, match=message.replace("^", r"\^")):
        parse_record(_line(**changes), Policy())


def test_the_restore_script_refuses_an_expiry_beyond_the_lifetime(redis_proc, prefix):
    """Even past the file checks (a future-dated record): nothing without TTL or index."""
    store = RedisStore(redis_proc.client(), prefix=prefix)
    manager = RegistrationManager(store, secret=SECRET)
    server_now = int(redis_proc.client().time()[0]) * 1000
    ahead = server_now + 3 * 86_400_000  # valid in itself, but created in the future
    line = _line(
        created_at=ahead - 3_600_000,
        last_sent_at=ahead - 3_600_000,
        code_expires_at=ahead - 3_000_000,
        expires_at=ahead,
    )
    report = manager.import_records([line])
    assert (report.restored, report.invalid) == (0, 1)
    assert "ahead of the server's clock" in report.errors[0]
    assert list(redis_proc.client().scan_iter(Keyspace(prefix).record_pattern())) == []
    store.close()


def test_an_import_takes_the_lines_of_a_file_opened_in_binary_mode(redis_proc, prefix):
    """Bytes lines: UTF-8 text read as such, other bytes refused by line, as from text."""
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    server_now = int(redis_proc.client().time()[0]) * 1000
    times = {
        "created_at": server_now - 60_000,
        "last_sent_at": server_now - 60_000,
        "code_expires_at": server_now + 600_000,
        "expires_at": server_now + 3_000_000,
    }
    named = _line(**times, email="j\u00e9r\u00f4me@example.com", first_name="J\u00e9r\u00f4me")
    stray = _line(**times, email="other@example.com").encode().replace(b'"I"', b'"\xe9"')
    report = manager.import_records([named.encode(), stray])
    assert (report.restored, report.invalid) == (1, 1)
    assert report.errors == ["line 2: not UTF-8"]
    restored = manager.get("j\u00e9r\u00f4me@example.com")
    assert restored is not None
    assert restored.first_name == "J\u00e9r\u00f4me"
    manager.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from([*NUMBER_FIELDS, "locked", "email", "first_name", "code_hash", "schema"]),
    value=st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=50),
        st.booleans(),
        st.none(),
    ),
)
def test_import_fuzzing_never_yields_a_record_the_store_cannot_keep(field: str, value: object):
    try:
        line = _line(**{field: value})
    except ValueError:  # not JSON-representable
        return
    try:
        reg = parse_record(line, Policy())
    except InvalidInput:
        return
    assert reg.created_at < reg.expires_at <= reg.created_at + Policy().lifetime_ms + 60_000
    assert 0 <= reg.attempts <= Policy().max_attempts
    assert reg.locked == (reg.attempts >= Policy().max_attempts)
    statuses = MemoryStore(clock=lambda: reg.created_at).restore([reg], False, False, 10**12)
    assert statuses[0] in ("restored", "expired")


_TIME = st.integers(0, 2**53 - 1)


@settings(max_examples=300, deadline=None)
@given(
    reg=st.builds(
        PendingRegistration,
        email=st.text(),
        first_name=st.text(),
        last_name=st.text(),
        password_hash=st.just(""),
        created_at=_TIME,
        expires_at=_TIME,
        code_expires_at=_TIME,
        last_sent_at=_TIME,
        resend_count=_TIME,
        attempts=_TIME,
        locked=st.booleans(),
        observed_at=_TIME,
        consumed=st.booleans(),
    ),
    policy=st.builds(Policy, resend_cooldown_ms=st.integers(0, 86_400_000)),
)
def test_a_listed_line_is_the_records_json_document(reg: PendingRegistration, policy: Policy):
    """list -o ndjson writes each record's line at once; it is the JSON document of the
    record, as every other output gives it, invisible characters escaped alike."""
    assert record_line(reg, policy) == to_json(record_json(reg, policy))


def test_the_password_hash_can_come_from_stdin(cli: Cli, pw_hash: str):
    ran = cli(
        "add",
        "stdin@example.com",
        "-f",
        "S",
        "-l",
        "I",
        "--password-hash-stdin",
        input=pw_hash + "\n",
    )
    assert ran.exit_code == 0, ran.stderr
    both = cli(
        "add",
        "both@example.com",
        "-f",
        "S",
        "-l",
        "I",
        "--password-hash-stdin",
        "--password-stdin",
        input=pw_hash + "\n",
    )
    assert both.exit_code == 2
    assert "give one of" in both.stderr


def test_the_audit_who_is_the_os_account_not_the_environment(cli: Cli):
    cli("delete", "nobody@example.com", LOGNAME="root\x1b[2J", USER="mallory")
    entry = json.loads(cli("audit", "-o", "json").stdout)[0]
    import pwd
    import socket

    account = pwd.getpwuid(os.geteuid()).pw_name
    assert entry["who"].startswith(f"{account}@{socket.gethostname()}")
    assert "mallory" not in entry["who"]
    labelled = cli("delete", "nobody@example.com", REGCTL_AUDIT_LABEL="deploy-7")
    assert labelled.exit_code == 3
    assert json.loads(cli("audit", "-o", "json").stdout)[0]["who"].endswith("[deploy-7]")


def test_a_replace_that_clears_a_lockout_is_counted_and_audited(cli: Cli, tmp_path: Path):
    line = _line(
        email="locked@example.com",
        attempts=5,
        locked=True,
        created_at=int(time.time() * 1000),
        last_sent_at=int(time.time() * 1000),
        code_expires_at=int(time.time() * 1000) + 60_000,
        expires_at=int(time.time() * 1000) + 3_600_000,
    )
    (tmp_path / "locked.ndjson").write_text(line + "\n")
    assert cli("import", "locked.ndjson").exit_code == 0
    fresh = json.loads(line) | {"attempts": 0, "locked": False}
    (tmp_path / "fresh.ndjson").write_text(json.dumps(fresh) + "\n")
    ran = json.loads(cli("-o", "json", "import", "fresh.ndjson", "--replace").stdout)
    assert ran["counters_reset"] == ["locked@example.com"]
    entries = json.loads(cli("audit", "-o", "json").stdout)
    entry = next(e for e in entries if e["command"] == "import --replace")
    assert (entry["command"], entry["target"], entry["outcome"]) == (
        "import --replace",
        "locked@example.com",
        "attempts or resends reset",
    )


@pytest.mark.parametrize(
    ("args", "header"),
    [
        (["inspect", "h0@hostile.example"], ["field", "value"]),
        (["stats"], ["metric", "value"]),
        (["audit"], ["at", "who", "command", "target", "outcome"]),
        (["config"], ["setting", "value", "source"]),
    ],
)
def test_every_command_gives_real_csv(
    cli: Cli, hostile: dict[str, str], args: list[str], header: list[str]
):
    text = cli(*args, "-o", "csv").stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == header
    assert all(len(row) == len(header) for row in rows)
    assert_safe(text, args)


# --- what something else wrote into the store --------------------------------------


def test_one_damaged_record_stops_no_command(cli: Cli, redis_proc: RedisProcess, pw_hash: str):
    prefix = cli.env["REGCTL_PREFIX"]
    store = RedisStore(redis_proc.client(), prefix=prefix)
    backend_writes(store, pw_hash)
    record = store.keyspace.record(digest("h0@hostile.example"))
    raw = redis_proc.client()
    raw.hset(record, "a", "abc")
    raw.hset(store.keyspace.funnel(0, int(raw.time()[0]) // 86_400), "created", "abc")
    raw.xadd(store.keyspace.audit, {"who": "x", "at": "1700000000000", "command": "forged"})
    store.close()
    for args in (
        ["list"],
        ["list", "-o", "json"],
        ["stats"],
        ["export"],
        ["audit"],
    ):
        ran = cli(*args)
        assert ran.exit_code == 0, (args, ran.stderr)
    assert "h0@hostile.example" not in cli("list", "-o", "name").stdout
    inspected = cli("inspect", "h0@hostile.example")
    assert inspected.exit_code == 70
    assert inspected.stderr.startswith("Error: the stored record of h0@hostile.example is damaged")
    newest = json.loads(cli("audit", "-o", "json").stdout)[0]
    assert newest["command"] == "forged"
    assert not newest["at"].startswith("2023")  # the server's time, not the entry's own
    for args in (["purge", "--domain", "hostile.example", "--dry-run"], ["purge", "--locked"]):
        ran = cli(*args, "--yes")
        assert ran.exit_code == 0, (args, ran.stderr)  # the damaged one is skipped
    raw.hset(Keyspace(prefix).meta, "buckets", "x")
    broken = cli("list")
    assert broken.exit_code == 78
    assert "layout record" in broken.stderr


def test_a_bulk_resend_skips_an_address_written_past_validation(
    cli: Cli, redis_proc: RedisProcess, pw_hash: str
):
    store = RedisStore(redis_proc.client(), prefix=cli.env["REGCTL_PREFIX"])
    for i in range(3):
        store.add(
            NewRegistration(f"ok{i}@bulk.example", "O", "K", pw_hash, "0" * 64), Policy(), f"o{i}"
        )
    store.add(
        NewRegistration("evil\x1b]0;X\x07@bulk.example", "E", "V", pw_hash, "0" * 64), Policy(), "e"
    )
    store.close()
    ran = cli(
        "-o",
        "json",
        "resend-many",
        "--domain",
        "bulk.example",
        "--no-send",
        REGCTL_RESEND_COOLDOWN="0",
    )
    assert ran.exit_code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["not_sent"] == 3
    assert report["skipped"] == {"invalid_input": 1}


def test_json_escapes_invisible_characters(cli: Cli, hostile: dict[str, str]):
    text = cli("list", "-o", "json").stdout
    assert_safe(text, "json")
    assert "\\u202e" in text
    assert any(r["first_name"] == HOSTILE["bidi"] for r in json.loads(text))


@pytest.mark.parametrize(
    "url",
    [
        "unix:///tmp/r.sock?%70assword=hunter2",
        "redis+cluster://127.0.0.1:1?password=hunter2",
        "redis+sentinel://127.0.0.1:1/mymaster?password=hunter2",
    ],
)
def test_query_passwords_in_any_spelling_stay_hidden(cli: Cli, url: str):
    for args in (("config",), ("-o", "json", "list")):
        ran = cli(*args, REGCTL_REDIS_URL=url, REGCTL_RETRIES="0")
        assert "hunter2" not in ran.stdout + ran.stderr, (args, ran.stderr)


def test_a_secret_file_others_can_read_is_refused(cli: Cli, tmp_path: Path):
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "secret").chmod(0o644)
    ran = cli(
        "verify",
        "a@example.com",
        "123456",
        REGCTL_CODE_SECRET="",
        REGCTL_CODE_SECRET_FILE=str(tmp_path / "secret"),
    )
    assert ran.exit_code == 78
    assert "readable or writable by others — chmod 600 (or, owned by root, 640)" in ran.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root-owned file")
@pytest.mark.parametrize(("mode", "taken"), [(0o640, True), (0o440, True), (0o660, False)])
def test_a_root_owned_secret_file_its_group_may_read_is_taken(
    cli: Cli, tmp_path: Path, mode: int, taken: bool
):
    """As an orchestrator mounts a service's secret (0440 root:group)."""
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "secret").chmod(mode)
    ran = cli("list", REGCTL_CODE_SECRET="", REGCTL_CODE_SECRET_FILE=str(tmp_path / "secret"))
    assert (ran.exit_code == 0) is taken, ran.stderr


def test_an_import_created_in_the_future_is_refused(redis_proc, prefix):
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    ahead = int(redis_proc.client().time()[0]) * 1000 + 23 * 3_600_000
    line = _line(
        created_at=ahead,
        last_sent_at=ahead,
        code_expires_at=ahead + 900_000,
        expires_at=ahead + 3_600_000,
    )
    report = manager.import_records([line, '{"a": ' + "[" * 10_000])  # (nested past reason)
    assert (report.restored, report.invalid) == (0, 2)
    assert any("line 2: not a JSON object" in e for e in report.errors)
    manager.close()


@pytest.mark.parametrize(
    "phc",
    [
        "$argon2id$v=19$m=19456,t=2,p=1$\x00$\x1b",
        "$argon2id$v=19$m=19456,t=2,p=1$$",
        "$argon2id$v=19$m=99999999999999999999999,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=١٩٤٥٦,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        # (verifiable, at the cost of minutes or all the memory: beyond what regctl takes)
        "$argon2id$v=19$m=99999999,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=19456,t=9999,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=19456,t=2,p=999$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=19456,t=2,p=0$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
    ],
)
def test_a_password_hash_that_could_never_verify_is_refused(phc: str):
    from regctl.security import check_password_hash

    with pytest.raises(InvalidInput):
        check_password_hash(phc)


def test_a_password_that_is_not_utf8_is_invalid_input(tmp_path: Path, redis_proc, prefix):
    env = {**subprocess_env(redis_proc.url, prefix)}
    ran = subprocess.run(
        [REGCTL, "add", "b@example.com", "-f", "B", "-l", "Y", "--password-stdin"],
        input=b"pass\xffword123\n",
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2, ran.stderr
    assert b"not UTF-8" in ran.stderr


# Every field a record must have, by its stored name: the text ones, then the numbers.
_NUMBERS = [FIELDS[name] for name in NUMBER_FIELDS]
_TEXT = [f for f in ROW if f not in (*_NUMBERS, FIELDS["schema"], FIELDS["code_hash"])]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *((field, None) for field in _TEXT),  # missing
        *((field, "x") for field in _NUMBERS),
        ("c", "1.5e12"),
        ("c", "1_795_805_073_262"),
        ("c", "-1"),
        ("e", str(2**53 + 10)),
        ("ce", "nan"),
        ("v", "x"),
    ],
)
def test_stats_leaves_out_the_damaged_records_list_leaves_out(
    cli: Cli, redis_proc: RedisProcess, pw_hash: str, field: str, value: str | None
):
    """Counting on the server reads a record as codec.decode does: the same hashes are
    records to stats and to list."""
    store = RedisStore(redis_proc.client(), prefix=cli.env["REGCTL_PREFIX"])
    for n in range(3):
        store.add(
            NewRegistration(f"d{n}@damaged.example", "D", "M", pw_hash, "0" * 64), Policy(), f"d{n}"
        )
    record = store.keyspace.record(digest("d0@damaged.example"))
    raw = redis_proc.client()
    if value is None:
        raw.hdel(record, field)
    else:
        raw.hset(record, field, value)
    store.close()
    listed = cli("list", "-o", "ndjson").stdout.splitlines()
    stats = json.loads(cli("stats", "-o", "json").stdout)
    assert len(listed) == 2
    assert (stats["total"], stats["damaged"]) == (2, 1)


def _with_damaged(redis_proc: RedisProcess, prefix: str, pw_hash: str, damaged: int) -> list[str]:
    """Five records, the first ``damaged`` of them with a creation time that is no
    number (as something else could write it); their keys."""
    store = RedisStore(redis_proc.client(), prefix=prefix)
    for n in range(5):
        store.add(
            NewRegistration(f"w{n}@damaged.example", "D", "M", pw_hash, "0" * 64), Policy(), f"w{n}"
        )
    keys = [store.keyspace.record(digest(f"w{n}@damaged.example")) for n in range(damaged)]
    raw = redis_proc.client()
    for key in keys:
        raw.hset(key, FIELDS["created_at"], "\x1b[2Jsoon")
    store.close()
    return keys


@pytest.mark.parametrize("command", ["list", "export"])
def test_list_and_export_say_which_records_they_left_out_as_unreadable(
    cli: Cli, redis_proc: RedisProcess, pw_hash: str, command: str
):
    keys = _with_damaged(redis_proc, cli.env["REGCTL_PREFIX"], pw_hash, 4)
    ran = cli("--quiet", "-o", "json", command)  # (a warning is no remark: --quiet keeps it)
    assert ran.exit_code == 0, ran.stderr
    assert [row["email"] for row in json.loads(ran.stdout)] == ["w4@damaged.example"]
    warning = ran.stderr.strip()
    assert warning.startswith("Warning: not ")
    assert "4 records regctl cannot read" in warning
    assert sum(key in warning for key in keys) == 3
    assert "\n" not in warning  # (one line)
    assert "and 1 more" in warning


def test_a_listing_hands_the_keys_it_left_out_to_a_library_caller(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    keys = _with_damaged(redis_proc, prefix, pw_hash, 2)
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    try:
        listed: list[str] = []
        assert sorted(r.email for r in manager.list(on_damaged=listed.append)) == [
            f"w{n}@damaged.example" for n in (2, 3, 4)
        ]
        assert sorted(listed) == sorted(keys)
        exported: list[str] = []
        assert len(list(manager.export(on_damaged=exported.append))) == 3
        assert sorted(exported) == sorted(keys)
        # A selection no damaged record could be said to match still names them.
        named: list[str] = []
        selection = Filter(domain="elsewhere.example")
        assert list(manager.list(selection, on_damaged=named.append)) == []
        assert sorted(named) == sorted(keys)
        for walk in (manager.list, manager.export):  # (refused when called, not when read)
            with pytest.raises(InvalidInput, match="on_damaged is a function"):
                walk(on_damaged=[])  # type: ignore[arg-type]
        report = manager.resend_many(Filter(), dry_run=True)
        assert report.skipped == {"damaged_record": 2, "cooldown": 3}
    finally:
        manager.close()


def test_stats_counts_a_hash_of_none_of_regctls_fields_as_list_leaves_it_out(
    cli: Cli, redis_proc: RedisProcess, pw_hash: str
):
    (key,) = _with_damaged(redis_proc, cli.env["REGCTL_PREFIX"], pw_hash, 1)
    raw = redis_proc.client()
    raw.delete(key)
    raw.hset(key, "foo", "bar")
    listed = cli("list", "-o", "ndjson")
    assert len(listed.stdout.splitlines()) == 4
    assert "1 record regctl cannot read" in listed.stderr
    stats = json.loads(cli("stats", "-o", "json").stdout)
    assert (stats["total"], stats["damaged"]) == (4, 1)


def test_a_bulk_resend_warns_of_the_records_it_could_not_read_even_when_quiet(
    cli: Cli, redis_proc: RedisProcess, pw_hash: str
):
    _with_damaged(redis_proc, cli.env["REGCTL_PREFIX"], pw_hash, 2)
    for output in ("table", "csv"):
        ran = cli("-q", "-o", output, "resend-many", "--domain", "damaged.example", "--no-send")
        assert ran.exit_code == 0, ran.stderr
        assert ran.stderr.startswith("Warning: skipped 2 records regctl cannot read"), ran.stderr


def test_the_left_out_warning_counts_them_all_and_shows_a_few_keys_cut_short():
    from regctl.cli.render import LeftOut

    left_out = LeftOut()
    for n in range(10):
        left_out(f"regctl:{{b01}}:reg:{n}" + "\x1b" * 10_000)
    assert (left_out.count, len(left_out.first)) == (10, 3)
    warning = left_out.warning("not listed")
    assert warning.startswith("not listed: 10 records regctl cannot read")
    assert "and 7 more" in warning
    assert "\x1b" not in warning
    assert len(warning) < 3 * 4 * LeftOut.LONGEST + 300


def test_an_add_replayed_onto_a_stored_hash_too_costly_to_verify_is_refused_as_damaged(
    redis_proc: RedisProcess, prefix: str
):
    """Something else wrote the stored hash's cost up: checking a replay's password
    against it would hold the process for minutes; the record is damaged instead."""
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    try:
        manager.add("slow@example.com", "S", "H", password="a password", token="t-1")
        record = manager.store.keyspace.record(digest("slow@example.com"))  # type: ignore[attr-defined]
        costly = "$argon2id$v=19$m=19456,t=11,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g"
        redis_proc.client().hset(record, FIELDS["password_hash"], costly)
        with pytest.raises(DamagedRecord, match="beyond what regctl verifies"):
            manager.add("slow@example.com", "S", "H", password="a password", token="t-1")
    finally:
        manager.close()


# --- the plain-address fast path agrees with email-validator ---------------------------


def _validated(raw: str) -> str | None:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


_LABEL = st.one_of(
    st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True),
    st.from_regex(r"[A-Za-z]{2}--[A-Za-z0-9]{1,6}", fullmatch=True),  # reserved, or Punycode
)
_ROLES = ("info", "sales", "support", "abuse", "postmaster", "webmaster", "www", "noc")
_LOCAL = st.one_of(
    st.from_regex(r"[A-Za-z0-9_+-]{1,12}(?:\.[A-Za-z0-9_+-]{1,8}){0,2}", fullmatch=True),
    st.tuples(st.sampled_from(_ROLES), st.randoms()).map(  # role names, in any case
        lambda r: "".join(c.upper() if r[1].random() < 0.5 else c for c in r[0])
    ),
    st.from_regex(r"[A-Za-z0-9]{60,70}", fullmatch=True),  # about RFC 5321's 64 characters
)
_SUFFIX = st.sampled_from(["com", "Org", "example", "local", "test", "onion", "arpa", "io"])


@given(
    st.one_of(
        st.from_regex(PLAIN_ADDRESS, fullmatch=True),  # every shape it takes, long ones too
        st.builds(  # and many that look like real addresses, reserved names among them
            "{}@{}.{}".format,
            _LOCAL,
            st.lists(_LABEL, min_size=1, max_size=3).map(".".join),
            _SUFFIX,
        ),
    )
)
@settings(max_examples=1500, deadline=None)
def test_a_plain_address_is_normalized_as_email_validator_does(raw: str):
    plain = plain_address(raw)
    if plain is not None:  # else email-validator judges it, as for any other address
        assert plain == _validated(raw)


def test_the_plain_path_takes_common_addresses_and_leaves_the_rest():
    assert plain_address("alice.smith+news@Example.COM") == "alice.smith+news@example.com"
    for other in (
        "Info@x.io",
        "Alice@x.io",
        "a@b.local",
        "a@xn--bcher-kva.example",
        "a@ab--cd.example",
        "a..b@x.io",
        "ünï@x.io",
        "a@x.c0m",
        '"q"@x.io',
        " a@x.io",
    ):
        assert plain_address(other) is None, other


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Error 111 connecting to 127.0.0.1:1. Connection refused.", "connection refused"),
        (  # redis.asyncio's wording keeps its address whole
            "Error 111 connecting to 127.0.0.1:1. Connect call failed ('127.0.0.1', 1).",
            "connect call failed ('127.0.0.1', 1)",
        ),
    ],
)
def test_a_refused_connection_is_told_in_plain_words(raw: str, shown: str):
    assert first_line(Exception(raw)) == f"cannot connect to 127.0.0.1:1: {shown}"


def _argon2_verdict(phc: str) -> bool:
    """Whether argon2-cffi's parser reads ``phc`` as an Argon2id hash at OWASP's minimum."""
    from argon2 import Type, extract_parameters
    from argon2.exceptions import InvalidHashError

    try:
        params = extract_parameters(phc)
    except (InvalidHashError, ValueError, IndexError):
        return False
    return (
        params.type is Type.ID
        and 19456 <= params.memory_cost <= 2 * 1024 * 1024
        and 2 <= params.time_cost <= 10
        and 1 <= params.parallelism <= 16
    )


@given(
    st.from_regex(
        r"\$argon2id\$v=19\$m=[0-9]{1,8},t=[0-9]{1,4},p=[0-9]{1,3}"
        r"\$[A-Za-z0-9+/]{11,30}\$[A-Za-z0-9+/]{22,50}",
        fullmatch=True,
    )
)
@settings(max_examples=800, deadline=None)
def test_a_password_hash_is_judged_as_argon2_judges_it(phc: str):
    from regctl.security import check_password_hash

    try:
        check_password_hash(phc)
        accepted = True
    except InvalidInput:
        accepted = False
    assert accepted == _argon2_verdict(phc)


# --- what something else wrote where a step writes: no step is left half done -------------


def _damaged_store(redis_proc: RedisProcess, prefix: str, policy: Policy | None = None):
    """A manager, its store's keyspace and a raw client of the private server."""
    manager = RegistrationManager(
        RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET, policy=policy or Policy()
    )
    store = manager.store
    assert isinstance(store, RedisStore)
    return manager, store, redis_proc.client()


def test_a_gone_key_of_another_type_fails_no_add_verify_or_delete(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """Where verify and delete leave what made a record (for its add's replays),
    something else wrote another type: every step still runs whole."""
    manager, store, raw = _damaged_store(redis_proc, prefix)
    for email in ("g1@example.com", "g2@example.com"):
        raw.set(store.keyspace.gone(digest(email)), "not a hash")
    added = manager.add("g1@example.com", "G", "O", password_hash=pw_hash)
    assert manager.verify("g1@example.com", added.code).ok
    manager.add("g2@example.com", "G", "O", password_hash=pw_hash)
    assert manager.delete("g2@example.com")
    assert manager.get("g1@example.com") is None
    assert manager.get("g2@example.com") is None
    for email in ("g1@example.com", "g2@example.com"):  # (left as it was: no TTL given)
        assert raw.pttl(store.keyspace.gone(digest(email))) == -1
    manager.close()


def _today(raw, ks: Keyspace, email: str) -> str:
    """The funnel counter of ``email``'s bucket for the server's day."""
    return ks.funnel(ks.bucket_of(digest(email)), int(raw.time()[0]) // 86_400)


@pytest.mark.parametrize("damage", ["another type", "a value not a number", "at its limit"])
def test_a_damaged_funnel_counter_fails_no_step_it_counts(
    redis_proc: RedisProcess, prefix: str, pw_hash: str, damage: str
):
    """Counting comes after the change it counts, and Redis undoes nothing: a counter
    something else damaged must not fail a verify after it consumed the record (the
    new account would be lost, and the replay would say not found)."""
    manager, store, raw = _damaged_store(redis_proc, prefix)
    email = "funnel@example.com"
    counters = _today(raw, store.keyspace, email)
    if damage == "another type":
        raw.set(counters, "x")
    else:
        value = "abc" if damage == "a value not a number" else str(2**63 - 1)
        raw.hset(counters, mapping={"created": value, "sent": value, "verified": value})
    added = manager.add(email, "F", "N", password_hash=pw_hash)
    first = manager.verify(email, added.code, token="t1")
    assert first.ok
    assert manager.verify(email, added.code, token="t1").ok  # the replay: the same answer
    assert manager.get(email) is None


def test_an_index_of_another_type_fails_an_add_before_it_writes(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    manager, store, raw = _damaged_store(redis_proc, prefix)
    email = "index@example.com"
    d = digest(email)
    record, index = store.keyspace.keys_for(d)
    raw.set(index, "x")
    with pytest.raises(DamagedRecord, match="WRONGTYPE"):
        manager.add(email, "I", "X", password_hash=pw_hash)
    assert not raw.exists(record)
    source, *_ = _damaged_store(redis_proc, prefix + "src")
    source.add(email, "I", "X", password_hash=pw_hash)
    line = json.dumps(next(source.export(include_secrets=True)))
    report = manager.import_records([line])
    assert report.restored == 0
    assert len(report.errors) == 1
    assert "WRONGTYPE" in report.errors[0]
    assert not raw.exists(record)


@pytest.mark.parametrize("field", ["a", "r", "s", "ce"])
def test_a_record_with_a_number_not_a_number_is_left_as_it_was(
    redis_proc: RedisProcess, prefix: str, pw_hash: str, field: str
):
    """verify and resend refuse a record they cannot read before they change it."""
    manager, store, raw = _damaged_store(redis_proc, prefix, Policy(resend_cooldown_ms=0))
    email = f"n-{field}@example.com"
    code = manager.add(email, "N", "N", password_hash=pw_hash).code
    record = store.keyspace.record(digest(email))
    raw.hset(record, field, "1.5")
    before = raw.hgetall(record)
    for call in (lambda: manager.verify(email, code), lambda: manager.resend(email)):
        with pytest.raises(DamagedRecord, match="is damaged"):
            call()
    assert raw.hgetall(record) == before


def test_purge_and_reindex_trust_a_record_over_a_score_something_else_wrote(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    """A live record whose index entry says it expired keeps its life (its entry is set
    right); one whose lifetime reads as infinite is indexed by nobody; index members
    that name no record (whatever their bytes) go, counted as no drop-out; and a score
    beyond any time stops no listing."""
    manager, store, raw = _damaged_store(redis_proc, prefix)
    ks = store.keyspace
    for n in range(3):
        manager.add(f"s{n}@example.com", "S", "N", password_hash=pw_hash)
    stale = ks.keys_for(digest("s0@example.com"))
    raw.zadd(stale[1], {digest("s0@example.com"): 5})
    endless = ks.keys_for(digest("s1@example.com"))
    raw.zrem(endless[1], digest("s1@example.com"))
    raw.hset(endless[0], "e", "inf")
    junk_index = ks.index(7)
    raw.execute_command("ZADD", junk_index, 3, b"\xff\x00\x1b[2J", 3, "hello", 3, "")
    beyond = ks.keys_for(digest("s2@example.com"))
    raw.zadd(beyond[1], {digest("s2@example.com"): "inf"})

    report = manager.purge(reindex=True)
    assert raw.exists(stale[0])
    assert raw.zscore(stale[1], digest("s0@example.com")) == int(raw.hget(stale[0], "e"))
    assert raw.zscore(endless[1], digest("s1@example.com")) is None
    assert raw.zcard(junk_index) == 0
    assert (report.expired, report.orphans, report.reindexed) == (0, 3, 0)
    assert manager.funnel(1)[0].expired == 0
    assert manager.purge(dry_run=True).expired == 0
    assert {r.email for r in manager.list()} == {"s0@example.com", "s2@example.com"}


def test_health_warns_of_a_damaged_index_and_exits_within_its_range(
    cli: Cli, redis_proc: RedisProcess
):
    ks = Keyspace(cli.env["REGCTL_PREFIX"])
    redis_proc.client().set(ks.index(3), "x")
    ran = cli("health", "-o", "json")
    assert ran.exit_code == 1, (ran.stdout, ran.stderr)
    checks = {c["name"]: c for c in json.loads(ran.stdout)["checks"]}
    assert "WRONGTYPE" in checks["store"]["detail"]
    nagios = cli("health", "--nagios")
    assert nagios.exit_code == 1
    assert nagios.stdout.startswith("REGCTL WARNING - ")


def test_a_damaged_layout_record_is_bad_configuration_for_add_too(
    cli: Cli, redis_proc: RedisProcess
):
    redis_proc.client().hset(Keyspace(cli.env["REGCTL_PREFIX"]).meta, "buckets", "abc")
    ran = cli("add", "m@example.com", "-f", "M", "-l", "N", "--password-stdin", input="x" * 12)
    assert ran.exit_code == 78, ran.stderr
    assert "layout record" in ran.stderr


def test_a_wrong_type_is_named_in_the_words_of_redis_6_and_7():
    from redis.exceptions import ResponseError

    from regctl.connection import translated

    for text in (
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "Error running script (call to f_0123): @user_script:57: WRONGTYPE Operation "
        "against a key holding the wrong kind of value",
    ):
        assert isinstance(translated(ResponseError(text)), DamagedRecord)


_EMAIL = "typed@example.com"
_Filter: Any = Filter  # (typed Any too, as a caller without a type checker has them)
_Thresholds: Any = Thresholds
# A library call with a wrong kind of value, given (manager, password hash); the manager
# typed Any, as a caller without a type checker has it.
_WRONG_KINDS: dict[str, Callable[[Any, str], object]] = {
    "email as bytes": lambda m, h: m.add(b"b@example.com", "A", "B", password_hash=h),
    "email as None": lambda m, h: m.get(None),
    "a name as bytes": lambda m, h: m.add(_EMAIL, b"A", "B", password_hash=h),
    "a name as None": lambda m, h: m.add(_EMAIL, "A", None, password_hash=h),
    "a password as bytes": lambda m, h: m.add(_EMAIL, "A", "B", password=b"long enough!"),
    "a password hash as bytes": lambda m, h: m.add(_EMAIL, "A", "B", password_hash=b"$a"),
    "a token as a number": lambda m, h: m.add(_EMAIL, "A", "B", password_hash=h, token=5),
    "a token as bytes": lambda m, h: m.delete(_EMAIL, token=b"t"),
    "a client key as a number": lambda m, h: m.client_limits(7),
    "a limit as text": lambda m, h: list(m.list(limit="3")),
    "a sort that is none": lambda m, h: list(m.list(sort="bogus")),
    "a negative top": lambda m, h: m.stats(top=-1),
    "a funnel of a billion days": lambda m, h: m.funnel(10**9),
    "a funnel of no days": lambda m, h: m.funnel(0),
    "a selection that is no Filter": lambda m, h: list(m.list("locked")),
    "a purge selection that is no Filter": lambda m, h: m.purge("locked"),
    "a purge batch of none": lambda m, h: m.purge(batch=0),
    "a bulk resend limit as text": lambda m, h: m.resend_many(Filter(), limit="3"),
    "a bulk resend rate of none": lambda m, h: m.resend_many(Filter(), per_second=0),
    "an age in a selection as text": lambda m, h: list(m.list(_Filter(older_than_ms="5"))),
    "a lock state as a number": lambda m, h: m.purge(_Filter(locked=1)),
    "a domain as bytes": lambda m, h: list(m.list(_Filter(domain=b"example.com"))),
    "thresholds as a dict": lambda m, h: m.health(thresholds={}),
    "a threshold as text": lambda m, h: m.health(thresholds=_Thresholds(latency_warn_ms="5")),
    "a purge wait as text": lambda m, h: m.purge(wait="5"),
    "a purge wait of NaN": lambda m, h: m.purge(wait=math.nan),  # (it never ended)
    "import lines that are none": lambda m, h: m.import_records(None),
    "import lines as one string": lambda m, h: m.import_records('{"email": "a@b.c"}'),
}


def test_an_import_line_that_is_not_text_is_refused_as_that_line(
    redis_proc: RedisProcess, prefix: str
):
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    report = manager.import_records([{}, 7])  # type: ignore[list-item]
    assert (report.restored, report.invalid) == (0, 2)
    assert report.errors == [
        "line 1: a line is text or bytes, not dict",
        "line 2: a line is text or bytes, not int",
    ]


@pytest.mark.parametrize("case", list(_WRONG_KINDS))
def test_a_library_call_with_a_wrong_kind_of_value_is_invalid_input(
    case: str, pw_hash: str, redis_proc: RedisProcess, prefix: str
):
    """A backend may hand over anything: each wrong kind of value is InvalidInput (the
    400 of the example service), before anything is sent, never a TypeError (a 500)."""
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    with pytest.raises(InvalidInput):
        _WRONG_KINDS[case](manager, pw_hash)
    assert manager.store.counts().total == 0


def test_a_selections_domain_matches_in_any_case(
    redis_proc: RedisProcess, prefix: str, pw_hash: str
):
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    manager.add("Ann@Example.com", "A", "N", password_hash=pw_hash)
    for domain in ("Example.COM", "@example.com", " example.com "):
        assert [r.email for r in manager.list(Filter(domain=domain))] == ["Ann@example.com"]


def test_a_selections_ages_may_be_whole_numbers_written_as_floats():
    """(As timedelta arithmetic gives them.)"""
    assert _Filter(older_than_ms=1.5e6, newer_than_ms=3600e3) == Filter(
        older_than_ms=1_500_000, newer_than_ms=3_600_000
    )
    with pytest.raises(InvalidInput):
        _Filter(older_than_ms=1.5)


def test_list_takes_its_sort_by_name_too(redis_proc: RedisProcess, prefix: str, pw_hash: str):
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    for n in range(3):
        manager.add(f"o{n}@example.com", "O", "N", password_hash=pw_hash)
    newest = [r.email for r in manager.list(sort="newest")]
    assert newest == [r.email for r in manager.list(sort=SortKey.NEWEST)]
    assert newest[0] == "o2@example.com"
