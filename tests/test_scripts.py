"""Every key a script touches is one it declares in KEYS, so Redis and a Cluster client
can route it, redirect it and migrate its slot (a key built inside a script cannot be)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

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
    bindings = re.findall(rf"local {name} = (.+)", source)
    if bindings:
        return all(_from_keys(b) for b in bindings)
    for function, params in re.findall(r"local function (\w+)\(([^)]*)\)", LIB):
        names = [p.strip() for p in params.split(",")]
        if name in names:
            position = names.index(name)
            calls = [
                m.split(",")[position]
                for p in NAMES
                for m in re.findall(rf"\b{function}\(([^)]*)\)", SCRIPTS.joinpath(p).read_text())
                if not m.startswith(params)  # the definition itself
            ]
            return bool(calls) and all(_from_keys(c) for c in calls)
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
