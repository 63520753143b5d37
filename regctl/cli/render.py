"""Records and reports as rich tables, TSV, JSON, NDJSON and CSV.

Functions here return renderables or strings; printing is the CLI's job. rich is
imported only by the functions that build tables, so `--help` and `--version`
never load it. User
data is escaped before it meets rich markup, and no code or hash is ever
rendered (the password hash appears only in JSON of a consumed record, when the
caller asks for it).
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quoted  # (the encoder's own, in C)
from typing import TYPE_CHECKING, Any

from regctl.errors import DamagedRecord
from regctl.model import PendingRegistration, Policy
from regctl.reports import BulkResendReport, ImportReport, PurgeReport
from regctl.text import clipped, duration, plural, visible

if TYPE_CHECKING:
    from rich.table import Table


class Format(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    NDJSON = "ndjson"
    CSV = "csv"
    NAME = "name"


COLUMNS = ("email", "name", "status", "attempts", "resends", "expires_in")
WIDE_COLUMNS = (*COLUMNS, "code_expires_in", "cooldown", "created", "last_sent")


def escape(text: str) -> str:
    """``text`` made safe for a terminal through rich: visible, and never markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(visible(text))


def table(*headers: str, title: str | None = None, show_header: bool = True) -> Table:
    """A borderless table in the house style."""
    from rich.table import Table

    return Table(
        *headers,
        box=None,
        pad_edge=False,
        title=title,
        title_justify="left",
        show_header=show_header,
    )


def timestamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def record_cells(reg: PendingRegistration, policy: Policy, columns: Sequence[str]) -> list[str]:
    """One row of plain strings (not markup) for the given columns."""
    values = {
        "email": reg.email,
        "name": f"{reg.first_name} {reg.last_name}",
        "status": reg.status(),
        "attempts": f"{reg.attempts}/{policy.max_attempts}",
        "resends": f"{reg.resend_count}/{policy.max_resends}",
        "expires_in": duration(reg.ttl_ms),
        "code_expires_in": (
            "expired" if reg.code_expired else duration(reg.code_expires_at - reg.observed_at)
        ),
        "cooldown": duration(reg.cooldown_left_ms(policy)),
        "created": timestamp(reg.created_at),
        "last_sent": timestamp(reg.last_sent_at),
    }
    return [values[c] for c in columns]


def records_table(
    rows: Iterable[PendingRegistration],
    policy: Policy,
    columns: Sequence[str],
    *,
    show_header: bool = True,
) -> Table:
    out = table(*(c.replace("_", " ").upper() for c in columns), show_header=show_header)
    for reg in rows:
        out.add_row(*(escape(cell) for cell in record_cells(reg, policy, columns)))
    return out


def tsv_lines(header: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> Iterator[str]:
    """Tab-separated lines (the header first, if any); tabs and line breaks inside
    values become spaces, and other control characters are shown escaped."""

    def clean(value: str) -> str:
        return visible(value.replace("\t", " ").replace("\n", " ").replace("\r", " "))

    if header is not None:
        yield "\t".join(header)
    for row in rows:
        yield "\t".join(clean(v) for v in row)


class LeftOut:
    """The records a walk left out as unreadable (``on_damaged``): counted, and the
    first few keys kept, so memory stays flat however many there are."""

    SHOWN = 3
    LONGEST = 120  # characters of a key shown (something else may have named it)

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def __call__(self, key: str) -> None:
        self.count += 1
        if len(self.first) < self.SHOWN:
            self.first.append(key)

    def warning(self, what: str) -> str:
        """One line: how many, the first keys, and how to look at one."""
        named = ", ".join(visible(clipped(key, self.LONGEST)) for key in self.first)
        more = f" and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return (
            f"{what}: {plural(self.count, 'record')} regctl cannot read (written by "
            f"something else): {named}{more} — `redis-cli TYPE <key>` and `HGETALL <key>` "
            "show one"
        )


def skipped_damaged(report: BulkResendReport) -> str | None:
    """The warning for the records a bulk resend could not read, if any."""
    n = report.skipped.get(DamagedRecord.reason, 0)
    if not n:
        return None
    return (
        f"skipped {plural(n, 'record')} regctl cannot read (written by something else, "
        "so no selection could be checked on them) — `regctl list` names them"
    )


def record_json(reg: PendingRegistration, policy: Policy, **extra: Any) -> dict[str, Any]:
    data = reg.public_dict()
    data.update(
        attempts_left=reg.attempts_left(policy),
        resends_left=reg.resends_left(policy),
        cooldown_ms=reg.cooldown_left_ms(policy),
        ttl_ms=reg.ttl_ms,
    )
    data.update(extra)
    return data


# record_json's document for list -o ndjson, one line per record, without the dict or
# the encoder's walk of it: a third of the time (a test holds the two equal).
_RECORD_LINE = (
    '{"email":%s,"first_name":%s,"last_name":%s,"status":"%s","created_at":%d,'
    '"expires_at":%d,"code_expires_at":%d,"last_sent_at":%d,"resend_count":%d,'
    '"attempts":%d,"locked":%s,"attempts_left":%d,"resends_left":%d,"cooldown_ms":%d,'
    '"ttl_ms":%d}'
)


