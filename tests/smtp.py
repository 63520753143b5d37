"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from email import message_from_string
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller


def body_of(message: Message) -> str:
    """A single-part message's body, decoded from its transfer encoding."""
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes), payload
    return payload.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refusing = False  # an outage: every message refused, temporarily
        # A slow server: each message's reply waits for ``release`` (``arrived`` is set
        # when a message is in).
        self.release: threading.Event | None = None
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.release is not None:
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 60)
        if self.refusing:
            return "451 4.3.0 try again later"
        self.messages.append(message_from_string(envelope.content.decode()))
        return "250 OK"

    def code_for(self, email: str) -> str:
        """The code in the newest message to ``email``."""
        for message in reversed(self.messages):
            if message["To"] == email:
                body = body_of(message)
                match = re.search(r"code is (\d+)", body)
                assert match, body
                return match.group(1)
        raise AssertionError(f"no mail to {email}")


class SmtpServer:
    def __init__(self) -> None:
        self.sink = Sink()
        self.port = free_port()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
