"""Hostile input, races between clients, clock skew, and secrets at rest and in flight."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regctl import InvalidInput, MemoryStore, NotFound, Policy, RegistrationManager, VerifyOutcome
from regctl.keys import Keyspace, digest
from regctl.security import CodeHasher, new_token
from tests.conftest import SECRET, Cli, MakeManager, regctl, subprocess_env
from tests.servers import RedisProcess

FUZZ = settings(
    max_examples=60,
    deadline=None,
    # Generating a megabyte string may take a while on a busy machine: not a failure.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hostile_text = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet=st.characters(categories=["Nd", "Cc", "Cf", "Zs", "Zl", "So"]), max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\r\nb",
            "{}",
            "*",
            "?",
            "[x]",
            "１２３４５６",
            "٣٣٣٣٣٣",
            "a" * 1_000_000,
            "%s%n",
            "$(reboot)",
            "'; DROP",
            "\u202e\u2066",
        ]
    ),
)


def keyspace_size(cli: Cli, redis_proc: RedisProcess) -> int:
    return sum(1 for _ in redis_proc.client().scan_iter(f"{cli.env['REGCTL_PREFIX']}:*"))


def assert_clean_refusal_or_success(ran, allowed=(0, 2)) -> None:
    assert ran.exit_code in allowed, (ran.exit_code, ran.stderr[:300])
    assert "Traceback" not in ran.stderr
    if ran.exit_code:
        assert ran.stderr.startswith("Error: ")
        assert ran.stderr.count("\n") == 1


# --- hostile input -------------------------------------------------------------------------


@pytest.mark.slow
@FUZZ
@given(email=hostile_text, first=hostile_text)
def test_hostile_add_arguments_are_stored_safely_or_refused(cli: Cli, redis_proc, email, first):
    before = keyspace_size(cli, redis_proc)
    ran = cli("add", email, "-f", first, "-l", "L", "--password-stdin", input="long-enough-pw\n")
    assert_clean_refusal_or_success(ran, allowed=(0, 1, 2))
    if ran.exit_code == 2:
        assert keyspace_size(cli, redis_proc) == before
    elif ran.exit_code == 0:
        keys = list(redis_proc.client().scan_iter(f"{cli.env['REGCTL_PREFIX']}:*"))
        assert all(re.fullmatch(r"[A-Za-z0-9_.:{}-]+", k) for k in keys)
        cli("delete", email)


@pytest.mark.slow
@FUZZ
@given(code=hostile_text)
def test_hostile_codes_cost_no_attempt(cli: Cli, code: str):
    cli(
        "add", "victim@example.com", "-f", "V", "-l", "C", "--password-stdin", input="pw-12345678\n"
    )
    if re.fullmatch(r"[0-9]{6}", code, re.ASCII):
        return  # a well-formed code is a real guess
    before = json.loads(cli("inspect", "victim@example.com", "-o", "json").stdout)["attempts"]
    # (after --: a code spelt like an option, --help say, which the fuzzer draws from
    # regctl's own source, is the code, not the option)
    ran = cli("verify", "victim@example.com", "--", code)
    assert_clean_refusal_or_success(ran, allowed=(2,))
    shown = json.loads(cli("inspect", "victim@example.com", "-o", "json").stdout)
    assert shown["attempts"] == before


TOO_SHORT = "Error: password must be 8-128 characters\n"


@pytest.mark.parametrize("password", ["1234567\ud800", "\udfff" * 8])
def test_a_password_that_is_not_text_is_invalid_input(password: str):
    """A lone surrogate cannot be encoded, nor hashed: refused, not a crash."""
    manager = RegistrationManager(MemoryStore(), secret=SECRET)
    with pytest.raises(InvalidInput, match="not text"):
        manager.add("s@example.com", "S", "G", password=password)


@pytest.mark.slow
@FUZZ
@given(password=hostile_text)
def test_hostile_passwords_are_hashed_or_refused(cli: Cli, password: str):
    if "\n" in password or "\r" in password:
        password = password.replace("\r", "").replace("\n", "")
    ran = cli(
        "add", "pw@example.com", "-f", "P", "-l", "W", "--password-stdin", input=password + "\n"
    )
    assert_clean_refusal_or_success(ran, allowed=(0, 2))
    # Outside the fixed words of a refusal or a success, the password never shows.
    shown = ran.stdout + ran.stderr
    for fixed in (TOO_SHORT, "added pw@example.com; code not sent\n"):
        shown = shown.replace(fixed, "")
    if len(password) >= 4:
        assert password not in shown
    cli("delete", "pw@example.com")


@pytest.mark.slow
@FUZZ
@given(value=hostile_text)
def test_hostile_prefixes_and_urls_are_refused_as_input(cli: Cli, value: str):
    for option in ("--prefix", "--url"):
        ran = cli(option, value, "list", "-o", "name")
        assert_clean_refusal_or_success(ran, allowed=(0, 2, 69))


@pytest.mark.slow
@FUZZ
@given(duration=hostile_text, domain=hostile_text)
def test_hostile_filters_are_refused_cleanly(cli: Cli, duration: str, domain: str):
    assert_clean_refusal_or_success(cli("list", "--older-than", duration), allowed=(0, 2))
    assert_clean_refusal_or_success(cli("list", "--domain", domain), allowed=(0, 2))


def test_a_megabyte_argument_is_refused_quickly(cli: Cli):
    ran = cli("inspect", "a" * 1_000_000 + "@example.com")
    assert ran.exit_code == 2
    assert len(ran.stderr) < 300


# --- races between clients ------------------------------------------------------------------


@pytest.fixture
def env(redis_proc: RedisProcess, prefix: str) -> dict[str, str]:
    return subprocess_env(redis_proc.url, prefix)


def add_with_code(env: dict[str, str], email: str) -> str:
    ran = regctl(
        env,
        "-o",
        "json",
        "add",
        email,
        "-f",
        "R",
        "-l",
        "C",
        "--password-stdin",
        "--show-code",
        stdin="race-password\n",
    )
    assert ran.returncode == 0, ran.stderr
    return str(json.loads(ran.stdout)["code"])


@pytest.mark.slow
def test_concurrent_verify_processes_succeed_exactly_once(env: dict[str, str]):
    code = add_with_code(env, "race@example.com")
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: regctl(env, "verify", "race@example.com", code).returncode, range(8))
        )
    assert sorted(codes) == [0] + [3] * 7


def race_a_resend_against_the_old_code(
    manager: RegistrationManager, email: str, old: str, resend_first: bool
) -> tuple[str | None, VerifyOutcome]:
    """A resend and a verify of the old code let go together: the resend's new code
    (None when it found no record) and the verify's outcome. ``resend_first`` submits
    the resend's thread first: alternating it keeps both orders common, whichever
    one the scheduler favours."""
    barrier = threading.Barrier(2, timeout=60)

    def resend() -> str | None:
        barrier.wait()
        try:
            return manager.resend(email).code
        except NotFound:
            return None

    def verify_old() -> VerifyOutcome:
        barrier.wait()
        return manager.verify(email, old).outcome

    with ThreadPoolExecutor(2) as pool:
        if resend_first:
            resent, verified = pool.submit(resend), pool.submit(verify_old)
        else:
            verified, resent = pool.submit(verify_old), pool.submit(resend)
        return resent.result(), verified.result()


def test_the_old_code_never_works_once_a_resend_committed(make_manager: MakeManager, pw_hash: str):
    # Exactly one of the two can win: a verify that commits first consumes the record,
    # so the resend finds nothing; a resend that commits first kills the old code, so
    # the verify is a wrong code and the new code still works. Both succeeding, in
    # either order, is the bug. Many rounds, so both orders occur.
    manager = make_manager(Policy(resend_cooldown_ms=0))
    for i in range(40):
        email = f"rr{i}@example.com"
        old = manager.add(email, "R", "C", password_hash=pw_hash).code
        new, outcome = race_a_resend_against_the_old_code(manager, email, old, i % 2 == 0)
        if new is None:
            assert outcome is VerifyOutcome.VERIFIED, i
        elif new != old:  # a new code equal to the old one (one chance in a million) is fine
            assert outcome is VerifyOutcome.INVALID_CODE, i
            assert manager.verify(email, new).ok, i


@pytest.mark.slow
def test_concurrent_resends_inside_the_cooldown_send_one_code(
    env: dict[str, str], redis_proc: RedisProcess
):
    # The last code went out two hours ago and the cooldown is an hour: the first
    # resend to commit sends, and all the others, however slowly their processes
    # start, land inside the hour it opens.
    hour = {**env, "REGCTL_RESEND_COOLDOWN": "3600"}
    add_with_code(hour, "cool@example.com")
    raw = redis_proc.client()
    seconds, _micros = raw.time()
    record = Keyspace(env["REGCTL_PREFIX"]).record(digest("cool@example.com"))
    raw.hset(record, "s", (seconds - 2 * 3600) * 1000)
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: regctl(hour, "resend", "cool@example.com").returncode, range(8))
        )
    assert sorted(codes) == [0] + [1] * 7


# --- clock skew ------------------------------------------------------------------------------


def test_a_client_clock_hours_off_changes_no_decision(cli: Cli, monkeypatch: pytest.MonkeyPatch):
    real_time, real_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + 5 * 3600)
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + 5 * 3600 * 10**9)
    ran = cli(
        "-o",
        "json",
        "add",
        "skew@example.com",
        "-f",
        "S",
        "-l",
        "K",
        "--password-stdin",
        "--show-code",
        input="skewed-password\n",
    )
    code = json.loads(ran.stdout)["code"]
    shown = json.loads(cli("inspect", "skew@example.com", "-o", "json").stdout)
    assert shown["ttl_ms"] > 86_000_000
    assert shown["status"] == "pending"  # the code has not "expired"
    assert json.loads(cli("-o", "json", "purge").stdout)["purged"] == 0
    assert cli("verify", "skew@example.com", code).exit_code == 0


# --- secrets at rest and in flight ----------------------------------------------------------


@pytest.fixture
def watched_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(
        tmp_path / "w",
        aof=True,
        extra=["--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000"],
    ).start()
    yield proc
    proc.stop()


def test_codes_and_passwords_appear_nowhere_in_redis(watched_redis: RedisProcess):
    captured: list[str] = []
    ready = threading.Event()
    stop = threading.Event()

    def monitor() -> None:
        with watched_redis.client().monitor() as m:
            ready.set()
            for event in m.listen():
                captured.append(str(event.get("command", "")))
                if stop.is_set():
                    return

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    assert ready.wait(60)
    manager = RegistrationManager.from_settings(
        __import__("regctl")
        .load_settings(
            {"redis_url": watched_redis.url, "code_secret": SECRET, "resend_cooldown": 0},
            environ={},
        )
        .settings
    )
    secrets_used: list[str] = []
    for i in range(10):
        password = f"Leak-Check-{i}-Passw0rd"
        added = manager.add(f"s{i}@example.com", "S", "E", password=password)
        resent = manager.resend(f"s{i}@example.com")
        manager.verify(f"s{i}@example.com", added.code if added.code != resent.code else "000000")
        manager.verify(f"s{i}@example.com", resent.code)
        secrets_used += [password, added.code, resent.code]
    client = watched_redis.client()
    # MONITOR shows commands in the order they ran: once it shows this one, it has
    # shown every command before it.
    client.echo("end-of-capture")
    deadline = time.monotonic() + 60
    while not any("end-of-capture" in command for command in captured):
        assert time.monotonic() < deadline, "MONITOR never showed the last command"
        time.sleep(0.05)
    stop.set()
    client.ping()  # an event for the watcher, which then sees it should stop
    watcher.join(60)
    aof = b"".join(p.read_bytes() for p in watched_redis.directory.rglob("*.aof*") if p.is_file())
    slowlog = json.dumps(client.slowlog_get(100_000), default=str)
    keys = " ".join(client.scan_iter("*"))
    haystacks = {
        "aof": aof.decode(errors="replace"),
        "slowlog": slowlog,
        "monitor": "\n".join(captured),
        "keys": keys,
    }
    assert all(haystacks[name] for name in ("monitor", "aof", "slowlog"))
    for name, hay in haystacks.items():
        for secret in secrets_used:
            # A code could occur inside a hex digest or a timestamp by chance: look for it
            # as a token of its own.
            assert not re.search(rf"(?<![0-9a-zA-Z]){re.escape(secret)}(?![0-9a-zA-Z])", hay), name
        assert SECRET not in hay
    manager.close()


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=200),  # (past 64 bytes, HMAC hashes the key first)
    identity=st.text(st.characters(exclude_categories=["Cs"]), max_size=80),
    code=st.text("0123456789", min_size=6, max_size=10),
)
def test_a_code_hash_is_hmac_sha256_under_the_secret(key: bytes, identity: str, code: str):
    """Stored code hashes and fingerprints are plain HMAC-SHA256: the hasher's own
    keyed states give what ``hmac.new`` gives, so every stored hash still verifies."""
    hasher = CodeHasher(key)
    tag, _, mac = hasher.digest(identity, code).partition(":")
    message = identity.encode() + b"\x00" + code.encode()
    assert mac == hmac.new(key, message, hashlib.sha256).hexdigest()
    fingerprint = hmac.new(key, b"regctl code-secret fingerprint", hashlib.sha256).hexdigest()
    assert hasher.fingerprint() == fingerprint[:32]
    assert fingerprint.startswith(tag)


def test_codes_are_uniform_per_digit_and_keep_leading_zeros():
    hasher = CodeHasher(SECRET)
    codes = [hasher.code_for("add", "alice@example.com", new_token(), 6) for _ in range(200_000)]
    assert all(len(c) == 6 for c in codes)
    for position in range(6):
        counts = Counter(c[position] for c in codes)
        expected = len(codes) / 10
        chi2 = sum((counts[str(d)] - expected) ** 2 / expected for d in range(10))
        assert chi2 < 40, (position, chi2)  # 9 degrees of freedom: p < 1e-5
    leading = sum(1 for c in codes if c[0] == "0")
    assert 18_000 < leading < 22_000


def test_policy_validation_refuses_nonsense():
    from regctl import InvalidInput

    with pytest.raises(InvalidInput):
        Policy(code_length=5)
    with pytest.raises(InvalidInput):
        Policy(max_attempts=0)


@pytest.mark.parametrize(
    "rule",
    [
        {"max_attempts": float("nan")},  # (every comparison with NaN is false)
        {"max_attempts": float("inf")},
        {"max_attempts": 2**53},  # past what Lua holds exactly
        {"max_attempts": "5"},
        {"max_attempts": None},
        {"max_resends": True},
        {"lifetime_ms": 1000.7},
        {"signups_per_client": -1.0},
    ],
)
def test_a_policy_takes_whole_numbers_only(rule: dict[str, object]):
    """Checked when made: NaN or a fraction failed in Redis after a verify had counted
    its attempt, and text with a TypeError."""
    from regctl import InvalidInput

    with pytest.raises(InvalidInput):
        Policy(**rule)  # type: ignore[arg-type]


def test_a_policy_takes_a_whole_float_as_its_number():
    from datetime import timedelta

    policy = Policy(lifetime_ms=timedelta(hours=2).total_seconds() * 1000)  # type: ignore[arg-type]
    assert policy.lifetime_ms == 7_200_000
    assert type(policy.lifetime_ms) is int


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"secret": 12345}, "text or bytes"),
        ({"secret": "\udcff" * 32}, "lone surrogate"),
        ({"secret": SECRET, "policy": "strict"}, "a regctl Policy"),
    ],
)
def test_a_manager_refuses_a_secret_or_policy_it_cannot_use_when_made(
    arguments: dict[str, object], message: str
):
    """Not at the first add, after the store's secret fingerprint was written."""
    from regctl import ConfigError, MemoryStore, RegistrationManager

    with pytest.raises(ConfigError, match=message):
        RegistrationManager(MemoryStore(), **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "durations",
    [
        {"lifetime_ms": 2**53},  # past what Redis and the codec take as a time
        {"lifetime_ms": 30 * 86_400_000 + 1},
        {"code_lifetime_ms": 86_400_000 + 1},
        {"resend_cooldown_ms": 10**17},
        {"replay_window_ms": 0},
        {"replay_window_ms": 10**17},
        {"client_window_ms": 10**17},
        {"funnel_days": 10**9},
    ],
)
def test_a_policy_refuses_durations_the_settings_refuse(durations: dict[str, int]):
    """A library caller's Policy is held to the settings' bounds: past them, an add
    would store a record with no TTL, or one no later call could read."""
    from regctl import InvalidInput
    from regctl.model import MAX_CODE_LIFETIME_MS, MAX_FUNNEL_DAYS, MAX_LIFETIME_MS

    with pytest.raises(InvalidInput):
        Policy(**durations)
    Policy(  # the bounds themselves are taken
        lifetime_ms=MAX_LIFETIME_MS,
        code_lifetime_ms=MAX_CODE_LIFETIME_MS,
        resend_cooldown_ms=MAX_CODE_LIFETIME_MS,
        replay_window_ms=MAX_CODE_LIFETIME_MS,
        client_window_ms=MAX_LIFETIME_MS,
        funnel_days=MAX_FUNNEL_DAYS,
    )


