"""Generated blocks in hand-written Markdown: the text between a start and an end marker line is replaced."""
from __future__ import annotations

import re


class MarkerError(ValueError):
    """The file lacks the marker lines, or has them more than once."""


def replace_marked_block(text: str, block: str, source: str, start_marker: str, end_marker: str) -> str:
    """``text`` with the lines between ``start_marker`` and ``end_marker`` replaced by ``block``.

    Markers count only on lines of their own, so prose may quote them; a file with two such sections is
    refused rather than guessed at.
    """
    pattern = re.compile(rf"^{re.escape(start_marker)}$.*?^{re.escape(end_marker)}$", re.MULTILINE | re.DOTALL)
    sections = list(pattern.finditer(text))
    if len(sections) != 1:
        found = "no" if not sections else f"{len(sections)}"
        raise MarkerError(f"{source} has {found} {start_marker} ... {end_marker} sections; it needs exactly one, "
                          "each marker on a line of its own, where the generated block goes")
    section = sections[0]
    return f"{text[:section.start()]}{start_marker}\n{block.rstrip(chr(10))}\n{end_marker}{text[section.end():]}"
