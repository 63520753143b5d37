"""Every key a script touches is one it declares in KEYS, so Redis and a Cluster client
can route it, redirect it and migrate its slot (a key built inside a script cannot be)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from regctl.codec import FIELDS, decode, encode
from regctl.model import PendingRegistration

SCRIPTS = resources.files("regctl").joinpath("scripts")
NAMES = sorted(p.name for p in SCRIPTS.iterdir() if p.name.endswith(".lua"))
CALL = re.compile(r"redis\.call\('(\w+)',\s*([^,)]+)")
KEYLESS = {"TIME"}
LIB = SCRIPTS.joinpath("_lib.lua").read_text()


def _from_keys(expression: str) -> bool:
    return re.fullmatch(r"KEYS\[[^\]]+\]", expression.strip()) is not None


def _declared(name: str, source: str) -> bool:
    """``name`` (a key argument) is KEYS[...] or a local only ever bound to KEYS[...],
    or a parameter of a _lib function every caller passes KEYS[...] for."""
    if _from_keys(name):
        return True
    if not re.fullmatch(r"\w+", name):
        return False  # a concatenation, an ARGV: a key the script made up
    bindings = [  # local a, b = x, y: the value in the name's place
        values.split(",")[bound.index(name)]
        for names, values in re.findall(r"local ([\w, ]+) = ([^\n]+)", source)
        if name in (bound := [n.strip() for n in names.split(",")])
    ]
    if bindings:
        return all(_from_keys(b) for b in bindings)
    for function, params in re.findall(r"local function (\w+)\(([^)]*)\)", LIB):
        names = [p.strip() for p in params.split(",")]
        if name in names:
            position = names.index(name)
            calls = [
                (m.split(",")[position].strip(), caller)
                for p in NAMES
                for caller in [SCRIPTS.joinpath(p).read_text()]
                for m in re.findall(rf"\b{function}\(([^)]*)\)", caller)
                if not m.startswith(params)  # the definition itself
            ]
            return bool(calls) and all(_declared(c, caller) for c, caller in calls)
    return False


@pytest.mark.parametrize("script", NAMES)
def test_every_key_a_script_touches_is_declared(script: str):
    source = SCRIPTS.joinpath(script).read_text()
    calls = CALL.findall(source)
    for command, key in calls:
        if command.upper() in KEYLESS:
            continue
        assert _declared(key.strip(), source), f"{script}: {command} {key.strip()}"


def test_the_check_catches_a_key_built_inside_a_script():
    built = "local r = redis.call('HGETALL', ARGV[1] .. member)"
    ((_command, key),) = CALL.findall(built)
    assert not _declared(key.strip(), built)
    bound = "local record = ARGV[1] .. d\nredis.call('DEL', record)"
    assert not _declared("record", bound)
    paired = "local index, record = KEYS[1], ARGV[2]\nredis.call('DEL', record)"
    assert not _declared("record", paired)
    assert _declared("index", paired)


@pytest.mark.parametrize("script", NAMES)
def test_scripts_name_record_fields_only_through_the_codecs_legend(script: str):
    source = SCRIPTS.joinpath(script).read_text()
    assert set(re.findall(r"\bF\.(\w+)", source)) <= FIELDS.keys()
    # allowed()'s permission probes carry placeholder names ('f', 'v', 'm'), not fields.
    code = re.sub(r"allowed\(\{.*?\}\}\)", "", source, flags=re.DOTALL)
    code = re.sub(r"--[^\n]*", "", code)
    assert not set(re.findall(r"'(\w+)'", code)) & set(FIELDS.values())


@pytest.mark.parametrize("script", NAMES)
def test_scripts_name_their_arguments(script: str):
    """ARGV[n] only where a local gets its name (loops over a list index ARGV[i])."""
    for line in SCRIPTS.joinpath(script).read_text().splitlines():
        if re.search(r"ARGV\[\d+\]", line):
            assert line.strip().startswith("local "), f"{script}: {line}"


def test_a_record_survives_encoding_and_decoding():
    reg = PendingRegistration(
        email="Ann@Example.com",
        first_name="Ann",
        last_name="Lee",
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        created_at=1_000,
        expires_at=86_401_000,
        code_expires_at=901_000,
        last_sent_at=61_000,  # every number different: a swapped pair shows
        resend_count=2,
        attempts=3,
        locked=True,
        observed_at=5_000,
        schema=7,
        code_hash="ab:cd",
    )
    decoded = decode(encode(reg), 5_000, replicas_acked=4)
    assert decoded == reg
    assert (decoded.code_hash, decoded.replicas_acked) == ("ab:cd", 4)  # (not compared)
    assert sorted(encode(reg)[::2]) == sorted(
        FIELDS[n] for n in FIELDS if n not in ("add_token", "resend_token", "concealed_add")
    )


def test_the_acl_rule_allows_every_command_a_script_runs():
    from regctl.acl import REQUIRED_COMMANDS

    used = {
        command.lower()
        for name in NAMES
        for command, _key in CALL.findall(SCRIPTS.joinpath(name).read_text())
    }
    assert used - set(REQUIRED_COMMANDS) == set()