def test_a_client_key_is_stored_under_a_keyed_name_only(redis_proc: RedisProcess, pw_hash: str):
    """An IP given as client= is nowhere in Redis, not even as a plain digest that
    trying every IPv4 address would find: the window is named with the code secret."""
    from regctl import RedisStore

    prefix = "pseudo"
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    manager.add("p@example.com", "P", "S", password_hash=pw_hash, client="203.0.113.77")
    client = redis_proc.client()
    names = [str(k) for k in client.scan_iter(f"{prefix}:limit:*")]
    assert len(names) == 2  # the sign-up and code windows
    dumped = " ".join(names) + " ".join(str(m) for n in names for m in client.zrange(n, 0, -1))
    assert "203.0.113.77" not in dumped
    assert digest("203.0.113.77") not in dumped
    name = CodeHasher(SECRET).pseudonym("203.0.113.77")
    assert name in dumped
    assert CodeHasher(SECRET + "-other").pseudonym("203.0.113.77") != name


def test_the_settings_and_mail_config_show_their_url_passwords_masked():
    """A backend logs its settings at start-up: the passwords in the Redis and SMTP
    URLs are masked there, as the secret settings are."""
    from regctl.mail import MailConfig
    from regctl.settings import load_settings

    loaded = load_settings(
        {
            "redis_url": "redis://:RedisPw0rd@cache.internal:6379/0",
            "mail_url": "smtp://user:MailPassw0rd@mail.internal:587",
            "code_secret": SECRET,
        },
        environ={},
    ).settings
    shown = [repr(loaded), str(loaded), repr(MailConfig.from_settings(loaded))]
    for text in shown:
        assert "Pw0rd" not in text
        assert "Passw0rd" not in text
    assert "redis://:***@cache.internal:6379/0" in shown[0]
    assert "smtp://user:***@mail.internal:587" in shown[2]


def test_a_settings_error_shows_no_url_password_and_query_secrets_are_masked():
    """Built directly (a backend's own code), a bad URL's error keeps its password out,
    as load_settings' does; a secret in any query parameter named like one is masked,
    and a parameter no connection takes is masked whole (a password's tail, maybe)."""
    import pydantic

    from regctl.settings import Settings
    from regctl.urls import mask_url

    with pytest.raises(pydantic.ValidationError) as refused:
        Settings(redis_url="redis://:Pw0rdInUrl@cache.internal:notaport")
    assert "Pw0rdInUrl" not in str(refused.value)
    masked = mask_url("rediss://h:6380/0?ssl_password=KeyPass1&db=2&Auth_Token=T0k")
    assert masked == "rediss://h:6380/0?ssl_password=***&db=2&***"
