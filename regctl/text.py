"""Text shown to people: data made visible, counts with their noun.

Used by the core's messages and by the CLI's renderers alike."""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """Whether ``text`` is text UTF-8 can hold: no lone surrogate (bytes that were no
    UTF-8, read with ``surrogateescape``, or a stray half of a pair)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def visible(text: str) -> str:
    """``text`` with every control, escape, bidi-override and other invisible format
    character shown as an escape (``\\x1b``, ``\\u202e``): data written by others
    can clear a screen, retitle a window or fake a line only if it reaches a terminal
    raw. Printable text, spaces included, is returned as it is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escaped(ch) for ch in text)


def clipped(text: str, longest: int) -> str:
    """``text``, cut to ``longest`` characters with ``...`` if it is longer: data written
    by others may be megabytes long, and a message shows it on one line."""
    return text if len(text) <= longest else text[: longest - 3] + "..."


def _escaped(ch: str) -> str:
    code = ord(ch)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else (f"\\U{code:08x}")
    )


def plural(n: int, noun: str) -> str:
    """``1 code``, ``2 codes``, ``1,204 codes``: a count and its noun, agreed."""
    if n == 1:
        return f"1 {noun}"
    many = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return f"{n:,} {many}"


def duration(ms: int) -> str:
    """Milliseconds as a short human duration: 45s, 12m, 3h05m, 2d4h."""
    seconds = max(0, ms) // 1000
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s" if minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"
