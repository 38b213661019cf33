"""The wrk driver's Lua script carries any request body byte for byte."""

from __future__ import annotations

import re

from sentiment.perf.wrk import _lua_string, lua_script


def _lua_decode(literal: str) -> bytes:
    """What Lua makes of a literal with decimal escapes (the only escapes the driver writes)."""
    assert literal[0] == literal[-1] == '"'
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), literal[1:-1]).encode("latin-1")


def test_bodies_survive_as_bytes_in_an_ascii_script():
    for text in ["plain", "é 😀 日本", 'quote " back \\ newline \n tab \t', '{"texts": ["a", "b"]}', "\x00\x7f"]:
        literal = _lua_string(text)
        assert literal.isascii()
        assert _lua_decode(literal) == text.encode()


def test_the_script_sets_headers_and_cycles_the_bodies():
    script = lua_script(["one", "two"], {"Authorization": "Bearer k"})
    assert 'wrk.headers["Authorization"] = "Bearer k"' in script
    assert "bodies[i % #bodies + 1]" in script and "WRK_RESULT" in script
