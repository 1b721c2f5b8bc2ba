"""How mentions and entities are written as text (shared reference section 1, "Inputs as text").

Mention: ``mention [SEP] sentence [SEP] desc``; entity: ``name [SEP] desc``. ``desc`` is the DME output
(reference section 3). When ``desc`` is empty the trailing separator is dropped on both sides, so a record
without a description reads the same way whichever side it is on.
"""

from __future__ import annotations

SEP = " [SEP] "


def _join(*parts: str) -> str:
    """Join the non-empty parts with the separator; leading parts are kept even when empty."""
    head, *tail = parts
    while tail and not (tail[-1] or "").strip():
        tail.pop()
    return SEP.join([head or "", *[p or "" for p in tail]]).strip()


def mention_text(mention: str, context: str, desc: str = "") -> str:
    """``f"{mention} [SEP] {context} [SEP] {desc}"`` (the last part dropped when desc is empty)."""
    return _join(mention, context, desc)


def entity_text(name: str, desc: str = "") -> str:
    """``f"{name} [SEP] {desc}"`` (just the name when desc is empty)."""
    return _join(name, desc)
