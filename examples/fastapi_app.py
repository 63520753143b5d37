"""A sign-up service on regctl: register, verify, resend and health, all async.

    pip install regctl fastapi uvicorn
    REGCTL_REDIS_URL=redis://localhost:6379/0 REGCTL_CODE_SECRET_FILE=/run/secrets/code \\
    REGCTL_MAIL_URL=smtp://mail.internal:587 uvicorn examples.fastapi_app:app

Every refusal and failure has its HTTP answer (400, 409, 429 with Retry-After, 503),
none is a 500. With ``conceal`` (the default here) the answers do not tell whether
an address is registering: a second sign-up, a resend and a wrong code answer as
for anyone else.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from regctl import (
    AlreadyExists,
    AsyncRegistrationManager,
    CooldownActive,
    InvalidInput,
    Mailer,
    NotFound,
    PendingRegistration,
    RegctlError,
    RegistrationLocked,
    ResendLimitReached,
    VerifyOutcome,
)


class SignUp(BaseModel):
    email: str
    first_name: str
    last_name: str
    password: str


class Confirm(BaseModel):
    email: str
    code: str


class Address(BaseModel):
    email: str


PENDING = {"status": "pending", "detail": "if the address can sign up, a code is on its way"}


def http_answer(exc: RegctlError) -> JSONResponse:
    """A regctl error as its HTTP answer: the client's mistake, a rule, or the service."""
    body = {"error": exc.reason, "detail": exc.message}
    if isinstance(exc, InvalidInput):
        return JSONResponse(body, 400)
    if isinstance(exc, CooldownActive):
        retry = str(math.ceil(exc.retry_after_ms / 1000))
        return JSONResponse(body, 429, headers={"Retry-After": retry})
    if isinstance(exc, ResendLimitReached):
        return JSONResponse(body, 429)
    if isinstance(exc, AlreadyExists | RegistrationLocked):
        return JSONResponse(body, 409)
    if isinstance(exc, NotFound):
        return JSONResponse(body, 404)
    # Redis down, stalled or full, mail not delivered, a setting: the service, not you.
    return JSONResponse(body, 503, headers={"Retry-After": "5"})


def create_app(
    manager: AsyncRegistrationManager,
    mailer: Mailer,
    create_user: Callable[[PendingRegistration], Awaitable[None]],
    *,
    conceal: bool = True,
) -> FastAPI:
    """The service; ``create_user`` makes the account of a verified registration."""
    app = FastAPI(title="sign-up")
    manager.sync.conceal_pending = conceal

    @app.exception_handler(RegctlError)
    async def refused(_request: Request, exc: RegctlError) -> JSONResponse:
        return http_answer(exc)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(map(str, e["loc"][1:])) or "body" for e in exc.errors()})
        detail = f"missing or malformed: {', '.join(fields)}"
        return JSONResponse({"error": "invalid_input", "detail": detail}, 400)

    @app.get("/")
    async def about() -> dict[str, str]:
        return {"service": "sign-up"}  # needs no Redis: answers during an outage too

    @app.post("/register", status_code=202)
    async def register(body: SignUp) -> dict[str, str]:
        added = await manager.add(
            body.email, body.first_name, body.last_name, password=body.password
        )
        if added.send:  # (conceal: nothing to send within an earlier code's cooldown)
            await mailer.asend_code(added.registration, added.code)
        return PENDING

    @app.post("/resend", status_code=202)
    async def resend(body: Address) -> dict[str, str]:
        try:
            resent = await manager.resend(body.email)
        except (NotFound, RegistrationLocked, ResendLimitReached, CooldownActive):
            if not conceal:
                raise
            return PENDING  # whether anyone is registering stays unsaid
        await mailer.asend_code(resent.registration, resent.code)
        return PENDING

    @app.post("/verify")
    async def verify(body: Confirm) -> JSONResponse:
        result = await manager.verify(body.email, body.code)
        if result.outcome is VerifyOutcome.VERIFIED and result.registration is not None:
            await create_user(result.registration)
            return JSONResponse({"status": "verified"}, 200)
        if conceal:
            return JSONResponse({"error": "wrong_or_expired_code"}, 400)
        body_out: dict[str, object] = {"error": result.outcome.value}
        if result.outcome is VerifyOutcome.INVALID_CODE:
            body_out["attempts_left"] = result.attempts_left
        return JSONResponse(body_out, 400)

    @app.get("/health")
    async def health() -> JSONResponse:
        report = await manager.health(timeout=1.0)  # CRITICAL, not a hang, when Redis stalls
        return JSONResponse(report.to_dict(), 200 if report.status != "critical" else 503)

    return app


def _from_settings() -> FastAPI:  # what uvicorn loads
    accounts: dict[str, PendingRegistration] = {}

    async def create_user(registration: PendingRegistration) -> None:
        accounts[registration.identity] = registration  # your users table here

    return create_app(AsyncRegistrationManager.from_settings(), Mailer.from_settings(), create_user)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn examples.fastapi_app:app` builds the app on first use, not at import.
    if name == "app":
        return _from_settings()
    raise AttributeError(name)