def record_line(reg: PendingRegistration, policy: Policy) -> str:
    """``to_json(record_json(reg, policy))``, made at once."""
    text = _RECORD_LINE % (
        _quoted(reg.email),
        _quoted(reg.first_name),
        _quoted(reg.last_name),
        reg.status(),
        reg.created_at,
        reg.expires_at,
        reg.code_expires_at,
        reg.last_sent_at,
        reg.resend_count,
        reg.attempts,
        "true" if reg.locked else "false",
        reg.attempts_left(policy),
        reg.resends_left(policy),
        reg.cooldown_left_ms(policy),
        reg.ttl_ms,
    )
    return text if text.isprintable() else "".join(map(_json_char, text))


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def to_json(data: Any) -> str:
    """Compact JSON; every invisible character (bidi overrides, C1 controls, line
    separators) written as a \\u escape, so the text is exact and safe at a terminal."""
    text = _ENCODE(data)
    return text if text.isprintable() else "".join(map(_json_char, text))


def _json_char(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP: a surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


# A cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A CSV cell safe to open in a spreadsheet: a would-be formula gets a leading
    apostrophe (shown as text, not run), and control characters are made visible."""
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    return visible(text)


def csv_lines(
    header: Sequence[str] | None, rows: Iterable[Sequence[Any]], *, raw: bool = False
) -> Iterator[str]:
    """RFC 4180 CSV (quoted where needed); cells neutralised unless ``raw`` (for
    programs that want the exact values: JSON is the other exact format)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header is not None:
        writer.writerow(header)
        yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row if raw else [csv_cell(v) for v in row])
        yield buffer.getvalue()


def key_value_table(pairs: Iterable[tuple[str, str]], *, title: str | None = None) -> Table:
    """A two-column table of labels and (escaped) values."""
    out = table(title=title, show_header=False)
    out.add_column(style="bold")
    out.add_column()
    for key, value in pairs:
        out.add_row(escape(key), escape(value))
    return out


def inspect_pairs(reg: PendingRegistration, policy: Policy) -> list[tuple[str, str]]:
    """Everything an operator needs about one registration; never a code or hash."""
    cooldown = reg.cooldown_left_ms(policy)
    return [
        ("email", reg.email),
        ("name", f"{reg.first_name} {reg.last_name}"),
        ("status", reg.status()),
        ("attempts", f"{reg.attempts} used, {reg.attempts_left(policy)} left"),
        ("resends", f"{reg.resend_count} used, {reg.resends_left(policy)} left"),
        ("cooldown", f"{duration(cooldown)} left" if cooldown else "none (can resend now)"),
        (
            "code",
            "expired"
            if reg.code_expired
            else f"expires in {duration(reg.code_expires_at - reg.observed_at)}",
        ),
        ("record", f"expires in {duration(reg.ttl_ms)} ({timestamp(reg.expires_at)})"),
        ("created", f"{timestamp(reg.created_at)} ({duration(reg.age_ms)} ago)"),
        (
            "last sent",
            f"{timestamp(reg.last_sent_at)} ({duration(reg.observed_at - reg.last_sent_at)} ago)",
        ),
    ]


# --- reports of whole-store work: one JSON shape and one summary line each ----------


@functools.singledispatch
def report_json(report: object) -> dict[str, Any]:
    """The JSON document of a report (``ok`` first)."""
    raise TypeError(f"no JSON shape for {type(report).__name__}")


@report_json.register
def _purge_json(report: PurgeReport) -> dict[str, Any]:
    return {
        "ok": True,
        "dry_run": report.dry_run,
        "purged": report.total,
        "by_reason": {
            "expired": report.expired,
            "orphan": report.orphans,
            "matched": report.matched,
        },
        "reindexed": report.reindexed,
        "scanned": report.scanned,
    }


@report_json.register
def _import_json(report: ImportReport) -> dict[str, Any]:
    return {
        "ok": not report.invalid,
        "dry_run": report.dry_run,
        "restored": report.restored,
        "existing": report.existing,
        "expired": report.expired,
        "invalid": report.invalid,
        "errors": report.errors,
        "counters_reset": report.reset,
    }


@report_json.register
def _resend_json(report: BulkResendReport) -> dict[str, Any]:
    return {
        "ok": not report.failed,
        "dry_run": report.dry_run,
        "sent": report.sent,
        "not_sent": report.not_sent,
        "failed": report.failed,
        "skipped": report.skipped,
        "recipients": report.recipients,
        "undelivered": report.undelivered,
        "stopped": report.stopped,
    }


@functools.singledispatch
def report_summary(report: object) -> str:
    """The one line that tells people what a report says."""
    raise TypeError(f"no summary for {type(report).__name__}")


@report_summary.register
def _purge_summary(report: PurgeReport) -> str:
    verb = "would purge" if report.dry_run else "purged"
    text = (
        f"{verb} {report.total} (expired {report.expired}, orphans {report.orphans}, "
        f"matched {report.matched})"
    )
    if report.walked:  # only a walk examines live entries; expired ones are found by score
        text += f"; examined {report.scanned} live"
    if report.reindexed:
        text += f"; {'would re-index' if report.dry_run else 're-indexed'} {report.reindexed}"
    return text


@report_summary.register
def _import_summary(report: ImportReport) -> str:
    verb = "would restore" if report.dry_run else "restored"
    return (
        f"{verb} {report.restored}; kept {report.existing} existing; skipped "
        f"{report.expired} expired and {report.invalid} invalid"
    )


@report_summary.register
def _resend_summary(report: BulkResendReport) -> str:
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
    verb = "would resend" if report.dry_run else "resent"
    unsent = f" (not sent: {report.not_sent})" if report.not_sent else ""
    made = report.sent + report.not_sent
    return f"{verb} {made}{unsent}; skipped {skipped or 'none'}; failed {report.failed}"
