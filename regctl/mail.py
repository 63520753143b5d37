"""Delivering a verification code: SMTP (STARTTLS or implicit TLS), console, or none.

``REGCTL_MAIL_URL``:
- ``smtp://[user:pass@]host[:port]`` — STARTTLS when the server offers it, and
  required whenever credentials are given (a password never crosses in clear);
- ``smtps://[user:pass@]host[:port]`` — TLS from the first byte;
- ``console`` — the message on stderr (development; the default);
- ``none`` — no delivery (the caller delivers the code itself).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from regctl.errors import ConfigError, DeliveryFailed, InvalidInput, first_line
from regctl.urls import mask_url
from regctl.validation import as_text, normalize_email, number_in

if TYPE_CHECKING:
    from email.message import EmailMessage

    from regctl.model import PendingRegistration
    from regctl.settings import Settings

MAX_TIMEOUT_S = 300  # (REGCTL_MAIL_TIMEOUT's bound)
DEFAULT_BODY = """\
Hello {first_name},

your verification code is {code}

It is valid for {minutes} minutes. If you did not sign up, ignore this message.
"""


@dataclass(frozen=True)
class MailConfig:
    url: str
    sender: str
    subject: str
    template: Path | None = None
    timeout: float = 10.0

    def __repr__(self) -> str:  # (the URL may hold the SMTP password)
        return (
            f"MailConfig(url={mask_url(self.url)!r}, sender={self.sender!r}, "
            f"subject={self.subject!r}, template={self.template!r}, timeout={self.timeout!r})"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> MailConfig:
        return cls(
            url=settings.mail_url,
            sender=settings.mail_from,
            subject=settings.mail_subject,
            template=settings.mail_template,
            timeout=settings.mail_timeout,
        )

    @property
    def enabled(self) -> bool:
        return self.url != "none"

    def check(self) -> None:
        """Fail now (ConfigError) on what would fail or go wrong at delivery: each value
        as the settings check it (one built by a library caller too), and the template."""
        try:
            check_mail_url(as_text(self.url, "the mail URL"))
            check_sender(check_header(as_text(self.sender, "the sender"), "sender"))
            check_header(as_text(self.subject, "the mail subject"), "mail subject")
            if not (self.template is None or isinstance(self.template, Path)):
                raise ValueError("the mail template must be a Path (or None)")
            # (REGCTL_MAIL_TIMEOUT's bounds: more than 0, at most MAX_TIMEOUT_S)
            if number_in(self.timeout, "the timeout (seconds)", 0, MAX_TIMEOUT_S) == 0:
                raise ValueError("the timeout (seconds) must be more than 0")
        except (ValueError, InvalidInput) as exc:
            said = exc.message if isinstance(exc, InvalidInput) else str(exc)
            raise ConfigError(f"bad mail settings: {said}") from None
        if self.enabled:
            compose(self, "check@example.com", "Check", "000000", 15)


class Mailer:
    """Sends a verification code exactly as `regctl add` and `regctl resend` do: the
    same REGCTL_MAIL_URL, sender, subject and template.

    Example: Mailer.from_settings().send_code(added.registration, added.code)
    """

    def __init__(self, config: MailConfig) -> None:
        config.check()
        self.config = config

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Mailer:
        """The mailer the settings describe (env, .env, config file when not given);
        a template that could not be used fails here (ConfigError), at start-up."""
        from regctl.settings import load_settings

        return cls(MailConfig.from_settings(settings or load_settings().settings))

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def send_code(self, registration: PendingRegistration, code: str) -> str:
        """Mail ``code`` to the registration's address, with the minutes it has left;
        return how it went out: ``mail``, ``console`` or ``not_sent`` (REGCTL_MAIL_URL
        ``none``). Raises DeliveryFailed (the code stays valid: resend) or ConfigError.
        """
        if not code:  # an Added with send False: there is nothing to send
            raise InvalidInput("no code to send (the add asked for none: Added.send is False)")
        if not (isinstance(code, str) and code.isascii() and code.isdigit()):
            raise InvalidInput("a verification code is digits 0-9")
        normalize_email(registration.email)  # (one made by hand: no NUL into RCPT TO)
        if not self.enabled:
            return "not_sent"
        minutes = max(1, (registration.code_expires_at - registration.observed_at) // 60_000)
        message = compose(self.config, registration.email, registration.first_name, code, minutes)
        deliver(self.config, message)
        return "console" if self.config.url == "console" else "mail"

    async def asend_code(self, registration: PendingRegistration, code: str) -> str:
        """``send_code`` without blocking the event loop (SMTP runs in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.send_code, registration, code)


def check_mail_url(url: str) -> str:
    """Return ``url`` if delivery can use it (no I/O), else raise ValueError."""
    if url in ("none", "console"):
        return url
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        raise ValueError("the mail URL's port must be a number from 1 to 65535") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("use smtp://[user:pass@]host[:port], smtps://…, console or none")
    return url


def check_header(value: str, what: str) -> str:
    """A mail header value without line breaks or control characters (no injection)."""
    if not value.isprintable():  # controls, bidi overrides, undecodable bytes
        raise ValueError(f"the {what} must be one line without control characters")
    return value


