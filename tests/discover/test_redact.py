"""Redaction of command lines with the shipped default patterns, and its invariants."""

from __future__ import annotations

import itertools
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.config import CORE_OPTIONS, build_config
from infermeter.discover.redact import (
    DEFAULT_PATTERNS,
    REDACTED,
    check_patterns,
    compile_patterns,
    default_patterns,
    patterns_for,
    redact_cmdline,
)
from infermeter.errors import ConfigError

DEFAULTS = default_patterns()


def test_a_config_left_at_its_default_uses_the_defaults() -> None:
    cfg = build_config(CORE_OPTIONS)
    assert patterns_for(cfg) == DEFAULTS
    assert [p.pattern for p in DEFAULTS] == list(DEFAULT_PATTERNS)
    mine = build_config(CORE_OPTIONS, {"agent": {"redact_patterns": [r"(x)(y)"]}})
    assert [p.pattern for p in patterns_for(mine)] == ["(x)(y)"]
    none = build_config(CORE_OPTIONS, {"agent": {"redact_patterns": []}})
    assert patterns_for(none) == ()


# Each expected line is the input with, by hand, every value after a flag
# naming a key, token, secret or password, every value of a NAME=value word
# naming one, and every URL's password replaced by ***.
CASES = [
    (["serve", "--api-key=sk-123"], ["serve", "--api-key=***"]),
    (["serve", "--api_key", "sk-123"], ["serve", "--api_key", "***"]),
    (["serve", "--hf-token=hf_abc"], ["serve", "--hf-token=***"]),
    (
        ["serve", "--hf-token", "hf_abc", "--port", "8000"],
        ["serve", "--hf-token", "***", "--port", "8000"],
    ),
    (["serve", "--password=hunter2"], ["serve", "--password=***"]),
    (["serve", "--db-passwd", "x"], ["serve", "--db-passwd", "***"]),
    (["serve", "--Client-Secret=abc"], ["serve", "--Client-Secret=***"]),
    # -p is a port as often as a password: too broad to redact.
    (["serve", "-p", "8000"], ["serve", "-p", "8000"]),
    (
        ["env", "OPENAI_API_KEY=sk-x", "python", "serve.py"],
        ["env", "OPENAI_API_KEY=***", "python", "serve.py"],
    ),
    (
        ["env", "DB_PASSWORD=x", "FOO_TOKEN=y", "LANG=C", "x"],
        ["env", "DB_PASSWORD=***", "FOO_TOKEN=***", "LANG=C", "x"],
    ),
    # A flag at the end has no value; one followed by another option neither.
    (["serve", "--token"], ["serve", "--token"]),
    (["serve", "--api-key", "--verbose"], ["serve", "--api-key", "--verbose"]),
    # An empty attached value leaves the next word a positional argument.
    (["serve", "--api-key=", "model.onnx"], ["serve", "--api-key=", "model.onnx"]),
    # One word holding flag and value, and a shell string (a container's entry point).
    (["serve", "--api-key sk-1"], ["serve", "--api-key ***"]),
    (
        ["sh", "-c", "python serve.py --api-key sk-2 HF_TOKEN=hf_1 --port 80"],
        ["sh", "-c", "python serve.py --api-key *** HF_TOKEN=*** --port 80"],
    ),
    # A word that starts NAME=: its value may hold spaces (a passphrase), so
    # all of the rest goes, even when it is a shell command.
    (["sh", "-c", "HF_TOKEN=hf_1 python serve.py"], ["sh", "-c", "HF_TOKEN=***"]),
    (["serve", "--password=correct horse battery"], ["serve", "--password=***"]),
    (["sh", "-c", "serve --api-key"], ["sh", "-c", "serve --api-key"]),
    (["sh", "-c", "serve --api-key", "sk-3"], ["sh", "-c", "serve --api-key", "***"]),
    # A newline in the value does not end the match early.
    (["serve", "--api-key=sk-1\nsk-2"], ["serve", "--api-key=***"]),
    # A value that is itself NAME=secret goes whole.
    (["serve", "--token", "A_KEY=v"], ["serve", "--token", "***"]),
    ([], []),
]


@pytest.mark.parametrize(("words", "expected"), CASES)
def test_default_patterns(words: list[str], expected: list[str]) -> None:
    assert redact_cmdline(words, DEFAULTS) == tuple(expected)


def test_configured_patterns_replace_the_defaults() -> None:
    # A key shape anywhere (no group: the whole match goes) and one group
    # (that group goes); the defaults are not applied any more.
    patterns = compile_patterns([r"sk-[A-Za-z0-9]{8,}", r"(?<=secret:)(\S+)"])
    words = ["serve", "--note", "use sk-ABCDEFGH12 here", "secret:abc", "--api-key=kept"]
    assert redact_cmdline(words, patterns) == (
        "serve",
        "--note",
        "use *** here",
        "secret:***",
        "--api-key=kept",
    )


