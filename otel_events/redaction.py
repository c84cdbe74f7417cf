"""One pass over every piece of content, before it goes anywhere.

The emitter runs outputs, update fields and error messages through ``Content.encode``
once; the JSON text it returns is what the event stream, every subscriber, every sink
and the span attributes all carry. So a redaction applies identically everywhere.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Content", "Redactor", "scrub_secrets"]

#: A user hook: takes a JSON-able value, returns the value to record.
Redactor = Callable[[Any], Any]

_MASK = "[REDACTED]"
# Patterns stay inside a JSON string: none consumes a quote or a backslash.
_SECRET = re.compile(
    r"""
      (?P<bearer>(?i:bearer|basic)\s+)[A-Za-z0-9\-._~+/]{8,}=*
    | (?P<kv>(?<![A-Za-z0-9])(?i:api[_-]?key|apikey|secret|client[_-]?secret|password|passwd|
          access[_-]?token|auth[_-]?token|refresh[_-]?token|token)\\?"?\s*[:=]\s*\\?"?)
          [^"\\\s&,;}]{3,}
    | (?P<url>://[^/\s:@"\\]+:)[^@\s/"\\]+@
    | sk-[A-Za-z0-9_\-]{16,}
    | AKIA[0-9A-Z]{16}
    | gh[pousr]_[A-Za-z0-9]{20,}
    | xox[abprs]-[A-Za-z0-9\-]{10,}
    """,
    re.VERBOSE,
)


# Every pattern above contains one of these (lower-cased): a plain substring test over the
# text is several times cheaper than the regex, and most outputs hold no secret at all.
# GitHub's five token prefixes are tested only when "gh" is there: four tests fewer on
# every clean text.
_TRIGGERS = ("key", "token", "secret", "passw", "bearer", "basic", "://", "sk-", "akia", "xox")
_GITHUB = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")


def _mask(match: re.Match[str]) -> str:
    if match["url"]:
        return f"{match['url']}{_MASK}@"
    return f"{match['bearer'] or match['kv'] or ''}{_MASK}"


def scrub_secrets(text: str) -> str:
    """Mask obvious secrets: API keys, bearer tokens, passwords in URLs and key=value pairs."""
    lowered = text.lower()
    for trigger in _TRIGGERS:
        if trigger in lowered:
            return _SECRET.sub(_mask, text)
    if "gh" in lowered:
        for trigger in _GITHUB:
            if trigger in lowered:
                return _SECRET.sub(_mask, text)
    return text


# Short texts (descriptions, messages, progress notes) repeat: the same step is described
# the same way each time it runs. Scrubbing is a pure function of the text, so each
# distinct short text is scrubbed once; long ones (outputs) are not worth keeping.
_SHORT_TEXT = 256
_scrub_short_text = functools.lru_cache(maxsize=1024)(scrub_secrets)


@dataclass(frozen=True, slots=True)
class Content:
    """What content is recorded, and how.

    ``capture``: record outputs and update fields (off: only their length).
    ``redact``: a hook run on each value before it is encoded.
    ``scrub``: mask obvious secrets in the encoded text.
    ``max_attribute_chars``: longest output put on a span attribute.
    ``max_value_chars``: longest value (an output, a field, a message) an event carries;
    a longer one is recorded as its start and how much was cut. One event must fit what
    a bridge takes in one request (4 MiB by default), or the whole event is refused
    there, and with it the step's completion.
    """

    capture: bool = True
    redact: Redactor | None = None
    scrub: bool = True
    max_attribute_chars: int = 4096
    max_value_chars: int = 2**20

    def encode(self, value: Any) -> str:
        """The value as JSON text, redacted and scrubbed: the one form every reader gets.

        Never raises: a value that cannot be encoded (or a hook that fails) is recorded
        as a short note naming only the error's type, so agent code is not interrupted
        and no unredacted text slips through.
        """
        try:
            if self.redact is not None:
                value = self.redact(value)
            text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except Exception as exc:
            text = orjson.dumps(f"[not recorded: {type(exc).__name__}]").decode()
        if self.scrub:  # the whole text, then the cut: a secret cut in two is still masked
            text = scrub_secrets(text)
        return text if len(text) <= self.max_value_chars else self.cut(text)

    def cut(self, encoded: str) -> str:
        """JSON text as an event carries it: whole up to ``max_value_chars``, else a JSON
        string of its start saying how much was cut (a cut JSON text is no JSON)."""
        if len(encoded) <= self.max_value_chars:
            return encoded
        return orjson.dumps(_cut(encoded, self.max_value_chars)).decode()

    def text(self, value: str) -> str:
        """A plain string (an error message, a description): the hook, then scrubbing."""
        if self.redact is not None:
            try:
                value = str(self.redact(value))
            except Exception as exc:
                value = f"[not recorded: {type(exc).__name__}]"
        if self.scrub:  # the whole text, then the cut (as in ``encode``)
            value = _scrub_short_text(value) if len(value) <= _SHORT_TEXT else scrub_secrets(value)
        # (The test before the call: every step's description passes here.)
        return value if len(value) <= self.max_value_chars else _cut(value, self.max_value_chars)

    def output_attributes(self, encoded: str) -> dict[str, Any]:
        """The span attributes of an encoded output: the output (cut to
        ``max_attribute_chars``) if captured, and its length when the span does not
        carry it whole (every attribute costs the SDK as much again on each span)."""
        if not self.capture:
            return {"otel_events.item.output.length": len(encoded)}
        if len(encoded) <= self.max_attribute_chars:
            return {"otel_events.item.output": encoded}
        return {"otel_events.item.output": self.attribute(encoded),
                "otel_events.item.output.length": len(encoded)}

    def attribute(self, encoded: str) -> str:
        """An encoded value cut to ``max_attribute_chars`` for a span attribute."""
        return _cut(encoded, self.max_attribute_chars)


def _cut(text: str, limit: int) -> str:
    """``text`` whole up to ``limit`` characters, else its start and how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[truncated {len(text) - limit} chars]"
