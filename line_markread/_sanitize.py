"""One rule for text a server sent us before it reaches a log line, a ``MarkFailure`` or the CLI.

A LINE error body, a ``Retry-After`` value or an exception's text can hold
anything the other end chose: CR/LF (forged log lines), ANSI escapes
(rewritten terminals), megabytes, or our own ``Authorization`` header echoed
back.  ``server_text`` redacts the access token (also when the cut below
would leave a prefix of it), escapes control characters and caps the length,
in that order, so that neither the engine nor ``check`` has its own variant.
"""

from __future__ import annotations

TEXT_LIMIT = 200
"""Characters of server-provided text kept (after escaping)."""

REDACTED = "[REDACTED]"


def server_text(text: str, secret: str | None = None, limit: int = TEXT_LIMIT) -> str:
    """*text* made safe to log: *secret* redacted, control characters escaped, at most *limit*.

    The secret is redacted before the cut, so no prefix of it can survive at
    the boundary; escaping comes after redaction so an escaped secret
    (``\\n`` inside it) is still found.
    """
    if secret:
        text = text.replace(secret, REDACTED)
    escaped = "".join(_escape(ch) for ch in text[: limit * 2])
    if len(escaped) > limit:
        escaped = escaped[: limit - 1] + "…"
    return escaped


def _escape(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
