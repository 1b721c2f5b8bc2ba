"""One interface for picking a mention's description, and the counters every selector keeps.

`select(mention, context, candidates) -> Selection` for serving and `select_many(items)` for bulk runs (where
batching the model or overlapping LLM calls pays). Public methods record outcomes in `counters`; the private
`_select_many` does not, so a selector used as another's fallback is not counted twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cluster.dme.candidates import Candidate

# Selection.reason values; a fallback is "fallback:<why>" (why: unparsable, out_of_range, timeout, http_500, ...).
SELECTED = "selected"
NO_MATCH = "no_match"  # the selector looked and judged that no candidate fits (LLM answered 0)
NO_CANDIDATES = "no_candidates"
DISABLED = "disabled"  # the `none` selector
FALLBACK = "fallback:"

Item = tuple[str, str, list[Candidate]]  # (mention, context, candidates)


@dataclass(frozen=True)
class Selection:
    index: int | None  # 0-based position in the candidate list; None = no description chosen
    desc: str  # the chosen description ("" when none)
    reason: str  # SELECTED | NO_MATCH | NO_CANDIDATES | DISABLED | "fallback:<why>"

    def entity_id(self, candidates: list[Candidate]) -> str | None:
        return None if self.index is None else candidates[self.index].entity_id


def chosen(candidates: list[Candidate], index: int | None, reason: str = SELECTED) -> Selection:
    if index is None:
        return Selection(None, "", reason)
    return Selection(index, candidates[index].description, reason)


@dataclass
class DMECounters:
    """How selections came about; `fell_back` is keyed by reason so a flaky endpoint is visible."""

    selected: int = 0
    no_match: int = 0
    no_candidates: int = 0
    disabled: int = 0
    fell_back: Counter = field(default_factory=Counter)

    def record(self, selection: Selection) -> None:
        reason = selection.reason
        if reason.startswith(FALLBACK):
            self.fell_back[reason[len(FALLBACK) :]] += 1
        elif reason == SELECTED:
            self.selected += 1
        elif reason == NO_MATCH:
            self.no_match += 1
        elif reason == NO_CANDIDATES:
            self.no_candidates += 1
        else:
            self.disabled += 1

    def merge(self, other: DMECounters) -> None:
        self.selected += other.selected
        self.no_match += other.no_match
        self.no_candidates += other.no_candidates
        self.disabled += other.disabled
        self.fell_back.update(other.fell_back)

    @property
    def total(self) -> int:
        return (
            self.selected + self.no_match + self.no_candidates + self.disabled + sum(self.fell_back.values())
        )

    def as_dict(self) -> dict:
        return {
            "selected": self.selected,
            "no_match": self.no_match,
            "no_candidates": self.no_candidates,
            "disabled": self.disabled,
            "fell_back": dict(sorted(self.fell_back.items())),
        }


class Selector:
    """Base class: subclasses implement `_select_many` (no counting) and set `name`."""

    name = "base"

    def __init__(self):
        self.counters = DMECounters()

    def _select_many(self, items: list[Item]) -> list[Selection]:
        raise NotImplementedError

    def select_many(self, items: list[Item]) -> list[Selection]:
        selections = self._select_many(items)
        for selection in selections:
            self.counters.record(selection)
        return selections

    def select(self, mention: str, context: str, candidates: list[Candidate]) -> Selection:
        return self.select_many([(mention, context, candidates)])[0]


class NoneSelector(Selector):
    """DME off: every mention gets an empty description (the ablation baseline)."""

    name = "none"

    def _select_many(self, items: list[Item]) -> list[Selection]:
        return [Selection(None, "", DISABLED) for _ in items]
