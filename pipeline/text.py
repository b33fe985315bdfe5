"""Printing what came from outside: source names, header strings and manifest values are data.

A source may be named ``[/x]bad.mp4`` (rich markup that does not parse: `MarkupError`),
``\\x1b]0;title\\x07.mp4`` (sets the terminal's title) or ``\\x1b[2J.mp4`` (clears the screen). Every
printer shows such strings as text: `printable` escapes control characters (ESC, BEL, line breaks, C1
controls, bidirectional overrides) the way Python writes them in a literal (``\\x1b``), and
`text_console` is the rich console every table and report prints through: it parses no markup and no
emoji codes, and applies the same escaping to every string it renders (line breaks of our own
multi-line text kept). Read side: no Ray, nothing beyond rich, imported lazily.
"""

from __future__ import annotations

from typing import Any


def printable(value: object) -> str:
    """`value` as one line of inert text: every character that is not printable escaped as in a Python
    literal, so a name with a line break stays one line and an escape sequence is shown, not obeyed."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _printable_lines(text: str) -> str:
    """`printable` line by line: our own multi-line text keeps its breaks, nothing else gets through."""
    return "\n".join(printable(line) for line in text.split("\n"))


def markup_text(value: object) -> str:
    """`printable(value)` with rich markup escaped, for the rare string rich must parse as markup."""
    from rich.markup import escape

    return escape(printable(value))


def text_console(**options: Any) -> Any:
    """A rich `Console` for output that holds data: markup and emoji codes off, and every string it
    renders (table cells, titles, printed lines) passed through `printable` line by line."""
    from rich.console import Console

    class TextConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(_printable_lines(text), **kwargs)

    options.setdefault("markup", False)
    options.setdefault("emoji", False)
    return TextConsole(**options)


def format_seconds(seconds: float) -> str:
    """A duration as a clock reading, `m:ss` or `h:mm:ss`: how every progress line shows time."""
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
