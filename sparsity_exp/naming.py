"""Short names from many ``key=value`` items (run folders, figure files): whole items are dropped
from the end until the name fits, and ``+N`` says how many were left out. A value is never cut, so
a name never shows a number it did not have (``trainer.steps=2`` for a run of 2000 steps)."""
from __future__ import annotations

import re

# a comma starts a new item only when a key= follows (list values such as [1,2] keep their commas)
_ITEM = re.compile(r",(?=[^,=\[\]]+=)")


def split_items(text: str) -> list[str]:
    return [item for item in _ITEM.split(text) if item]


def shorten_items(text: str, limit: int, sep: str = ",") -> str:
    """``text`` (items joined by commas) within ``limit`` characters by dropping whole items."""
    if len(text) <= limit:
        return text
    items = split_items(text)
    kept: list[str] = []
    for item in items:
        marker = f"{sep}+{len(items) - len(kept) - 1}" if len(kept) + 1 < len(items) else ""
        if len(sep.join([*kept, item]) + marker) > limit:
            break
        kept.append(item)
    left = len(items) - len(kept)
    if not kept:
        return f"+{left}"
    return sep.join(kept) + (f"{sep}+{left}" if left else "")
