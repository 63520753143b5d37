"""Code delivery through a real SMTP server on loopback, and what output never shows."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import threading

import pytest

from tests.conftest import REGCTL, Cli, subprocess_env
from tests.smtp import SmtpServer, body_of

EMAIL = "carol@example.com"
PASSWORD = "Unique-Passw0rd-4-hygiene"


def test_add_mails_the_code_and_the_mailed_code_verifies(cli: Cli, smtp: SmtpServer):
    ran = cli(
        "add",
        EMAIL,
        "-f",
        "Carol",
        "-l",
        "Danvers",
        "--password-stdin",
        input=PASSWORD,
        REGCTL_MAIL_URL=smtp.url,
        REGCTL_MAIL_FROM="shop <a@shop.example>",
    )
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout == f"added {EMAIL}; code mailed\n"
    (message,) = smtp.sink.messages
    assert message["To"] == EMAIL
    assert message["From"] == "shop <a@shop.example>"
    assert message["Subject"] == "Your verification code"
    body = body_of(message)
    assert "Hello Carol," in body
    assert "valid for 15 minutes" in body
    assert cli("verify", EMAIL, smtp.sink.code_for(EMAIL)).exit_code == 0


def test_a_custom_template_is_used(cli: Cli, smtp: SmtpServer, tmp_path):
    template = tmp_path / "mail.txt"
    template.write_text("Code {code} for {email}, {minutes} min. {{literal}}\n")
    cli(
        "add",
        EMAIL,
        "-f",
        "C",
        "-l",
        "D",
        "--password-stdin",
        input=PASSWORD,
        REGCTL_MAIL_URL=smtp.url,
        REGCTL_MAIL_TEMPLATE=str(template),
    )
    body = body_of(smtp.sink.messages[0])
    assert re.fullmatch(r"Code \d{6} for carol@example\.com, 15 min\. \{literal\}\r?\n", body)


def test_credentials_are_never_sent_without_tls(cli: Cli, smtp: SmtpServer):
    url = f"smtp://user:s3cret@127.0.0.1:{smtp.port}"
    ran = cli(
        "add", EMAIL, "-f", "C", "-l", "D", "--password-stdin", input=PASSWORD, REGCTL_MAIL_URL=url
    )
    assert ran.exit_code == 74
    assert "STARTTLS" in ran.stderr
    assert "s3cret" not in ran.stderr
    assert smtp.sink.messages == []


def test_ctrl_c_while_the_mail_server_answers_is_an_interrupt_not_a_failure(
    cli: Cli, smtp: SmtpServer
):
    """A QUIT sent on the way out read the reply the interrupted send was owed, and its
    error took the interrupt's place: reported as a failed mail (exit 74), run on."""
    added = cli("add", EMAIL, "-f", "C", "-l", "D", "--password-stdin", "--no-send", input=PASSWORD)
    assert added.exit_code == 0, added.stderr
    smtp.sink.release = threading.Event()
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    proc = subprocess.Popen(
        [REGCTL, "-o", "json", "resend", EMAIL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env | {"REGCTL_MAIL_URL": smtp.url, "REGCTL_RESEND_COOLDOWN": "0"},
        text=True,
    )
    try:
        assert smtp.sink.arrived.wait(60)  # the message is in; its reply waits
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):  # (it ends at once: no QUIT)
            proc.wait(timeout=10)
    finally:
        smtp.sink.release.set()  # the reply comes: a QUIT sent meanwhile would read it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out)["reason"] == "interrupted"
    assert "failed" not in err