def check_sender(value: str) -> str:
    """A From: an address with an @, a name before it if any (`regctl <a@b.org>`)."""
    from email.utils import getaddresses, parseaddr

    _name, address = parseaddr(value)
    several = len(getaddresses([value])) != 1 or value.rstrip().endswith((",", ";"))
    if "@" not in address.strip("@") or " " in address or several:
        raise ValueError("the sender must be one address, like regctl <no-reply@example.com>")
    return value


# The placeholders a mail template may use, as plain names ({first_name.x} would
# reach into Python objects); {code} is required: a code mail without it is useless.
PLACEHOLDERS = ("first_name", "code", "minutes", "email")


def _template_text(path: Path) -> str:
    """The template's text, checked: UTF-8, only PLACEHOLDERS, and {code} among them."""
    from string import Formatter

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read mail template {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the mail template {path} is not UTF-8 text") from None
    hint = "use only {first_name}, {code}, {minutes} and {email}; double other braces"
    try:
        names = [field for _, field, _, _ in Formatter().parse(text) if field is not None]
    except ValueError as exc:
        raise ConfigError(f"mail template {path}: {exc}", hint) from None
    unknown = [name for name in names if name not in PLACEHOLDERS]
    if unknown:
        raise ConfigError(f"mail template {path}: unknown placeholder {{{unknown[0]}}}", hint)
    if "code" not in names:
        raise ConfigError(f"mail template {path} has no {{code}}", "the mail must carry the code")
    return text


def compose(config: MailConfig, to: str, first_name: str, code: str, minutes: int) -> EmailMessage:
    # Imported here: settings validation imports this module on every start-up.
    from email.message import EmailMessage
    from email.policy import SMTPUTF8, default
    from email.utils import make_msgid

    template = DEFAULT_BODY if config.template is None else _template_text(config.template)
    fields = {"first_name": first_name, "code": code, "minutes": minutes, "email": to}
    try:
        body = template.format_map(fields)
    except ValueError as exc:  # a bad format spec: {minutes:zz}
        raise ConfigError(f"mail template: {exc}") from None
    recipient = _deliverable(to)
    # A local part that is not ASCII goes as UTF-8 (SMTPUTF8): an RFC 2047 encoded word
    # is not allowed in an address, and the default policy would write one.
    message = EmailMessage(policy=default if recipient.isascii() else SMTPUTF8)
    message["From"] = config.sender
    message["To"] = recipient
    message["Subject"] = config.subject
    message["Message-ID"] = make_msgid(domain="regctl")
    # Quoted-printable: the code stays readable digits in any name's charset (base64 would
    # hide it on the console).
    message.set_content(body, cte="quoted-printable")
    return message


def _deliverable(address: str) -> str:
    """``address`` as every mail server takes it where it can be: an internationalized
    domain in its ASCII form (IDNA 2008, as email-validator makes it: ``straße.de`` is
    ``xn--strae-oqa.de``, not ``strasse.de``), so only a non-ASCII local part needs a
    server with SMTPUTF8."""
    if address.isascii():
        return address
    from email_validator import EmailNotValidError, validate_email

    try:
        ascii_form = validate_email(address, check_deliverability=False).ascii_email
    except EmailNotValidError:  # (stored by something else: the server says what it thinks)
        return address
    return ascii_form or address


def deliver(config: MailConfig, message: EmailMessage, console: IO[str] | None = None) -> None:
    """Send ``message``; raise DeliveryFailed (the code stays valid) or ConfigError."""
    import smtplib
    import ssl

    if config.url == "none":
        return
    if config.url == "console":
        from regctl.text import visible

        out = console or sys.stderr  # a terminal, usually: names in it are data
        out.write("\n".join(visible(line) for line in message.as_string().splitlines()) + "\n")
        out.flush()
        return
    parts = urlsplit(config.url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(
            f"unsupported mail URL scheme {parts.scheme!r}",
            "use smtp://host:port, smtps://host:port, console or none",
        )
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    context = ssl.create_default_context()
    try:
        if parts.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                parts.hostname, parts.port or 465, timeout=config.timeout, context=context
            )
        else:
            client = smtplib.SMTP(parts.hostname, parts.port or 587, timeout=config.timeout)
        # (not `with client`: on Ctrl-C its QUIT would read the reply the interrupted
        # command is owed and raise in place of the interrupt, reported as a failure)
        try:
            if parts.scheme == "smtp":
                client.ehlo()
                if client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                elif user is not None:
                    raise DeliveryFailed(
                        f"mail server {parts.hostname} does not offer STARTTLS; "
                        "refusing to send the password in clear",
                        "use smtps:// or a server with STARTTLS",
                    )
            if user is not None:
                client.login(user, password or "")
            client.send_message(message)
        except BaseException:
            client.close()
            raise
        with contextlib.suppress(OSError, smtplib.SMTPException):  # (sent: that is what counts)
            client.quit()
        client.close()
    except DeliveryFailed:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(
            f"the code was stored but the mail to {message['To']} failed: "
            f"{type(exc).__name__}: {first_line(exc)}",
            "check REGCTL_MAIL_URL, then `regctl resend` the address",
        ) from None
