"""The Redis ACL a regctl user needs, and a check of it (ACL DRYRUN, Redis 7+).

Least privilege: keys under the prefix only, and only these commands::

    ACL SETUSER regctl on >PASSWORD resetkeys ~regctl:* resetchannels -@all +<each command>
"""

from __future__ import annotations

from typing import Any

from regctl.errors import PermissionDenied
from regctl.keys import Keyspace

# Every command regctl sends, directly or from its scripts, with sample arguments for
# ACL DRYRUN ("K" stands for a key under the prefix). The README's ACL rule lists them.
REQUIRED_COMMANDS: dict[str, tuple[str, ...]] = {
    "ping": (),
    "info": (),
    "client|setname": ("regctl",),
    "evalsha": ("0" * 40, "1", "K"),
    "script|load": ("return 1",),
    "script|exists": ("0" * 40,),
    "time": (),
    "exists": ("K",),
    "get": ("K",),
    "set": ("K", "v"),
    "del": ("K",),
    "pexpire": ("K", "1000"),
    "pexpireat": ("K", "1000"),
    "pttl": ("K",),
    "hget": ("K", "f"),
    "hset": ("K", "f", "v"),
    "hsetnx": ("K", "f", "v"),
    "hmget": ("K", "f"),
    "hgetall": ("K",),
    "hincrby": ("K", "f", "1"),
    "zadd": ("K", "1", "m"),
    "zrem": ("K", "m"),
    "zcount": ("K", "0", "1"),
    "zrangebyscore": ("K", "0", "1"),
    "zrange": ("K", "0", "1"),
    "zremrangebyscore": ("K", "0", "1"),
    "zcard": ("K",),
    "zscore": ("K", "m"),
    "scan": ("0",),
    "xadd": ("K", "*", "f", "v"),
    "xrevrange": ("K", "+", "-"),
    "xlen": ("K",),
    "type": ("K",),
}


def setuser_line(prefix: str = "regctl") -> str:
    """The least-privilege ACL SETUSER line (the README shows it, generated)."""
    grants = " ".join(f"+{command}" for command in (*REQUIRED_COMMANDS, "acl|whoami", "acl|dryrun"))
    return f"ACL SETUSER regctl on >PASSWORD resetkeys ~{prefix}:* resetchannels -@all {grants}"


class AclUnchecked(Exception):
    """The server could not tell (no ACL DRYRUN, or not allowed to ask)."""


def missing_commands(client: Any, keyspace: Keyspace) -> list[str]:
    """The commands of REQUIRED_COMMANDS the connected user may not run."""
    from redis.exceptions import ResponseError

    from regctl.connection import translated_errors

    try:
        with translated_errors():
            user = client.execute_command("ACL", "WHOAMI")
            return [
                cmd
                for cmd in REQUIRED_COMMANDS
                if client.execute_command("ACL", "DRYRUN", user, *_dryrun_args(cmd, keyspace))
                != "OK"
            ]
    except PermissionDenied as exc:
        raise AclUnchecked(exc.message) from None
    except ResponseError as exc:  # servers without ACL DRYRUN (< 7.0)
        raise AclUnchecked(str(exc)) from None


def _dryrun_args(cmd: str, ks: Keyspace) -> list[str]:
    return [*cmd.split("|"), *(ks.index(0) if a == "K" else a for a in REQUIRED_COMMANDS[cmd])]
