"""examples/fastapi_app.py against a real Redis and a real SMTP server, through httpx:
the answers a sign-up service gives, exactly-once verification, and an outage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.fastapi_app import PENDING, create_app
from regctl import AsyncRegistrationManager, Mailer, PendingRegistration
from regctl.settings import load_settings
from tests.conftest import SECRET
from tests.servers import RedisProcess
from tests.smtp import SmtpServer

PASSWORD = "correct horse battery staple"
SIGN_UP = {
    "email": "ann@example.com",
    "first_name": "Ann",
    "last_name": "Lee",
    "password": PASSWORD,
}

Service = Callable[..., Awaitable[tuple[httpx.AsyncClient, list[PendingRegistration]]]]


def settings_for(url: str, prefix: str, smtp: SmtpServer, **more: object) -> Any:
    values = {"redis_url": url, "prefix": prefix, "code_secret": SECRET, "mail_url": smtp.url}
    return load_settings({**values, **more}, environ={}).settings


@contextlib.asynccontextmanager
async def service(
    url: str,
    prefix: str,
    smtp: SmtpServer,
    *,
    conceal: bool = True,
    address: tuple[str, int] | None = ("127.0.0.1", 123),
    **more: object,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[PendingRegistration]]]:
    settings = settings_for(url, prefix, smtp, **more)
    accounts: list[PendingRegistration] = []

    async def create_user(registration: PendingRegistration) -> None:
        accounts.append(registration)

    manager = AsyncRegistrationManager.from_settings(settings, conceal_pending=conceal)
    app = create_app(manager, Mailer.from_settings(settings), create_user)
    transport = httpx.ASGITransport(app=app, client=address)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://signup") as client:
        yield client, accounts
    await manager.aclose()


def run(test: Callable[..., Awaitable[None]], *args: Any, **kwargs: Any) -> None:
    async def main() -> None:
        async with service(*args, **kwargs) as (client, accounts):
            await test(client, accounts)

    asyncio.run(main())


def test_sign_up_mail_and_verify_make_one_account(redis_proc: RedisProcess, prefix, smtp):
    async def test(client: httpx.AsyncClient, accounts: list[PendingRegistration]) -> None:
        assert (await client.post("/register", json=SIGN_UP)).status_code == 202
        code = smtp.sink.code_for("ann@example.com")
        wrong = await client.post("/verify", json={"email": "ann@example.com", "code": "000000"})
        assert wrong.status_code == 400
        right = await client.post("/verify", json={"email": "ann@example.com", "code": code})
        assert (right.status_code, right.json()) == (200, {"status": "verified"})
        assert [a.email for a in accounts] == ["ann@example.com"]

    run(test, redis_proc.url, prefix, smtp)


JSON_TYPE = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/register", {**SIGN_UP, "password": "short"}),
        ("/register", {**SIGN_UP, "email": "not-an-address"}),
        ("/register", {**SIGN_UP, "first_name": ""}),
        ("/register", {"email": "ann@example.com"}),
        ("/register", ["not", "an", "object"]),
        ("/register", {**SIGN_UP, "password": 12345678}),
        ("/verify", {"email": "ann@example.com", "code": "12ab56"}),
        ("/verify", {"email": "ann@example.com", "code": "１２３４５６"}),
        ("/verify", {"email": "nobody", "code": "123456"}),
        ("/resend", {"email": "x" * 300 + "@example.com"}),
        ("/resend", {}),
        # bodies FastAPI cannot parse: bytes that are not UTF-8, a number past Python's
        # digit limit, nesting past the recursion limit
        ("/resend", b'{"email": "\xff@example.com"}'),
        ("/resend", b'{"email": ' + b"1" * 5000 + b"}"),
        ("/resend", b"[" * 100_000),
    ],
)
def test_bad_input_is_a_400_never_a_500(redis_proc: RedisProcess, prefix, smtp, path, body):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        if isinstance(body, bytes):
            answer = await client.post(path, content=body, headers=JSON_TYPE)
        else:
            answer = await client.post(path, json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid_input"

    run(test, redis_proc.url, prefix, smtp)


def test_answers_do_not_tell_who_is_registering(redis_proc: RedisProcess, prefix, smtp):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        first = await client.post("/register", json=SIGN_UP)
        again = await client.post("/register", json={**SIGN_UP, "password": "another password 1"})
        unknown = await client.post("/resend", json={"email": "nobody@example.com"})
        pending = await client.post("/resend", json={"email": "ann@example.com"})  # cooldown
        answers = {(r.status_code, r.text) for r in (first, again, unknown, pending)}
        assert len(answers) == 1
        assert len(smtp.sink.messages) == 1  # nothing more sent within the cooldown
        guess = {"code": "000000"}
        nobody = await client.post("/verify", json={"email": "nobody@example.com", **guess})
        ann = await client.post("/verify", json={"email": "ann@example.com", **guess})
        assert (nobody.status_code, nobody.text) == (ann.status_code, ann.text)

    run(test, redis_proc.url, prefix, smtp)


def test_without_conceal_refusals_have_their_status(redis_proc: RedisProcess, prefix, smtp):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        await client.post("/register", json=SIGN_UP)
        assert (await client.post("/register", json=SIGN_UP)).status_code == 409
        soon = await client.post("/resend", json={"email": "ann@example.com"})
        assert soon.status_code == 429
        assert 1 <= int(soon.headers["Retry-After"]) <= 60
        unknown = await client.post("/resend", json={"email": "nobody@example.com"})
        assert unknown.status_code == 404
        wrong = await client.post("/verify", json={"email": "ann@example.com", "code": "000000"})
        assert wrong.json() == {"error": "invalid_code", "attempts_left": 4}

    run(test, redis_proc.url, prefix, smtp, conceal=False)


def test_of_50_concurrent_right_codes_one_account_is_made(redis_proc: RedisProcess, prefix, smtp):
    async def test(client: httpx.AsyncClient, accounts: list[PendingRegistration]) -> None:
        await client.post("/register", json=SIGN_UP)
        code = smtp.sink.code_for("ann@example.com")
        confirm = {"email": "ann@example.com", "code": code}
        answers = await asyncio.gather(*(client.post("/verify", json=confirm) for _ in range(50)))
        assert sorted(a.status_code for a in answers) == [200] + [400] * 49
        assert len(accounts) == 1

    run(test, redis_proc.url, prefix, smtp)


@pytest.mark.parametrize("conceal", [True, False])
def test_health_tells_anyone_the_original_fields_and_no_count_that_reveals_a_sign_up(
    redis_proc: RedisProcess, prefix, smtp, conceal: bool
):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        await client.post("/register", json=SIGN_UP)
        shown = (await client.get("/health")).json()
        assert set(shown) == {"status", "timestamp", "version", "redis", "pending_registrations"}
        # (no server version, role, address or exact memory: a byte count grows by a
        # record's size for a new address and not for a pending one)
        assert set(shown["redis"]) == {
            "status",
            "ping",
            "connected_clients",
            "used_memory_human",
            "uptime_in_seconds",
        }
        total = shown["pending_registrations"]["total"]
        assert total is None if conceal else total == 1
        memory = shown["redis"]["used_memory_human"]
        assert memory is None if conceal else memory.endswith(("K", "M"))

    run(test, redis_proc.url, prefix, smtp, conceal=conceal)


def test_a_body_that_is_not_json_is_said_to_be_so(redis_proc: RedisProcess, prefix, smtp):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        answer = await client.post("/register", content=b"{bad", headers=JSON_TYPE)
        assert answer.status_code == 400
        said = {"error": "invalid_input", "detail": "the body is not readable JSON"}
        assert answer.json() == said  # (it said "missing or malformed: 1")

    run(test, redis_proc.url, prefix, smtp)


def test_requests_without_a_client_address_share_no_limit(
    redis_proc: RedisProcess, prefix, smtp, caplog: pytest.LogCaptureFixture
):
    """(A unix socket without proxy headers): no window every user would share, and
    the log says once that the limits per client are off."""

    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        for n in range(3):
            sign_up = {**SIGN_UP, "email": f"user{n}@example.com"}
            assert (await client.post("/register", json=sign_up)).status_code == 202

    run(test, redis_proc.url, prefix, smtp, address=None, signups_per_client=1)
    said = [r for r in caplog.records if "not limited per client" in r.getMessage()]
    assert len(said) == 1


def test_a_stalled_redis_is_a_503_and_other_endpoints_still_answer(tmp_path: Path, smtp):
    proc = RedisProcess(tmp_path / "api").start()

    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        assert (await client.get("/health")).status_code == 200
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        sign_up = asyncio.ensure_future(client.post("/register", json=SIGN_UP))
        about = await client.get("/")  # needs no Redis: answered while the sign-up waits
        assert about.status_code == 200
        assert not sign_up.done()
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["redis"]["ping"] is False
        assert "sock" not in health.text  # where Redis runs is for the log only
        refused = await sign_up
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "sock" not in refused.text  # where Redis runs is for the log only
        assert time.monotonic() - started < 15  # its 1 s deadline, not a hang
        os.kill(proc.pid, signal.SIGCONT)

    try:
        run(test, proc.url, "api", smtp, socket_timeout=1, connect_timeout=1)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.stop()


def test_a_client_over_its_sign_up_limit_gets_429(redis_proc: RedisProcess, prefix, smtp):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        for i in range(2):
            ok = await client.post("/register", json={**SIGN_UP, "email": f"r{i}@example.com"})
            assert ok.status_code == 202
        over = await client.post("/register", json={**SIGN_UP, "email": "r2@example.com"})
        assert over.status_code == 429
        assert over.json()["error"] == "rate_limited"
        assert 1 <= int(over.headers["Retry-After"]) <= 3600
        assert len(smtp.sink.messages) == 2

    run(test, redis_proc.url, prefix, smtp, signups_per_client=2)


def test_a_failed_mail_is_logged_not_answered_and_a_resend_delivers(
    redis_proc: RedisProcess, prefix, smtp, caplog
):
    async def test(client: httpx.AsyncClient, _accounts: list[PendingRegistration]) -> None:
        smtp.sink.refusing = True  # the mail server is out
        answer = await client.post("/register", json=SIGN_UP)
        assert (answer.status_code, answer.json()) == (202, PENDING)  # as for anyone
        assert "the mail to ann@example.com failed" in caplog.text
        smtp.sink.refusing = False
        assert (await client.post("/resend", json={"email": "ann@example.com"})).status_code == 202
        code = smtp.sink.code_for("ann@example.com")
        confirm = {"email": "ann@example.com", "code": code}
        assert (await client.post("/verify", json=confirm)).status_code == 200

    run(test, redis_proc.url, prefix, smtp, resend_cooldown=0)


def test_uvicorn_is_given_one_app_however_often_it_asks(
    monkeypatch: pytest.MonkeyPatch, redis_proc: RedisProcess, prefix: str
):
    """`uvicorn examples.fastapi_app:app`: built on first use, once (one manager, one
    connection pool), not anew at each lookup."""
    import examples.fastapi_app as example

    for name, value in {
        "REGCTL_REDIS_URL": redis_proc.url,
        "REGCTL_PREFIX": prefix,
        "REGCTL_CODE_SECRET": SECRET,
        "REGCTL_MAIL_URL": "none",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        assert example.app is example.app
    finally:
        example._from_settings.cache_clear()
