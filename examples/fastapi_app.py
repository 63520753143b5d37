"""A sign-up service on regctl: register, verify, resend and health, all async.

    pip install regctl fastapi uvicorn
    REGCTL_REDIS_URL=redis://localhost:6379/0 REGCTL_CODE_SECRET_FILE=/run/secrets/code \\
    REGCTL_MAIL_URL=smtp://mail.internal:587 uvicorn examples.fastapi_app:app

Every refusal and failure has its HTTP answer (400, 404, 409, 429 with Retry-After
when waiting helps, 503), none is a 500. Sign-ups and codes are limited per client
address in the same Redis (REGCTL_SIGNUPS_PER_CLIENT and REGCTL_CODES_PER_CLIENT per
REGCTL_CLIENT_WINDOW).
With a manager made with ``conceal_pending=True`` (as here) the answers do not tell
whether an address is registering: a second sign-up, a resend and a wrong code answer
as for anyone else, and the mail goes out after the answer, so its time tells nothing
either (a failed delivery is logged; the user asks for a resend).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from regctl import (
    AlreadyExists,
    AsyncRegistrationManager,
    CooldownActive,
    DeliveryFailed,
    InvalidInput,
    Mailer,
    NotFound,
    PendingRegistration,
    RateLimited,
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
UNAVAILABLE = {"error": "unavailable", "detail": "the service cannot answer now; try again soon"}
PUBLIC_HEALTH = ("status", "timestamp", "version", "redis", "pending_registrations")
PUBLIC_REDIS = ("status", "ping", "connected_clients", "used_memory_human", "uptime_in_seconds")
log = logging.getLogger("signup")


def http_answer(exc: RegctlError) -> JSONResponse:
    """A regctl error as its HTTP answer: the client's mistake, a rule, or the service."""
    body = {"error": exc.reason, "detail": exc.message}
    if isinstance(exc, InvalidInput):
        return JSONResponse(body, 400)
    if isinstance(exc, CooldownActive | RateLimited):
        retry = str(math.ceil(exc.retry_after_ms / 1000))
        return JSONResponse(body, 429, headers={"Retry-After": retry})
    if isinstance(exc, ResendLimitReached):
        return JSONResponse(body, 429)
    if isinstance(exc, AlreadyExists | RegistrationLocked):
        return JSONResponse(body, 409)
    if isinstance(exc, NotFound):
        return JSONResponse(body, 404)
    # Redis down, stalled or full, a setting: the service, not you. Its details (hosts,
    # paths) are for the log, not for anonymous clients.
    log.error("sign-up service unavailable: %s", exc.line())
    return JSONResponse(UNAVAILABLE, 503, headers={"Retry-After": "5"})


def client_of(request: Request) -> str | None:
    """The client key of a request: its address. Behind a proxy, the address it reports
    (uvicorn --proxy-headers). No address (a unix socket without proxy headers): no
    limit, rather than one window every user would share; the log says so, once."""
    if request.client:
        return request.client.host
    _say_unlimited()
    return None


@functools.cache
def _say_unlimited() -> None:
    log.warning(
        "a request without a client address: sign-ups and codes are not limited per "
        "client (behind a proxy, run uvicorn with --proxy-headers)"
    )


def create_app(
    manager: AsyncRegistrationManager,
    mailer: Mailer,
    create_user: Callable[[PendingRegistration], Awaitable[None]],
) -> FastAPI:
    """The service; ``create_user`` makes the account of a verified registration."""
    app = FastAPI(title="sign-up")
    conceal = manager.sync.conceal_pending

    async def mail(registration: PendingRegistration, code: str) -> None:
        try:
            await mailer.asend_code(registration, code)
        except DeliveryFailed as exc:  # the code stays valid: a resend sends another
            log.warning("%s", exc.line())

    @app.exception_handler(RegctlError)
    async def refused(_request: Request, exc: RegctlError) -> JSONResponse:
        return http_answer(exc)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            detail = "the body is not readable JSON"
        else:
            fields = sorted({".".join(map(str, e["loc"][1:])) or "body" for e in exc.errors()})
            detail = f"missing or malformed: {', '.join(fields)}"
        return JSONResponse({"error": "invalid_input", "detail": detail}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def unreadable(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # a body FastAPI could not parse: not JSON, too deep
            detail = "the body is not readable JSON"
            return JSONResponse({"error": "invalid_input", "detail": detail}, 400)
        return await http_exception_handler(request, exc)  # (404, 405: FastAPI's own)

    @app.get("/")
    async def about() -> dict[str, str]:
        return {"service": "sign-up"}  # needs no Redis: answers during an outage too

    @app.post("/register", status_code=202)
    async def register(
        body: SignUp, request: Request, background: BackgroundTasks
    ) -> dict[str, str]:
        added = await manager.add(
            body.email,
            body.first_name,
            body.last_name,
            password=body.password,
            client=client_of(request),
        )
        if added.send:  # (conceal: nothing to send within an earlier code's cooldown)
            background.add_task(mail, added.registration, added.code)
        return PENDING

    @app.post("/resend", status_code=202)
    async def resend(
        body: Address, request: Request, background: BackgroundTasks
    ) -> dict[str, str]:
        try:
            resent = await manager.resend(body.email, client=client_of(request))
        except (NotFound, RegistrationLocked, ResendLimitReached, CooldownActive):
            if not conceal:
                raise
            return PENDING  # whether anyone is registering stays unsaid
        background.add_task(mail, resent.registration, resent.code)
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
        full = report.to_dict()
        if report.status != "ok":
            log.warning("health %s: %s", report.status, full["checks"])
        # The original /health fields, for anyone: the store's hosts, paths, version,
        # errors and exact memory are for the log.
        shown = {key: full[key] for key in PUBLIC_HEALTH}
        shown["redis"] = {key: full["redis"].get(key) for key in PUBLIC_REDIS}
        if conceal:  # a count (or memory) that grows for a new address, not a pending one
            shown["pending_registrations"]["total"] = None
            shown["redis"]["used_memory_human"] = None
        return JSONResponse(shown, 200 if report.status != "critical" else 503)

    return app


@functools.cache  # one app (and one manager, one pool) however often it is asked for
def _from_settings() -> FastAPI:  # what uvicorn loads
    accounts: dict[str, PendingRegistration] = {}

    async def create_user(registration: PendingRegistration) -> None:
        accounts[registration.identity] = registration  # your users table here

    manager = AsyncRegistrationManager.from_settings(conceal_pending=True)
    return create_app(manager, Mailer.from_settings(), create_user)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn examples.fastapi_app:app` builds the app on first use, not at import.
    if name == "app":
        return _from_settings()
    raise AttributeError(name)
