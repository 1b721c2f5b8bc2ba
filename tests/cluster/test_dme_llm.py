"""The `llm` selector end to end against a real HTTP server with scripted answers (tests/cluster/dme_fake_llm.py)."""

from __future__ import annotations

import pytest

from cluster.config import DMELLMConfig
from cluster.dme.candidates import Candidate
from cluster.dme.llm_selector import LLMSelector
from cluster.dme.prompt import AnswerError, build_messages, parse_answer
from cluster.dme.selectors import NoneSelector
from tests.cluster.dme_fake_llm import FakeLLM, Reply

CANDIDATES = [
    Candidate("Q1", "Mercury", "the smallest planet of the solar system"),
    Candidate("Q2", "Mercury", "a chemical element, a liquid metal"),
    Candidate("Q3", "Mercury", "a Roman god of messengers"),
]
CONTEXT = "Mercury orbits the sun faster than any other planet."


def llm_selector(url: str, **overrides) -> LLMSelector:
    cfg = DMELLMConfig(url=url, model="scripted", timeout_s=5.0, max_retries=2, backoff_s=0.01, concurrency=4)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return LLMSelector(cfg, fallback=NoneSelector())


def test_prompt_numbers_candidates_and_asks_for_a_number():
    system, user = build_messages("Mercury", CONTEXT, CANDIDATES)
    assert system["role"] == "system" and "only" in system["content"]
    assert "Mention: Mercury" in user["content"] and CONTEXT in user["content"]
    assert "1. Mercury: the smallest planet" in user["content"]
    assert "3. Mercury: a Roman god" in user["content"]
    assert "from 0 to 3" in user["content"]


@pytest.mark.parametrize("answer,expected", [("2", 2), (" 3\n", 3), ("0", 0)])
def test_parse_answer_accepts_one_integer_in_range(answer, expected):
    assert parse_answer(answer, 3) == expected


@pytest.mark.parametrize(
    "answer,reason",
    [
        ("4", "out_of_range"),
        ("The answer is 2", "unparsable"),
        ("2.", "unparsable"),
        ("", "unparsable"),
        ("-1", "unparsable"),
        ("1 or 2", "unparsable"),
    ],
)
def test_parse_answer_rejects_everything_else(answer, reason):
    with pytest.raises(AnswerError) as err:
        parse_answer(answer, 3)
    assert err.value.reason == reason


def test_llm_selector_scripted_answers_and_fallback_counts(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    script = {
        "right": [Reply("1")],
        "second": [Reply("2")],
        "none fits": [Reply("0")],
        "chatty": [Reply("I think it is number 1")],
        "too big": [Reply("7")],
        "flaky": [Reply(status=500), Reply(status=503), Reply("3")],
        "broken": [Reply(status=500)],
        "garbage body": [Reply(malformed_body=True)],
        "refused": [Reply(status=400)],
    }
    with FakeLLM(script) as llm:
        selector = llm_selector(llm.url)
        items = [(mention, CONTEXT, CANDIDATES) for mention in script] + [("lonely", CONTEXT, [])]
        picks = dict(zip([m for m, _, _ in items], selector.select_many(items)))
        calls = dict(llm.calls)
        auth = {r["authorization"] for r in llm.requests}
        models = {r["body"]["model"] for r in llm.requests}

    assert (picks["right"].index, picks["right"].desc) == (0, CANDIDATES[0].description)
    assert picks["second"].index == 1 and picks["second"].reason == "selected"
    assert picks["none fits"].index is None and picks["none fits"].reason == "no_match"
    assert picks["flaky"].index == 2 and calls["flaky"] == 3  # two retried 5xx, then the answer
    assert picks["chatty"].reason == "fallback:unparsable" and picks["chatty"].desc == ""
    assert picks["too big"].reason == "fallback:out_of_range"
    assert picks["broken"].reason == "fallback:http_500" and calls["broken"] == 3  # 1 + max_retries
    assert picks["garbage body"].reason == "fallback:bad_response"
    assert picks["refused"].reason == "fallback:http_400" and calls["refused"] == 1  # 4xx is not retried
    assert picks["lonely"].reason == "no_candidates" and "lonely" not in calls
    assert auth == {"Bearer sk-test"} and models == {"scripted"}

    counters = selector.counters.as_dict()
    assert counters["selected"] == 3 and counters["no_match"] == 1 and counters["no_candidates"] == 1
    assert counters["fell_back"] == {
        "bad_response": 1,
        "http_400": 1,
        "http_500": 1,
        "out_of_range": 1,
        "unparsable": 1,
    }


def test_slow_answer_beyond_timeout_falls_back_and_is_counted():
    with FakeLLM({"slow": [Reply("1", delay_s=3.0)], "quick": [Reply("2")]}) as llm:
        selector = llm_selector(llm.url, timeout_s=0.2, max_retries=1)
        slow, quick = selector.select_many([("slow", CONTEXT, CANDIDATES), ("quick", CONTEXT, CANDIDATES)])
        calls = dict(llm.calls)
    assert slow.reason == "fallback:timeout" and slow.index is None
    assert calls["slow"] == 2  # a timeout is retried like a 5xx
    assert quick.index == 1
    assert selector.counters.fell_back["timeout"] == 1 and selector.counters.selected == 1


def test_bulk_calls_are_bounded_by_the_concurrency_setting():
    script = {f"m{i}": [Reply("1", delay_s=0.2)] for i in range(8)}
    with FakeLLM(script) as llm:
        selector = llm_selector(llm.url, concurrency=3)
        picks = selector.select_many([(m, CONTEXT, CANDIDATES) for m in script])
        most = llm.max_in_flight
    assert [p.index for p in picks] == [0] * 8
    assert 1 <= most <= 3


def test_unreachable_endpoint_falls_back():
    from tests.fixtures import free_port

    selector = llm_selector(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    selection = selector.select("Mercury", CONTEXT, CANDIDATES)
    assert selection.reason == "fallback:connect_error"
    assert selector.counters.fell_back["connect_error"] == 1


def test_llm_selector_needs_a_url():
    with pytest.raises(ValueError, match="dme.llm.url"):
        llm_selector("")