def test_no_patterns_change_nothing() -> None:
    words = ("serve", "--api-key=sk-1")
    assert redact_cmdline(words, ()) == words


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["(?i)ok", "(unclosed"], "item 1 ('(unclosed') is not a valid regular expression"),
        (["ok", 3], "item 1 must be a string"),
        ("--api-key", "must be a list of regular expressions, not str"),
    ],
)
def test_a_bad_pattern_is_one_config_error_naming_it(raw: object, message: str) -> None:
    problem = check_patterns(raw)
    assert problem is not None and message in problem
    with pytest.raises(ConfigError) as e:
        compile_patterns(raw)
    text = str(e.value)
    assert text.startswith("config key `agent.redact_patterns`: ") and message in text
    assert "\n" not in text
    # The option's own check refuses it when the configuration is read.
    with pytest.raises(ConfigError, match=r"`agent.redact_patterns` in file config: item 0"):
        build_config(CORE_OPTIONS, {"agent": {"redact_patterns": ["(unclosed"]}})


# ----- invariants, over command lines built from the shapes that carry secrets


SECRET = st.text(string.ascii_letters + string.digits + "-_./+=", min_size=1, max_size=12).map(
    lambda s: "S3CR3T" + s
)
KEYWORD = st.sampled_from(["key", "token", "secret", "password", "passwd", "KEY", "Token"])
NAME_PART = st.text(string.ascii_lowercase + "-_.", max_size=6)
PLAIN = st.text(string.ascii_letters + string.digits + "-_./:=", min_size=1, max_size=10).filter(
    lambda s: "S3CR3T" not in s
)


@st.composite
def secret_words(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """One way of passing a secret on a command line: its words, and the secret."""
    secret = draw(SECRET)
    flag = draw(st.sampled_from(["-", "--"])) + draw(NAME_PART) + draw(KEYWORD) + draw(NAME_PART)
    env = draw(st.sampled_from(["OPENAI_API_", "HF_", "DB_", ""])) + draw(
        st.sampled_from(["KEY", "TOKEN", "SECRET", "PASSWORD"])
    )
    shape = draw(st.sampled_from(["attached", "next", "env", "shell"]))
    if shape == "attached":
        return [f"{flag}={secret}"], [secret]
    if shape == "next":
        return [flag, secret], [secret]
    if shape == "env":
        return [f"{env}={secret}"], [secret]
    return [f"serve {flag} {secret} {env}=x{secret}"], [secret]


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    words: list[str] = []
    secrets: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            w, s = draw(secret_words())
            words += w
            secrets += s
        else:
            words.append(draw(PLAIN))
    return words, secrets


ANY_WORDS = st.lists(st.text(max_size=20), max_size=8)


@settings(max_examples=300, deadline=None)
@given(command_lines())
def test_no_secret_survives(line: tuple[list[str], list[str]]) -> None:
    words, secrets = line
    out = redact_cmdline(words, DEFAULTS)
    joined = "\0".join(out)
    for secret in secrets:
        assert secret not in joined, (words, out)


@settings(max_examples=300, deadline=None)
@given(st.one_of(command_lines().map(lambda line: line[0]), ANY_WORDS))
def test_idempotent_and_word_for_word(words: list[str]) -> None:
    once = redact_cmdline(words, DEFAULTS)
    assert len(once) == len(words)
    assert redact_cmdline(once, DEFAULTS) == once


@settings(max_examples=300, deadline=None)
@given(st.one_of(command_lines().map(lambda line: line[0]), ANY_WORDS))
def test_no_pattern_finds_a_value_left(words: list[str]) -> None:
    out = redact_cmdline(words, DEFAULTS)
    for word in out:
        for p in DEFAULTS:
            for m in p.finditer(word):
                assert m.group(2) == REDACTED, (words, out, p.pattern)
    for flag, value in itertools.pairwise(out):
        if any(p.search(flag) for p in DEFAULTS) or re.match(r"--[A-Za-z]", value):
            continue  # a value attached to the flag, or the next word is an option
        for p in DEFAULTS:
            m = p.fullmatch(f"{flag} {value}")
            if m and m.start(2) == len(flag) + 1:
                assert value == REDACTED, (words, out, p.pattern)


@settings(max_examples=200, deadline=None)
@given(st.lists(PLAIN.filter(lambda s: not re.search("(?i)key|token|secret|passw", s)), max_size=8))
def test_words_naming_no_secret_are_kept(words: list[str]) -> None:
    assert redact_cmdline(words, DEFAULTS) == tuple(words)
