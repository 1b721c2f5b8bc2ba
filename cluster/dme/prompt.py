"""The LLM prompt for DME and the strict parsing of its answer.

The paper (and its official code, which only reads a precomputed `desc`) does not publish the prompt used to
pick a mention's description (reference section 3); the prompt below is ours. It lists the candidate
descriptions with 1-based numbers and asks for the number alone, or 0 when none fits, so that the answer can be
checked strictly: anything but one integer in range is rejected and the caller falls back.
"""

from __future__ import annotations

import re

from cluster.dme.candidates import Candidate

SYSTEM_PROMPT = (
    "You are an entity disambiguation assistant. You are given a mention, the sentence it appears in, and a "
    "numbered list of candidate entity descriptions. Decide which description describes the entity the mention "
    "refers to in that sentence. Answer with the number of the best matching description only, or 0 if none of "
    "them matches. Do not write anything else."
)

USER_TEMPLATE = (
    "Mention: {mention}\n"
    "Sentence: {context}\n"
    "Candidate descriptions:\n"
    "{numbered}\n"
    "Answer with a single number from 0 to {n}."
)

# Long descriptions are cut so that a prompt with max_candidates entries stays small (tokens cost latency).
MAX_DESC_CHARS = 400
_ANSWER = re.compile(r"\s*(\d{1,6})\s*")


class AnswerError(ValueError):
    """An LLM answer that is not one integer in [0, n]; `reason` is `unparsable` or `out_of_range`."""

    def __init__(self, reason: str, answer: str):
        super().__init__(f"{reason}: {answer[:80]!r}")
        self.reason = reason
        self.answer = answer


def _one_line(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def candidate_line(number: int, candidate: Candidate) -> str:
    """`3. Paris (city): capital of France` — the name helps the LLM, the description is what gets picked."""
    desc = _one_line(candidate.description, MAX_DESC_CHARS) or "(no description)"
    return f"{number}. {_one_line(candidate.name, 200)}: {desc}"


def build_messages(mention: str, context: str, candidates: list[Candidate]) -> list[dict[str, str]]:
    """Chat-completions messages (system + user) for one mention and its numbered candidates."""
    numbered = "\n".join(candidate_line(i + 1, c) for i, c in enumerate(candidates))
    user = USER_TEMPLATE.format(
        mention=_one_line(mention, 300),
        context=_one_line(context, 2000),
        numbered=numbered,
        n=len(candidates),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_answer(answer: str, n_candidates: int) -> int:
    """The chosen 1-based number, or 0 for "none matches"; raises AnswerError for anything else."""
    match = _ANSWER.fullmatch(answer or "")
    if match is None:
        raise AnswerError("unparsable", answer or "")
    number = int(match.group(1))
    if number > n_candidates:
        raise AnswerError("out_of_range", answer)
    return number