def test_a_bulk_resend_stopped_while_mailing_puts_that_code_on_the_record(
    cli: Cli, smtp: SmtpServer
):
    added = cli("add", EMAIL, "-f", "C", "-l", "D", "--password-stdin", "--no-send", input=PASSWORD)
    assert added.exit_code == 0, added.stderr
    smtp.sink.release = threading.Event()
    env = subprocess_env(cli.env["REGCTL_REDIS_URL"], cli.env["REGCTL_PREFIX"])
    proc = subprocess.Popen(
        [REGCTL, "resend-many", "--older-than", "0s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env | {"REGCTL_MAIL_URL": smtp.url, "REGCTL_RESEND_COOLDOWN": "0"},
        text=True,
    )
    try:
        assert smtp.sink.arrived.wait(60)  # the new code is made, its mail under way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        smtp.sink.release.set()
    assert proc.returncode == 130, err
    assert "interrupted: new codes 1 before Ctrl-C" in err
    trail = json.loads(cli("audit", "-o", "json").stdout)
    assert [(e["target"], e["outcome"]) for e in trail if e["command"] == "resend-many"] == [
        ("older-than=0s", "interrupted"),
        (EMAIL, "interrupted"),  # (its old code is dead; whether the mail went is unknown)
    ]


def test_no_output_ever_shows_a_code_a_password_or_a_hash(cli: Cli, smtp: SmtpServer):
    env = {"REGCTL_MAIL_URL": smtp.url, "REGCTL_RESEND_COOLDOWN": "0"}
    outputs: list[str] = []

    def run(*args: str, **kw: str) -> None:
        for debug in ((), ("--debug",)):
            for fmt in ((), ("-o", "json")):
                ran = cli(*debug, *fmt, *args, **{**env, **kw})
                outputs.append(ran.stdout + ran.stderr)

    ran = cli("add", EMAIL, "-f", "C", "-l", "D", "--password-stdin", input=PASSWORD, **env)
    outputs.append(ran.stdout + ran.stderr)
    codes = [smtp.sink.code_for(EMAIL)]
    run("resend", EMAIL)
    codes += [body_of(m).split("code is ")[1][:6] for m in smtp.sink.messages]
    for command in (
        ("list",),
        ("list", "-o", "wide"),
        ("list", "-o", "csv"),
        ("inspect", EMAIL),
        ("stats",),
        ("health",),
        ("doctor",),
        ("config",),
        ("purge", "--dry-run"),
    ):
        run(*command)
    run("verify", EMAIL, "000000" if "000000" not in codes else "999999")
    blob = "\n".join(outputs)
    for code in set(codes):
        assert code not in blob
    assert PASSWORD not in blob
    assert "argon2" not in blob
    assert "test-secret" not in blob


def test_the_password_hash_is_printed_only_by_a_successful_json_verify(cli: Cli, smtp):
    cli(
        "add",
        EMAIL,
        "-f",
        "C",
        "-l",
        "D",
        "--password-stdin",
        input=PASSWORD,
        REGCTL_MAIL_URL=smtp.url,
    )
    ran = cli("-o", "json", "verify", EMAIL, smtp.sink.code_for(EMAIL))
    assert json.loads(ran.stdout)["registration"]["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in ran.stdout


def test_the_library_mailer_sends_what_the_cli_sends_in_both_forms(
    smtp: SmtpServer, redis_proc, prefix: str, pw_hash
):
    import asyncio

    from regctl import Mailer, RedisStore, RegistrationManager
    from regctl.settings import load_settings
    from tests.conftest import SECRET

    settings = load_settings(
        {"mail_url": smtp.url, "mail_from": "shop <a@shop.example>", "code_secret": SECRET},
        environ={},
    ).settings
    mailer = Mailer.from_settings(settings)
    manager = RegistrationManager(RedisStore(redis_proc.client(), prefix=prefix), secret=SECRET)
    added = manager.add("lib@example.com", "Lib", "Rary", password_hash=pw_hash)
    assert mailer.send_code(added.registration, added.code) == "mail"
    other = manager.add("async@example.com", "Asy", "Nc", password_hash=pw_hash)
    assert asyncio.run(mailer.asend_code(other.registration, other.code)) == "mail"
    first, second = smtp.sink.messages
    assert (first["To"], first["From"], first["Subject"]) == (
        "lib@example.com",
        "shop <a@shop.example>",
        "Your verification code",
    )
    assert "Hello Lib," in body_of(first)
    assert "valid for 15 minutes" in body_of(first)
    assert second["To"] == "async@example.com"
    for email in ("lib@example.com", "async@example.com"):
        assert manager.verify(email, smtp.sink.code_for(email)).ok


def test_an_internationalized_domain_is_mailed_in_its_ascii_form(smtp: SmtpServer, pw_hash: str):
    from regctl import Mailer, MemoryStore, RegistrationManager
    from regctl.settings import load_settings
    from tests.conftest import SECRET

    settings = load_settings({"mail_url": smtp.url}, environ={}).settings
    manager = RegistrationManager(MemoryStore(), secret=SECRET)
    added = manager.add("victim@straße.de", "Vic", "Tim", password_hash=pw_hash)
    assert Mailer.from_settings(settings).send_code(added.registration, added.code) == "mail"
    (message,) = smtp.sink.messages
    assert message["To"] == "victim@xn--strae-oqa.de"  # (IDNA 2008: not strasse.de)


def test_a_local_part_that_is_not_ascii_is_written_as_utf8_not_an_encoded_word():
    """RFC 2047's =?utf-8?q?...?= is not allowed in an address, and the message as
    written (the console's, a server without SMTPUTF8's) carried one."""
    from regctl.mail import MailConfig, compose

    config = MailConfig("console", "shop <a@shop.example>", "Your verification code")
    written = compose(config, "Élise@exemple.fr", "Élise", "123456", 15).as_string()
    assert "To: Élise@exemple.fr" in written  # (was To: =?utf-8?q?=C3=89lise?=@exemple.fr)


def test_a_mailer_with_a_broken_template_fails_at_start_up(tmp_path):
    from regctl import ConfigError, Mailer
    from regctl.settings import load_settings

    template = tmp_path / "t.txt"
    template.write_text("no code here {first_name}\n")
    settings = load_settings(
        {"mail_url": "console", "mail_template": str(template)}, environ={}
    ).settings
    with pytest.raises(ConfigError, match=r"has no \{code\}"):
        Mailer.from_settings(settings)


def test_the_mailer_refuses_an_empty_code(pw_hash):
    from regctl import InvalidInput, Mailer, MemoryStore, RegistrationManager
    from regctl.settings import load_settings
    from tests.conftest import SECRET

    mailer = Mailer.from_settings(load_settings({"mail_url": "none"}, environ={}).settings)
    manager = RegistrationManager(MemoryStore(), secret=SECRET, conceal_pending=True)
    manager.add("e@example.com", "E", "C", password_hash=pw_hash)
    quiet = manager.add("e@example.com", "E", "C", password_hash=pw_hash)  # in the cooldown
    assert not quiet.send
    with pytest.raises(InvalidInput, match="no code to send"):
        mailer.send_code(quiet.registration, quiet.code)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subject": "Hi\r\nBcc: x@example.com"}, "must be one line"),
        ({"sender": "not an address"}, "the sender must be one address"),
        ({"sender": "shop <a@shop.example>, b@x.example"}, "the sender must be one address"),
        ({"url": "http://mail.example"}, "use smtp://"),
        ({"timeout": float("nan")}, "the timeout (seconds) must be a number"),
        ({"timeout": 0}, "the timeout (seconds) must be more than 0"),
        ({"sender": None}, "the sender must be text"),
        ({"sender": "a@shop.example,"}, "the sender must be one address"),
        ({"template": "/etc/template.txt"}, "the mail template must be a Path"),
    ],
)
def test_a_mail_config_a_library_caller_builds_is_checked_as_the_settings_are(
    change: dict[str, object], message: str
):
    """(A bad subject was a ValueError from the email package at the first mail, and a
    sender that is no address went out as MAIL FROM:not.)"""
    from regctl import ConfigError, Mailer
    from regctl.mail import MailConfig

    given = {"url": "console", "sender": "shop <a@shop.example>", "subject": "Code"} | change
    with pytest.raises(ConfigError, match=re.escape(message)):
        Mailer(MailConfig(**given))  # type: ignore[arg-type]


def test_a_mail_timeout_the_settings_take_the_mailer_takes():
    from regctl import Mailer
    from regctl.settings import load_settings

    settings = load_settings({"mail_url": "console", "mail_timeout": 0.0005}, environ={}).settings
    assert Mailer.from_settings(settings).config.timeout == 0.0005


@pytest.mark.parametrize(
    ("code", "email", "message"),
    [
        ("12345\r\nX", "e@example.com", "a verification code is digits 0-9"),
        ("123456", "e\x00@example.com", "invalid email address"),
    ],
)
def test_the_mailer_refuses_a_code_or_an_address_no_registration_has(
    pw_hash: str, code: str, email: str, message: str
):
    import dataclasses

    from regctl import InvalidInput, Mailer, MemoryStore, RegistrationManager
    from regctl.mail import MailConfig
    from tests.conftest import SECRET

    manager = RegistrationManager(MemoryStore(), secret=SECRET)
    added = manager.add("e@example.com", "E", "C", password_hash=pw_hash)
    made = dataclasses.replace(added.registration, email=email)  # (by hand)
    mailer = Mailer(MailConfig("console", "shop <a@shop.example>", "Code"))
    with pytest.raises(InvalidInput, match=re.escape(message)):
        mailer.send_code(made, code)
