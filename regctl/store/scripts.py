"""Running regctl's Lua scripts: loaded once, called by EVALSHA, on any topology.

A script is sent with its Redis 7 flags (dropped for a Redis 6 server that cannot read
them), loaded again when the server lost it (NOSCRIPT), tried again while the server
cannot serve it (a failover, a migrating slot, too few replicas) within the call's
deadline, and optionally followed by WAIT for replicas on the same connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from regctl.acl import AclUnchecked, missing_commands
from regctl.bridge import pause, settled
from regctl.codec import lua_legend
from regctl.connection import (
    SCRIPT_DENIED,
    Client,
    call_deadline,
    is_cluster,
    script_sender,
    translated,
    translated_errors,
    watcher_of,
)
from regctl.errors import NotReplicated, NotServing, PermissionDenied, RegctlError

if TYPE_CHECKING:
    from redis.commands.core import Script

    from regctl.keys import Keyspace

T = TypeVar("T")

# Scripts that free memory or touch only a few small keys, so a full server must still
# run them (purge, delete, unlock, the purge lock, a rotation's expiry of dead codes):
# Redis 7's allow-oom flag.
ALLOW_OOM = {"lock", "delete", "unlock", "purge_expired", "purge_some", "expire_code"}
# Redis 7 script flags (a first line the server reads): a flagged writing script is
# refused whole on a full server before it starts, instead of failing part-way.
SHEBANGS = {
    **dict.fromkeys(("add", "resend", "verify", "restore", "reindex", "limit"), "#!lua\n"),
    **dict.fromkeys(ALLOW_OOM, "#!lua flags=allow-oom\n"),
}
# A script flushed between loading and running (SCRIPT FLUSH, a failover to a server
# without it) did not run: it is loaded and sent again, this many times at most.
NOSCRIPT_TRIES = 5


# One script call: its keys and its arguments.
Call = tuple[Sequence[str], Sequence[Any]]


def _replies(conn: Any, count: int) -> list[Any]:
    """``count`` replies read from ``conn``; an error reply in its place, as an exception."""
    import redis.exceptions as rex

    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except rex.ResponseError as exc:
            replies.append(exc)
    return replies


def _not_run(reply: Any) -> bool:
    """Whether a pipelined reply says its call did not run (its script flushed, a
    failover, a slot moving): safe and needed to run again."""
    if not isinstance(reply, Exception):
        return False
    return _is_noscript(reply) or isinstance(translated(reply), NotServing)


def _is_noscript(reply: Any) -> bool:
    import redis.exceptions as rex

    return isinstance(reply, rex.NoScriptError)


class ScriptRunner:
    """The scripts of one client; ``keyspace`` gives the layout for naming a denial."""

    def __init__(
        self,
        client: Client,
        keyspace: Callable[[], Keyspace],
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        call_budget_s: float = 5.0,
    ) -> None:
        self.client = client  # (and how a script call is sent on it: the setter)
        self._keyspace = keyspace
        self._scripts: dict[str, Script] = {}
        self._pipelined_once: set[str] = set()
        self._flags_supported = True
        # Durability option: replicas that must acknowledge add/resend/verify (WAIT).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        # How long one call may keep trying while the server cannot serve it (failover,
        # migrating slot): the call's whole deadline, shared with redis-py's retries.
        self.call_budget_s = call_budget_s
        # The Sentinel failover watcher, and the pool it may have to switch (a twin's).
        self._watcher = watcher_of(client)
        self._pool = getattr(client, "connection_pool", None)

    @property
    def client(self) -> Client:
        return self._client

    @client.setter
    def client(self, client: Client) -> None:
        self._client = client
        self._send = script_sender(client)

    @property
    def is_cluster(self) -> bool:
        return is_cluster(self.client)

    def script(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            folder = resources.files("regctl").joinpath("scripts")
            lib, body = (folder.joinpath(f).read_text() for f in ("_lib.lua", f"{name}.lua"))
            flags = SHEBANGS.get(name, "") if self._flags_supported else ""
            source = flags + lua_legend() + lib + body
            script = self._scripts[name] = self.client.register_script(source)
        return script

    def served(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, tried again while the server cannot serve it (a failover, a
        migrating slot, too few replicas), the topology rediscovered between tries,
        until the call's deadline. Nothing of a refused try ran: trying again is safe."""
        with call_deadline(self.call_budget_s) as deadline:
            wait = 0.02
            made: NotReplicated | None = None  # a try that made its change on a primary
            while True:
                try:
                    # (the old master would lose it: wait; an asyncio pool follows the
                    # switch itself: connection._switching_async_pool)
                    if self._watcher is not None and self._watcher.failing_over:
                        raise NotServing("a Sentinel failover is under way")
                    return call(*args)
                except (NotServing, NotReplicated) as exc:  # (a replay of a made change is safe)
                    if isinstance(exc, NotReplicated):
                        made = exc
                    if time.monotonic() + wait >= deadline:
                        # (the last try ran nothing; an earlier one may have changed a
                        # primary: then that is what the caller must know)
                        raise made or exc from None
                    self.rediscover()
                    pause(wait)
                    wait = min(2 * wait, 0.5)

    def rediscover(self) -> None:
        """Forget where the data was: the cluster's slot map, or the Sentinel master
        (its pooled connections are dropped as they come back)."""
        from redis.sentinel import SentinelConnectionPool

        if self.is_cluster:
            with contextlib.suppress(Exception):  # the next try says what is wrong
                settled(self.client.nodes_manager.initialize())
            return
        pool = self._pool
        if isinstance(pool, SentinelConnectionPool):
            pool.reset()  # type: ignore[no-untyped-call]
            return
        from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool

        if isinstance(pool, AsyncSentinelPool):  # (its idle connections to the old master go)
            with contextlib.suppress(Exception):
                settled(pool.get_master_address())  # type: ignore[no-untyped-call]

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.served(self._run_once, name, keys, args)

    def _run_once(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        import redis.exceptions as rex

        script = self._scripts.get(name) or self.script(name)
        try:
            with translated_errors():
                for attempt in range(NOSCRIPT_TRIES):
                    try:
                        return self._send(script.sha, keys, args)
                    except rex.NoScriptError:  # not run: load it, send it again
                        if attempt == NOSCRIPT_TRIES - 1:
                            raise  # (flushed again and again)
                        self.client.script_load(script.script)
        except PermissionDenied as exc:
            raise self._named_denial(exc) from None
        except rex.ResponseError as exc:
            if self._flags_refused(name, exc):
                return self._run_once(name, keys, args)
            raise

    def _flags_refused(self, name: str, exc: Exception) -> bool:
        """Whether ``exc`` is a Redis 6 server failing to compile a script's flag line;
        if so, every script is sent without flags from now on (and the call again)."""
        if name not in SHEBANGS or "near '#'" not in str(exc):
            return False
        self._flags_supported = False
        self._scripts.clear()
        self._pipelined_once.clear()
        return True

    def _named_denial(self, exc: PermissionDenied) -> PermissionDenied:
        """Redis does not say which command a script was denied; ask ACL DRYRUN."""
        if exc.message != SCRIPT_DENIED:
            return exc
        try:
            missing = missing_commands(self.client, self._keyspace())
        except AclUnchecked:
            return exc
        if not missing:
            return exc
        names = ", ".join(m.upper() for m in missing)
        return PermissionDenied(
            f"the Redis user cannot run {names}",
            f"add {' '.join('+' + m for m in missing)} to its ACL (see the README)",
        )

    def write(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, int | None]:
        """A state change; with ``wait_replicas``, followed by WAIT on the same connection.

        Returns the script's reply and how many replicas acknowledged (None: not asked).
        """
        if not self.wait_replicas:
            return self.run(name, keys, args), None
        return self.served(self._write_and_wait, name, keys, args)

    def _write_and_wait(
        self, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> tuple[Any, int]:
        """The script, then WAIT on the same connection: on Cluster, the connection of
        the node that owns the slot now (the slot map is refreshed after a MOVED)."""
        import redis.exceptions as rex

        client = self.client
        if self.is_cluster:
            client = client.get_node_from_key(keys[0]).redis_connection
        for attempt in range(NOSCRIPT_TRIES):
            script = self.script(name)
            try:
                with translated_errors():
                    pipe = client.pipeline(transaction=False)
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                    reply, acked = pipe.execute(raise_on_error=False)
                    if not _is_noscript(reply) or attempt == NOSCRIPT_TRIES - 1:
                        break
                    client.script_load(script.script)  # not run: load it, send it again
            except rex.ResponseError as exc:
                if not self._flags_refused(name, exc):
                    raise
        for result in (reply, acked):
            if isinstance(result, Exception):
                raise translated(result)
        if int(acked) < self.wait_replicas:
            raise NotReplicated(
                f"the change was made on the primary, but only {int(acked)} of "
                f"{self.wait_replicas} replicas acknowledged it within "
                f"{self.wait_timeout_ms} ms: a failover now could undo it",
                "retry the same call once the replicas are back (the library: with the "
                "same token=, which is answered as the first was)",
            )
        return reply, int(acked)

    def run_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """One script over many (keys, args): one pipelined round trip on a single server.

        Each call's reply, in order; a call the server refused (a full server, say)
        gets its RegctlError in its place, so the others' results are not lost.
        redis-py's cluster pipeline refuses EVALSHA, so on Cluster the calls go one
        by one (each to the node that owns its slot).
        """
        if self.is_cluster:
            return [self._reply_or_error(name, keys, args) for keys, args in calls]
        import redis.exceptions as rex

        try:
            with translated_errors():
                replies = list(self._pipelined(name, calls))
        except rex.ResponseError as exc:
            if not self._flags_refused(name, exc):
                raise
            return self.run_many(name, calls)
        return self._settled(name, calls, replies)

    def _settled(self, name: str, calls: Sequence[Call], replies: list[Any]) -> list[Any]:
        """Pipelined replies as ``run_many`` gives them: errors translated, and a call the
        server did not run (its script flushed, a failover) run again, alone."""
        for i, raw in enumerate(replies):
            if _not_run(raw):
                replies[i] = self._reply_or_error(name, *calls[i])  # not run: again, alone
            elif isinstance(raw, Exception):
                replies[i] = translated(raw)
        return replies

    def run_batches(self, name: str, batches: Iterable[Sequence[Call]]) -> Iterator[list[Any]]:
        """``run_many`` over successive batches, each sent before the replies of the one
        before are read: the server runs a batch while the caller prepares the next (one
        batch is pulled ahead). A connection lost meanwhile replays the batches sent and
        unanswered through ``run_many`` (every regctl script is safe to replay), as do
        the calls the server did not run (their script flushed); the batches after
        such a fault go one after the other. When pulling a batch fails (the caller's
        rows), the results of the batches sent come first, then the error. On Cluster,
        and with a Sentinel watcher (writes wait out a failover), batches go through
        ``run_many`` one after the other."""
        import redis.exceptions as rex

        batches = iter(batches)
        if self.is_cluster or self._watcher is not None:
            yield from (self.run_many(name, calls) for calls in batches)
            return
        sha, pool = self._loaded(name), self.client.connection_pool
        with translated_errors():
            conn = pool.get_connection()
        pending: list[Sequence[Call]] = []  # sent, their replies not read yet
        try:
            while True:
                try:
                    calls = next(batches, None)
                except Exception:  # the caller's: report what was stored, then raise
                    held, conn, done, pending = conn, None, pending, []
                    yield from self._drained(name, held, done)
                    raise
                if calls is None:
                    break
                pending.append(calls)
                try:
                    commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
                    conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                    if len(pending) < 2:
                        continue
                    raw = _replies(conn, len(pending[0]))
                except (rex.ConnectionError, rex.TimeoutError):
                    conn.disconnect()
                    held, conn, done, pending = conn, None, pending, []
                    pool.release(held)  # (before the replay, which may need it: a pool of one)
                    yield from (self.run_many(name, calls) for calls in done)
                    break
                if any(_not_run(reply) for reply in raw):  # reruns need the connection back
                    held, conn, done, pending = conn, None, pending, []
                    yield from self._drained(name, held, done, raw)
                    break
                yield self._settled(name, pending.pop(0), raw)
            if conn is not None:
                held, conn, done, pending = conn, None, pending, []
                yield from self._drained(name, held, done)
            yield from (self.run_many(name, calls) for calls in batches)  # (after a fault)
        finally:
            if conn is not None:
                if pending:  # (left with replies unread: no other call may read them)
                    conn.disconnect()
                pool.release(conn)

    def _drained(
        self,
        name: str,
        conn: Any,
        sent: list[Sequence[Call]],
        first: list[Any] | None = None,
    ) -> Iterator[list[Any]]:
        """The results of the batches ``sent`` on ``conn`` (``first``: the first one's
        replies, read already): every reply read and the connection given back before
        any call is run again, alone (a pool of one); a connection lost meanwhile
        replays the batches whose replies did not come."""
        import redis.exceptions as rex

        replies = [first] if first is not None else []
        try:
            for calls in sent[len(replies) :]:
                replies.append(_replies(conn, len(calls)))
        except (rex.ConnectionError, rex.TimeoutError):
            conn.disconnect()
        self.client.connection_pool.release(conn)
        read = sent[: len(replies)]
        yield from (
            self._settled(name, calls, raw) for calls, raw in zip(read, replies, strict=True)
        )
        yield from (self.run_many(name, calls) for calls in sent[len(replies) :])

    def _loaded(self, name: str) -> str:
        """The sha of ``name``'s script, loaded on the server (its flags settled)."""
        import redis.exceptions as rex

        try:
            with translated_errors():
                self.client.script_load(self.script(name).script)
        except rex.ResponseError as exc:
            if not self._flags_refused(name, exc):
                raise
            with translated_errors():
                self.client.script_load(self.script(name).script)
        return str(self.script(name).sha)

    def _pipelined(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> Any:
        script = self.script(name)
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            if name in self._pipelined_once:  # loaded: a flush since is a NOSCRIPT reply
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            else:  # redis-py asks SCRIPT EXISTS first (a round trip) and loads it
                script(keys=list(keys), args=list(args), client=pipe)
        replies = pipe.execute(raise_on_error=False)
        self._pipelined_once.add(name)
        return replies

    def _reply_or_error(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self.run(name, keys, args)
        except RegctlError as exc:
            return exc
