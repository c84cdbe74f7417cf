"""Secret scrubbing: each pattern is masked, ordinary text is left alone, JSON stays JSON."""

from __future__ import annotations

import json

import pytest

from otel_events.redaction import Content, scrub_secrets


@pytest.mark.parametrize(("text", "secret"), [
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ("key sk-proj-abcdefghijklmnopqrstuvwx", "sk-proj-abcdefghijklmnopqrstuvwx"),
    ("postgres://app:hunter2@db.internal/sales", "hunter2"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ", "ghp_0123456789abcdefghij"),
    # GitHub tokens alone: the prefixes are tested only once "gh" is seen.
    ("cloned with ghs_0123456789abcdefghijABCDEFGHIJ", "ghs_0123456789abcdefghij"),
    ("gho_0123456789abcdefghijABCDEFGHIJ", "gho_0123456789abcdefghij"),
    ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890"),
    ("api_key=abc123secret&x=1", "abc123secret"),
    ("PASSWORD: letmein!", "letmein!"),
])
def test_secrets_are_masked(text: str, secret: str) -> None:
    scrubbed = scrub_secrets(text)
    assert secret not in scrubbed and "[REDACTED]" in scrubbed


def test_ordinary_text_is_untouched() -> None:
    text = "Net revenue by region: EMEA 55.0k. input_tokens=120 max_tokens: 4096 https://a.b/c"
    assert scrub_secrets(text) == text


def test_scrubbing_json_keeps_it_valid() -> None:
    encoded = Content().encode({"password": "hunter2", "nested": {"dsn": "redis://u:p4ss@h:1"},
                                "headers": ["Bearer abcdefghijkl"], "rows": 3})
    decoded = json.loads(encoded)
    assert decoded == {"password": "[REDACTED]", "nested": {"dsn": "redis://u:[REDACTED]@h:1"},
                       "headers": ["Bearer [REDACTED]"], "rows": 3}


def test_scrub_can_be_turned_off_and_attributes_are_cut() -> None:
    content = Content(scrub=False, max_attribute_chars=5)
    assert content.encode("password=x1234") == '"password=x1234"'
    assert content.attribute("abcdefgh") == "abcde...[truncated 3 chars]"
