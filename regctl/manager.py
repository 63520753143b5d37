"""The pending-registration manager a backend imports.

It validates input, hashes passwords and codes, and hands one atomic step to its
store. Example (a sign-up endpoint and its verification endpoint)::

    manager = RegistrationManager.from_settings()
    added = manager.add("alice@example.com", "Alice", "Liddell", password="s3cret-pass")
    send_mail(added.registration.email, added.code)        # the only clear copy
    ...
    result = manager.verify("alice@example.com", "123456")
    if result.ok:
        create_user(result.registration)                   # password_hash included
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import heapq
import hmac
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, NamedTuple

from regctl import security
from regctl.bridge import offloaded
from regctl.errors import (
    UNSERVED,
    AlreadyExists,
    ConfigError,
    CooldownActive,
    DamagedRecord,
    DeliveryFailed,
    InvalidInput,
    NotFound,
    NotReplicated,
    NotServing,
    PoolExhausted,
    RateLimited,
    RegctlError,
    RegistrationLocked,
    ResendLimitReached,
    SecretMismatch,
    StoreFull,
    StoreTimeout,
    StoreUnavailable,
    already_exists,
    damaged,
    other_secret,
)
from regctl.keys import digest
from regctl.model import (
    AUDITED,
    MAX_FUNNEL_DAYS,
    Added,
    Filter,
    PendingRegistration,
    Policy,
    Resent,
    SortKey,
    VerifyOutcome,
    VerifyResult,
    check_audited,
)
from regctl.reports import (
    FUNNEL_EVENTS,
    MAX_TOP_DOMAINS,
    BulkResendReport,
    FunnelDay,
    ImportReport,
    PurgeReport,
    Stats,
)
from regctl.store.base import (
    MAX_LOCK_WAIT_S,
    MAX_PURGE_BATCH,
    PAGE,
    PURGE_BATCH,
    Counts,
    NewRegistration,
    Progress,
    Store,
    chunks,
    paired,
)
from regctl.text import duration, is_utf8, plural, visible
from regctl.validation import (
    as_text,
    count_in,
    email_identity,
    identity_of,
    normalize_client_key,
    normalize_email,
    number_in,
    validate_code,
    validate_name,
    validate_password,
)

if TYPE_CHECKING:
    from regctl.diagnostics.health import Health, HealthProbe, Thresholds
    from regctl.settings import Settings


# A batch of an import as read: its size, its lines refused so far (line number, why),
# and its records (with their line number).
_ImportBatch = tuple[int, list[tuple[int, str]], list[tuple[int, PendingRegistration]]]

# A purge holds its lease this long past its last sign of progress.
PURGE_LEASE_MS = 15_000
MAX_TOKEN_LENGTH = 128
# How often an add in conceal_pending mode tries again when the pending registration it
# met was gone before it could answer for it.
CONCEAL_TRIES = 3
# How many of the newest audit entries a filtered look at the trail searches.
AUDIT_SEARCH = 10_000
# How often a manager re-reads the store's code-secret fingerprint (a rotation
# elsewhere is noticed within this time).
SECRET_RECHECK_S = 60.0


class RegistrationManager:
    """Add, read, resend, verify and expire pending registrations."""

    def __init__(
        self,
        store: Store,
        *,
        secret: str | bytes | None,
        policy: Policy | None = None,
        audit_as: str | None = None,
        conceal_pending: bool = False,
    ) -> None:
        """``audit_as`` (say "signup-api@web-3") records every add, resend, verify,
        unlock and delete in the audit trail under that name, with its outcome, so the
        trail answers "who verified alice?" for backend calls too (one more round trip
        per call; none for a call the store could not serve: down, stalled, full).

        ``conceal_pending`` makes ``add`` on an address already pending answer like
        a success, so a sign-up form does not reveal who is registering (see ``add``).
        """
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a regctl Policy, not {type(policy).__name__}")
        self.store = store
        self.policy = policy or Policy()
        self.audit_as = audit_as
        self.conceal_pending = conceal_pending
        self._secret = security.checked_secret(secret)
        self._codes: security.CodeHasher | None = None
        self._secret_checked_at: float | None = None
        self._secret_recorded = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        embedded: bool = False,
        read_only: bool = False,
        audit_as: str | None = None,
        conceal_pending: bool = False,
    ) -> RegistrationManager:
        """A manager on the store the settings name (flags aside: env, .env, config file).

        Everything later calls need is checked here, so a backend fails at start-up:
        the settings, and a usable code secret (unless ``read_only``). With no Redis
        URL configured it raises ConfigError, unless ``embedded`` opts in to the
        managed local ``redis-server`` (which this may then start).
        """
        from regctl.settings import load_settings
        from regctl.target import open_target

        settings = settings or load_settings().settings
        target = open_target(settings, allow_embedded=embedded)
        manager = cls(
            target.store,
            secret=target.secret,
            policy=settings.policy(),
            audit_as=audit_as,
            conceal_pending=conceal_pending,
        )
        if not read_only:
            try:
                manager.codes  # noqa: B018  # raises ConfigError without a usable secret
            except ConfigError:
                manager.close()
                raise
        return manager

    def on(self, store: Store) -> RegistrationManager:
        """A manager like this one (secret, policy, audit name, conceal mode) over
        ``store`` (the same registrations through another client)."""
        return RegistrationManager(
            store,
            secret=self._secret,
            policy=self.policy,
            audit_as=self.audit_as,
            conceal_pending=self.conceal_pending,
        )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> RegistrationManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def codes(self) -> security.CodeHasher:
        """The code hasher, built on first use so read-only work needs no secret."""
        if self._codes is None:
            if not self._secret:
                raise ConfigError(
                    "no code secret is configured",
                    "set REGCTL_CODE_SECRET (or REGCTL_CODE_SECRET_FILE) to the backend's secret",
                )
            self._codes = security.CodeHasher(self._secret)
        return self._codes

    def _codes_of_store(self, *, writing: bool) -> security.CodeHasher:
        """The code hasher, once the store's codes are known to use the same secret.

        The first code written records the secret's fingerprint with the namespace;
        another secret is refused before anything is counted or written, so a
        misconfigured writer cannot lock users out with codes nobody can verify.
        """
        codes = self.codes
        now = time.monotonic()
        stale = self._secret_checked_at is None or now - self._secret_checked_at > SECRET_RECHECK_S
        if stale or (writing and not self._secret_recorded):
            mine = codes.fingerprint()
            stored = self.store.secret_fingerprint(mine if writing else None)
            if stored is not None and stored != mine:
                raise other_secret()
            self._secret_checked_at = now
            self._secret_recorded = stored is not None  # else the next write records it
        return codes

    def secret_matches(self) -> bool | None:
        """Whether the store records this manager's code secret (None: none recorded)."""
        stored = self.store.secret_fingerprint()
        return None if stored is None else stored == self.codes.fingerprint()

    def rotate_secret(self) -> int:
        """Make this manager's secret the store's; return how many pending codes die.

        Codes made with the old secret no longer verify; they expire now (so every
        view says so), and their users ask for a new one.
        """
        fingerprint = self.codes.fingerprint()
        self.store.set_secret_fingerprint(fingerprint)
        self._secret_checked_at = time.monotonic()
        self._secret_recorded = True
        return self.store.expire_codes(fingerprint)

    # --- operations -------------------------------------------------------

    def add(
        self,
        email: str,
        first_name: str,
        last_name: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        token: str | None = None,
        client: str | None = None,
    ) -> Added:
        """Store a new pending registration; return it with its clear code.

        ``token`` identifies this call: a retry with the same token (after a lost
        reply) is answered as the first try was, with the same code. ``client`` (an
        IP, a session) counts one sign-up and one code against that key's limits
        first, and raises RateLimited when either window is full.

        With ``conceal_pending``, an address already pending raises no AlreadyExists:
        a sign-up with the pending registration's own password (its owner again, the
        first mail lost) gets a new code when a resend is allowed, returned as ``code``
        to mail as usual; any other (a stranger's, or within the cooldown, past the cap,
        locked) gets ``send`` False and changes nothing: send nothing, answer the same.
        So no sign-up can make a code confirm a password the mailbox's owner did not
        choose after it. Checking the password costs one Argon2id verify, which a new
        address pays too (against a stand-in), so the time tells nothing either.
        """
        token = _call_token(token)
        # Checked first: a sign-up refused as invalid counts against no limit.
        form = _Form.checked(email, first_name, last_name, password, password_hash)
        identity = identity_of(form.email)
        self._limit(client, "add", identity, token, "signup", "code")  # before the costly hash
        new, code = self._prepare(form, token=token)
        for _ in range(CONCEAL_TRIES):
            try:
                with _Call(self, "add", new.email, token=token):
                    added = Added(self.store.add(new, self.policy, token), code)
                    self._check_replayed_password(added.registration, new, password)
                if self.conceal_pending and password is not None:  # the same time as a pending one
                    offloaded(security.verify_password, security.STAND_IN_HASH, password)
                return added
            except AlreadyExists:
                if not self.conceal_pending:
                    raise
            concealed = self._add_to_pending(new, password, token)
            if concealed is not None:
                return concealed
        raise already_exists(new.email)  # added, then gone, again and again: give up

    def _check_replayed_password(
        self, stored: PendingRegistration, new: NewRegistration, password: str | None
    ) -> None:
        """A replayed add (its registration holds another try's hash) whose clear
        password is not the first try's is another call with the same token: refused,
        as any add on a pending address is (the replay wrote nothing). A caller that
        hashes each try itself (``password_hash``) is trusted to send the same one."""
        if stored.password_hash == new.password_hash or password is None:
            return
        if not _same_password(stored, password):
            raise already_exists(new.email)

    def _add_to_pending(
        self, new: NewRegistration, password: str | None, token: str
    ) -> Added | None:
        """An add on a pending address, answered as a success (see ``add``); None when
        the address was freed meanwhile."""
        pending = self.get(new.email)
        if pending is None:
            return None
        same = (
            _same_password(pending, password)
            if password is not None
            else hmac.compare_digest(pending.password_hash, new.password_hash)
        )
        if not same:  # (answered with this sign-up's own data: the pending one's stay unsaid)
            return Added(new.created(pending.observed_at, self.policy), "", send=False)
        try:
            resent = self._resend(new.email, new.identity, token, signup=new)
        except (CooldownActive, ResendLimitReached, RegistrationLocked):
            return Added(pending, "", send=False)
        except NotFound:  # verified or expired since: the address is free to add
            return None
        return Added(resent.registration, resent.code)

    def add_many(
        self, rows: Iterable[Mapping[str, str]], *, batch: int = 25
    ) -> Iterator[Added | RegctlError]:
        """Bulk ``add``: each row has email, first_name, last_name and password or
        password_hash. Pipelined in batches (the next one prepared while the server
        stores the last: small batches keep both busy, and each fits in the socket's
        buffer, so sending never waits); yields, in order, an ``Added`` or the error of
        that row (invalid input, already exists), so one bad row stops nothing.

        Read it to the end or close it: one left part-way holds its Redis connection
        until it is closed or collected. Rows are stored in order, except when the
        server loses the script mid-stream (SCRIPT FLUSH, a failover): a batch it did
        not run is sent again after the one behind it, so of two rows for one address
        in consecutive batches the later may be stored and the earlier refused (each
        row's own result says which).
        """
        codes = self._codes_of_store(writing=True)  # once: no round trip between batches
        for prepared, stored in paired(
            ([self._prepared_row(row, codes) for row in chunk] for chunk in chunks(rows, batch)),
            lambda prepared: [(p[0], p[2]) for p in prepared if not isinstance(p, RegctlError)],
            lambda ready: self.store.add_batches(ready, self.policy),
        ):
            results = iter(stored)
            for item in prepared:
                if isinstance(item, RegctlError):
                    yield item
                    continue
                result = next(results)
                yield result if isinstance(result, RegctlError) else Added(result, item[1])

    def _prepared_row(
        self, row: Mapping[str, str], codes: security.CodeHasher
    ) -> tuple[NewRegistration, str, str] | RegctlError:
        """One row of ``add_many``: (registration, clear code, token), or its refusal."""
        token = security.new_token()
        try:
            form = _Form.checked(
                row.get("email", ""),
                row.get("first_name", ""),
                row.get("last_name", ""),
                row.get("password"),
                row.get("password_hash"),
            )
            new, code = self._prepare(form, token=token, codes=codes)
        except InvalidInput as exc:
            return exc
        return new, code, token

    def _prepare(
        self, form: _Form, *, token: str, codes: security.CodeHasher | None = None
    ) -> tuple[NewRegistration, str]:
        """Hash one checked registration; return it with the clear code of ``token``
        (``codes``: the code hasher, checked against the store's secret already)."""
        # (fail on config before the slow hash)
        code_hasher = codes or self._codes_of_store(writing=True)
        pw_hash = form.password_hash or offloaded(security.hash_password, form.password)
        identity = identity_of(form.email)
        # The code is the call's: its token, and what it would store (the same token
        # with other names is another call, and gets another code).
        call = (form.email, form.first_name, form.last_name)
        code = code_hasher.code_for("add", identity, token, self.policy.code_length, call)
        new = NewRegistration(
            email=form.email,
            first_name=form.first_name,
            last_name=form.last_name,
            password_hash=pw_hash,
            code_hash=code_hasher.digest(identity, code),
        )
        return new, code

    def get(self, email: str) -> PendingRegistration | None:
        return self.store.get(email_identity(email))

    def list(
        self,
        selection: Filter | None = None,
        *,
        sort: SortKey | str = SortKey.EXPIRES,
        limit: int | None = None,
        on_damaged: Callable[[str], object] | None = None,
    ) -> Iterator[PendingRegistration]:
        """Stream records; by expiry in constant memory, else sorted (a heap under limit).

        A record regctl cannot read (something else wrote it) is left out, whatever the
        selection, and its key handed to ``on_damaged`` (``on_damaged=keys.append``)."""
        selection = _checked_filter(selection) or Filter()
        if limit is not None:
            count_in(limit, "limit", 0, 2**63)
        try:
            sort = SortKey(sort)
        except ValueError:
            choices = ", ".join(key.value for key in SortKey)
            raise InvalidInput(f"sort must be one of {choices}") from None
        first_page = limit if limit and selection.is_empty else PAGE
        found = self.store.scan(first_page, _checked_callback(on_damaged))
        rows = (r for r in found if selection.matches(r))
        if sort is SortKey.EXPIRES:
            return islice(rows, limit)
        newest = sort is SortKey.NEWEST

        def created(r: PendingRegistration) -> tuple[int, str]:
            return (r.created_at, r.identity)

        if limit is not None:
            pick = heapq.nlargest if newest else heapq.nsmallest
            return iter(pick(limit, rows, key=created))
        return iter(sorted(rows, key=created, reverse=newest))

    def count(self) -> int:
        return self.store.counts().total

    def health(self, timeout: float = 2.0, thresholds: Thresholds | None = None) -> Health:
        """The store's health within ``timeout`` seconds, even while Redis stalls: a
        server down, stalled or refusing is CRITICAL, never an exception.

        ``to_dict()`` is the original ``/health`` JSON plus regctl's checks.

        Example: report = manager.health(timeout=1.0); code = 200 if report.ok else 503
        """
        return self.health_probe.check(timeout, thresholds)

    @functools.cached_property
    def health_probe(self) -> HealthProbe:
        """The probe behind ``health`` (shared by the async manager)."""
        from regctl import __version__
        from regctl.diagnostics.health import HealthProbe

        return HealthProbe(self.store, __version__)

    # --- the audit trail ---------------------------------------------------

    def audit(self, who: str, command: str, target: str, outcome: str) -> None:
        """One entry in the audit trail (stored visible: a name or address with odd
        bytes cannot break the trail or the terminal that shows it); ``command`` is
        one of ``AUDITED``."""
        if command not in AUDITED:  # (a command that writes it must be listed there)
            raise ValueError(f"{command!r} is not in AUDITED")
        entry = {"who": who, "command": command, "target": target, "outcome": outcome}
        self.store.audit_append({k: visible(v) for k, v in entry.items()})

    def audit_trail(
        self, limit: int, *, command: str | None = None, target: str | None = None
    ) -> builtins.list[dict[str, str]]:
        """The newest ``limit`` entries, newest first: of ``command`` only, and whose
        target contains ``target`` (case-insensitively: a search may find more than one
        address's entries, never fewer), when given. A filter looks through the newest
        AUDIT_SEARCH entries."""
        if command is not None:
            check_audited(command)
        needle = target.casefold() if target else None
        entries = self.store.audit_read(AUDIT_SEARCH if command or needle else limit)
        return [
            e
            for e in entries
            if (command is None or e.get("command") == command)
            and (needle is None or needle in e.get("target", "").casefold())
        ][:limit]

    def counts(self) -> Counts:
        return self.store.counts()

    def stats(self, top: int = 5) -> Stats:
        """Totals, top domains and an age histogram over every live record, counted
        where the records are (no record travels on Redis)."""
        return self.store.tally().stats(count_in(top, "top", 0, MAX_TOP_DOMAINS))

    def funnel(self, days: int = 7) -> builtins.list[FunnelDay]:
        """Per server day, newest first: created, codes sent, verified, locked, expired."""
        from datetime import UTC, datetime

        count_in(days, "days", 1, MAX_FUNNEL_DAYS)
        return [
            FunnelDay(
                datetime.fromtimestamp(day * 86_400, UTC).date().isoformat(),
                **{event: counts.get(event, 0) for event in FUNNEL_EVENTS},
            )
            # (every day asked for: the writers may keep counters longer than this
            # manager's policy says)
            for day, counts in self.store.funnel_counts(days)
        ]

    def resend(self, email: str, *, token: str | None = None, client: str | None = None) -> Resent:
        """A new code for a pending registration; the old code stops working.
        ``client`` counts one code against that key's limit first (see ``add``)."""
        token = _call_token(token)
        identity = email_identity(email)
        self._limit(client, "resend", identity, token, "code")
        return self._resend(email, identity, token)

    def _resend(
        self, email: str, identity: str, token: str, signup: NewRegistration | None = None
    ) -> Resent:
        codes = self._codes_of_store(writing=True)
        code = codes.code_for("resend", identity, token, self.policy.code_length)
        code_hash = codes.digest(identity, code)
        with _Call(self, "resend", email, token=token):
            record = self.store.resend(identity, code_hash, self.policy, token, signup)
        return Resent(record, code)

    def _limit(
        self, client: str | None, operation: str, identity: str, token: str, *actions: str
    ) -> None:
        """Count this call in ``client``'s windows of ``actions`` (all or none), or raise
        RateLimited. The hit is the call: its operation, address and token, so a replay
        counts once and a token reused for another address counts again."""
        if client is None:
            return
        limits = {a: n for a in actions if (n := self.policy.client_limit(a))}
        if not limits:
            return
        window = self.policy.client_window_ms
        hit = self.codes.pseudonym(f"{operation}\0{identity}\0{token}")
        wait_ms = self.store.hit_limits(self._client_id(client), limits, window, hit)
        if wait_ms:
            allowed = " and ".join(f"{n} {LIMITED[a]}" for a, n in limits.items())
            raise RateLimited(
                f"too many sign-ups or codes from this client (at most {allowed} per "
                f"{duration(window)}); try again in {duration(-(-wait_ms // 1000) * 1000)}",
                wait_ms,
                "an operator can clear it: regctl limits reset <client>",
            )

    def client_limits(self, client: str) -> dict[str, tuple[int, int, int]]:
        """Per action (signup, code): hits in the window, the limit (0: none), and the
        ms until the oldest hit leaves (0: none)."""
        seen = self.store.client_limits(self._client_id(client), self.policy.client_window_ms)
        return {a: (hits, self.policy.client_limit(a), wait) for a, (hits, wait) in seen.items()}

    def reset_limits(self, client: str) -> bool:
        """Forget a client key's sign-ups and codes; whether it had any."""
        return self.store.reset_limits(self._client_id(client))

    def _client_id(self, client: str) -> str:
        """The name a client key's windows go by: a keyed digest of its canonical form
        (so the store never holds an IP), which needs the code secret."""
        return self.codes.pseudonym(normalize_client_key(client))

    def resend_many(
        self,
        selection: Filter,
        *,
        never_resent: bool = False,
        limit: int | None = None,
        per_second: float | None = None,
        dry_run: bool = False,
        deliver: Callable[[Resent], object] | None = None,
        max_failures: int = 3,
    ) -> BulkResendReport:
        """Resend to every registration ``selection`` matches, at most ``per_second``.

        Each resend is the same atomic step as ``resend``: the cooldown and the cap
        are checked by the store, so a stopped run can be rerun without anyone
        getting two codes inside the cooldown (and ``never_resent`` skips those who
        got one). A delivery that raises DeliveryFailed is counted (the code was
        stored: that user is listed in ``undelivered``); after ``max_failures`` in a
        row the run stops (``stopped``), so an outage costs a handful of users. A code
        ``deliver`` sends counts in ``sent``; one made without delivery (no ``deliver``,
        or it returns ``"not_sent"``, as ``Mailer.send_code`` does with mail off) in
        ``not_sent``.
        """
        if limit is not None:
            count_in(limit, "limit", 0, 2**63)
        if per_second is not None and not (
            isinstance(per_second, int | float) and 0 < per_second < math.inf
        ):
            raise InvalidInput("per_second must be a number above 0")
        report = BulkResendReport(dry_run=dry_run)
        failures_in_a_row = 0
        pause = 1.0 / per_second if per_second else 0.0
        next_at = 0.0  # (time.monotonic) when the next code may go: paced between sends

        def left_out(_key: str) -> None:  # (a record something else wrote: counted)
            report.skip(DamagedRecord.reason)

        for reg in self.list(selection, on_damaged=left_out):
            if limit is not None and len(report.recipients) >= limit:
                break  # (a code stored but not delivered counts: it was a new code)
            if never_resent and reg.resend_count:
                continue
            if dry_run:
                refusal = self._resend_refusal(reg)
                if refusal is None:
                    if deliver is None:  # (as the real run will count it)
                        report.not_sent += 1
                    else:
                        report.sent += 1
                    report.recipients.append(reg.email)
                else:
                    report.skip(refusal)
                continue
            time.sleep(max(0.0, next_at - time.monotonic()))
            try:
                resent = self.resend(reg.email)
            except (
                CooldownActive,
                ResendLimitReached,
                RegistrationLocked,
                NotFound,
                InvalidInput,  # an address written past validation: skipped, not fatal
                DamagedRecord,  # (something else wrote it since it was listed)
            ) as exc:
                report.skip(exc.reason)
                continue
            report.recipients.append(reg.email)
            next_at = time.monotonic() + pause
            try:
                if deliver is None or deliver(resent) == "not_sent":
                    report.not_sent += 1
                else:
                    report.sent += 1
                failures_in_a_row = 0
            except DeliveryFailed:
                report.failed += 1
                report.undelivered.append(reg.email)
                failures_in_a_row += 1
                if failures_in_a_row >= max_failures:
                    report.stopped = True
                    break
        return report

    def _resend_refusal(self, reg: PendingRegistration) -> str | None:
        """Why a resend would be refused now, judged from a record (dry runs)."""
        try:
            normalize_email(reg.email)
        except InvalidInput as exc:
            return exc.reason
        if reg.locked:
            return "locked"
        if reg.resend_count >= self.policy.max_resends:
            return "resend_limit"
        if reg.cooldown_left_ms(self.policy):
            return "cooldown"
        return None

    def verify(self, email: str, code: str, *, token: str | None = None) -> VerifyResult:
        """Check a code; on success the record is consumed and returned.

        ``token`` identifies this call: a retry of the same call with the same token
        after a lost reply gets the same VERIFIED answer.
        """
        identity = email_identity(email)
        validate_code(code, self.policy.code_length)
        codes = self._codes_of_store(writing=False)
        candidate = codes.digest(identity, code)
        token = _call_token(token)
        try:
            with _Call(self, "verify", email, token=token) as call:
                result = self.store.verify(identity, candidate, self.policy, token)
                call.outcome = "ok" if result.ok else result.outcome.value  # (as the CLI's)
                return result
        except SecretMismatch as exc:
            if self.store.secret_fingerprint() != codes.fingerprint():
                raise
            # This secret is the store's: the code predates a rotation. It is dead, like
            # an expired one; a resend gives a new one. No attempt was counted.
            return VerifyResult(VerifyOutcome.CODE_EXPIRED, exc.attempts_left)

    def unlock(self, email: str) -> bool:
        with _Call(self, "unlock", email, writes=False) as call:
            done = self.store.unlock(email_identity(email))
            call.outcome = "ok" if done else "not_found"
            return done

    def delete(self, email: str, *, token: str | None = None) -> bool:
        """Remove a registration; True if this call (or an earlier try of it) did."""
        identity = email_identity(email)
        token = _call_token(token)
        with _Call(self, "delete", email, token=token) as call:
            done = self.store.delete(identity, self.policy, token)
            call.outcome = "ok" if done else "not_found"
            return done

    def export(
        self,
        *,
        include_secrets: bool = False,
        on_damaged: Callable[[str], object] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every live record as a plain dict, streamed (see regctl.transfer); the keys of
        the records left out as unreadable go to ``on_damaged``, as in ``list``."""
        from regctl.transfer import export_record

        found = self.store.scan(on_damaged=_checked_callback(on_damaged))
        return (export_record(reg, include_secrets=include_secrets) for reg in found)

    def import_records(
        self,
        lines: Iterable[str | bytes],
        *,
        replace: bool = False,
        dry_run: bool = False,
        batch: int = 25,
        on_progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Restore NDJSON lines of a secrets-included export, streamed in batches.

        ``lines`` are text, or bytes (a file opened in binary mode). Existing
        registrations are kept unless ``replace``; expired ones are skipped; invalid
        lines are counted with their line number and skipped: one that is not UTF-8
        (bytes, or a str with surrogates, as ``errors="surrogateescape"`` reads it), one
        whose code was made with another code secret than this manager's (it could
        never verify), and a second line for an address already read.

        This manager's secret must be the store's; a real import records it as the
        store's when none is, as the first code written does.
        """
        from regctl.transfer import IMPORT_MARGIN_MS, parse_record

        numbered = _numbered(lines)
        report = ImportReport(dry_run=dry_run)
        max_ahead = self.policy.lifetime_ms + IMPORT_MARGIN_MS
        secret = self._codes_of_store(writing=False).fingerprint()
        seen: set[bytes] = set()  # the addresses read (their digests: 16 bytes each)

        def read(chunk: list[tuple[int, str | bytes]]) -> _ImportBatch:
            refused: list[tuple[int, str]] = []
            good: list[tuple[int, PendingRegistration]] = []
            for number, line in chunk:
                try:
                    reg = parse_record(_utf8(line), self.policy)
                except InvalidInput as exc:
                    refused.append((number, exc.message))
                    continue
                tag = security.split_code_hash(reg.code_hash)[0]
                if tag and not secret.startswith(tag):
                    refused.append(
                        (
                            number,
                            "its code was made with another code secret: import with "
                            "the exporting store's REGCTL_CODE_SECRET",
                        )
                    )
                    continue
                read_as = bytes.fromhex(digest(reg.identity))
                if read_as in seen:  # (the first line of an address is the one imported)
                    refused.append((number, f"{reg.email} is on an earlier line too"))
                    continue
                seen.add(read_as)
                good.append((number, reg))
            return len(chunk), refused, good

        stopped_at: list[int] = []  # the line whose store failure stops the import

        def settled(batch: _ImportBatch, statuses: Iterable[str | RegctlError]) -> None:
            size, refused, good = batch
            for (number, reg), status in zip(good, statuses, strict=True):
                # (a full server refuses each line at once: those are counted; when it
                # serves no writes, each line would wait out a deadline of its own)
                if isinstance(status, StoreUnavailable) and not isinstance(status, StoreFull):
                    stopped_at.append(number)
                    raise status
                reason = report.settle(reg.email, status)
                if reason is not None:
                    refused.append((number, reason))
            for number, reason in sorted(refused):  # (in line order, as they were read)
                report.refuse(number, reason)
            if on_progress is not None:
                on_progress(size)

        # Nothing is written (layout, secret) until a line could be restored: a file
        # refused whole, or empty, leaves a fresh store as it was.
        batches = (read(chunk) for chunk in chunks(numbered, batch))
        for first in batches:
            if first[2]:
                break
            settled(first, ())  # every line of it refused: reported now
        else:
            return report
        report.reached_store = True
        try:
            if not dry_run:
                self._codes_of_store(writing=True)  # the importer's secret is the store's now
            for read_batch, statuses in paired(
                chain([first], batches),
                lambda batch: [reg for _n, reg in batch[2]],
                lambda records: self.store.restore_batches(records, replace, dry_run, max_ahead),
            ):
                settled(read_batch, statuses)
        except StoreUnavailable as exc:  # a line's, or a whole batch's (the server gone)
            exc.hint = _import_stopped(stopped_at[0] if stopped_at else None, report.restored)
            raise
        return report

    def purge(
        self,
        selection: Filter | None = None,
        *,
        dry_run: bool = False,
        batch: int = PURGE_BATCH,
        on_progress: Progress | None = None,
        wait: float = 0.0,
        reindex: bool = False,
    ) -> PurgeReport:
        """Remove expired leftovers, and the live records ``selection`` matches.

        A ``Filter()`` with no criteria also walks the index for orphaned entries
        but deletes no live record; ``reindex`` first gives records that lost their
        index entry (eviction) their entry back. Two purges never overlap: the second
        waits up to ``wait`` seconds for the first, then raises LockHeld.
        """
        selection = _checked_filter(selection)  # (all checked before the first removal)
        count_in(batch, "batch", 1, MAX_PURGE_BATCH)
        number_in(wait, "wait", 0, MAX_LOCK_WAIT_S)
        if dry_run:  # changes nothing, so it needs no lock
            report = self.store.purge(selection, self.policy, dry_run, batch, on_progress)
            report.reindexed = self.store.reindex(batch, True) if reindex else 0
            return report
        last_renewal = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last_renewal
            if time.monotonic() - last_renewal > PURGE_LEASE_MS / 3000:
                lease.renew()
                last_renewal = time.monotonic()
            if on_progress is not None:
                on_progress(done, total)

        # (nothing between taking the lease and the try: an interrupt there would
        # leave it taken)
        lease = self.store.lease("purge", PURGE_LEASE_MS, wait)
        try:
            last_renewal = time.monotonic()
            reindexed = self.store.reindex(batch, False) if reindex else 0
            report = self.store.purge(selection, self.policy, False, batch, progress)
            report.reindexed = reindexed
            return report
        finally:
            lease.release()


class _Call:
    """One state change as callers see it: an unknown outcome said plainly (a timeout,
    a connection lost after sending), and, with ``audit_as``, an audit entry with the
    outcome (set by the caller; a failure's reason when it raises). A trail that
    cannot be written never fails the call it describes. A class, not a generator:
    it is on every call's path."""

    __slots__ = ("command", "email", "manager", "outcome", "token", "writes")

    def __init__(
        self,
        manager: RegistrationManager,
        command: str,
        email: str,
        *,
        writes: bool = True,
        token: str | None = None,
    ) -> None:
        self.manager, self.command, self.email, self.writes = manager, command, email, writes
        self.token = token
        self.outcome = "ok"

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and not isinstance(exc, Exception):
            return  # interrupted, cancelled: the outcome is unknown, and nothing is written
        if isinstance(exc, RegctlError):
            self.outcome = exc.reason
        # (not when the store could not serve the call: the entry would wait as long
        # again, and a call has one deadline)
        if self.manager.audit_as is not None and self.outcome not in UNSERVED:
            with contextlib.suppress(RegctlError):
                self.manager.audit(self.manager.audit_as, self.command, self.email, self.outcome)
        if (
            self.writes
            and isinstance(exc, StoreUnavailable)
            # refused before anything ran (NotServing: READONLY, a slot moving...)
            and not isinstance(exc, PoolExhausted | StoreFull | NotServing)
            and not isinstance(exc, NotReplicated)  # made on the primary: it says so itself
            # (a connection refused may follow one lost after sending: unknown too)
            and "nothing of this call" not in exc.message
        ):
            unknown = StoreTimeout(
                f"{exc.message}; the {self.command} of {self.email} may or may not have happened",
                f"check with `regctl inspect {self.email}`; a library call retried with "
                "token= this error's token is answered as the first was",
            )
            unknown.token = self.token
            raise unknown from None


# What each limited action is called in a refusal.
LIMITED = {"signup": "sign-ups", "code": "codes"}


def _import_stopped(line: int | None, restored: int) -> str:
    """The hint of an import that the store stopped (at ``line``, or in a batch)."""
    count = plural(restored, "line")
    where = (
        f"at line {line}, {count} restored before it"
        if line
        else f"with at least {count} restored"  # (the batches in flight may have been too)
    )
    return (
        f"stopped {where}: import the file again once Redis takes writes (the lines "
        "restored are kept, as existing ones)"
    )


def _numbered(lines: Iterable[str | bytes]) -> Iterator[tuple[int, str | bytes]]:
    """The lines of an import that are not blank, numbered from 1 (a line that is not
    text is kept, to be refused as that line); InvalidInput at once for no lines."""
    if isinstance(lines, str | bytes) or not isinstance(lines, Iterable):
        raise InvalidInput(f"lines are an iterable of lines, not {type(lines).__name__}")
    return (
        (n, line)
        for n, line in enumerate(lines, 1)
        if not isinstance(line, str | bytes) or line.strip()
    )


def _utf8(line: str | bytes) -> str:
    """``line`` as text, refused when it held bytes that are no UTF-8 (bytes, or a str
    read with surrogateescape), or is neither."""
    if not isinstance(line, str | bytes):
        raise InvalidInput(f"a line is text or bytes, not {type(line).__name__}")
    if isinstance(line, bytes):
        try:
            return line.decode()
        except UnicodeDecodeError:
            raise InvalidInput("not UTF-8") from None
    if not is_utf8(line):
        raise InvalidInput("not UTF-8")
    return line


def _checked_filter(selection: Filter | None) -> Filter | None:
    """``selection`` if it is a Filter (or None): a library caller may hand over anything."""
    if selection is None or isinstance(selection, Filter):
        return selection
    raise InvalidInput(f"a selection is a Filter, not {type(selection).__name__}")


class _Form(NamedTuple):
    """A sign-up as checked, before anything is sent or hashed: the address normalized,
    the names cleaned, and one of password (the clear one) and password hash. (A tuple:
    every add makes one, and a frozen dataclass costs twice as much to make.)"""

    email: str
    first_name: str
    last_name: str
    password: str
    password_hash: str

    @classmethod
    def checked(
        cls,
        email: str,
        first_name: str,
        last_name: str,
        password: str | None,
        password_hash: str | None,
    ) -> _Form:
        normalized = normalize_email(email)
        first = validate_name(first_name, "first name")
        last = validate_name(last_name, "last name")
        if (password is None) == (password_hash is None):
            raise InvalidInput("give exactly one of password and password_hash")
        if password_hash is not None:
            return cls(normalized, first, last, "", security.check_password_hash(password_hash))
        return cls(normalized, first, last, validate_password(password or ""), "")


def _same_password(stored: PendingRegistration, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was added with: one Argon2id verify,
    off the event loop, of a hash no costlier than regctl takes in (one past that,
    something else wrote: the record is damaged)."""
    try:
        security.check_password_hash(stored.password_hash)
    except InvalidInput as exc:
        raise damaged(stored.email, exc.message) from None
    return offloaded(security.verify_password, stored.password_hash, password)


def _checked_callback(
    on_damaged: Callable[[str], object] | None,
) -> Callable[[str], object] | None:
    """``on_damaged`` if it can be called (or None): a library caller may hand over anything."""
    if on_damaged is None or callable(on_damaged):
        return on_damaged
    raise InvalidInput(f"on_damaged is a function, not {type(on_damaged).__name__}")


def _call_token(token: str | None) -> str:
    """The caller's idempotency token, checked, or a fresh one."""
    if token is None:
        return security.new_token()
    if not (
        0 < len(as_text(token, "a token")) <= MAX_TOKEN_LENGTH
        and token.isascii()
        and token.isprintable()
    ):
        raise InvalidInput(f"a token is 1-{MAX_TOKEN_LENGTH} printable ASCII characters")
    return token
