"""The prompt's history window: append-only (llama.cpp's KV cache is reused), trimmed in one step.

Unit tests of the policy, then the real model: the evaluated prompt stays small while the
conversation grows past the old 16-message window, and the conversation goes on after a trim.
"""

from __future__ import annotations

import copy

import anyio
import pytest

from realtime_pipeline import Conversation, StageContext, Tracer
from realtime_pipeline.conversation import FunctionCall, FunctionCallOutput
from realtime_pipeline.history_window import MESSAGE_OVERHEAD_TOKENS, HistoryWindow, estimate_tokens
from realtime_pipeline.server.history import ServerConversation, SystemNote
from realtime_pipeline.tracing import PROMPT_TOKENS, PROMPT_TOKENS_CACHED, PROMPT_TOKENS_EVALUATED

SYSTEM = {"role": "system", "content": "Be brief."}


def words(n: int) -> str:
    return " ".join(["word"] * n)


def one_token_per_word(text: str) -> int:
    return len(text.split())


def exchange(turn: int, n_words: int = 10) -> list[tuple[object, dict]]:
    return [(object(), {"role": "user", "content": f"q{turn} " + words(n_words - 1)}),
            (object(), {"role": "assistant", "content": f"a{turn} " + words(n_words - 1)})]


def test_the_history_is_append_only_until_the_budget_then_trimmed_in_one_step():
    window = HistoryWindow(budget_tokens=200, count_tokens=one_token_per_word)
    entries: list[tuple[object, dict]] = []
    previous: list[dict] = []
    trims_before = 0
    turns_between_trims = []
    since_trim = 0
    for turn in range(1, 40):
        entries += exchange(turn)
        history = window.select(SYSTEM, entries)
        since_trim += 1
        if window.trims == trims_before:
            assert history[: len(previous)] == previous  # the prefix never changes between trims
        else:
            assert window.trims == trims_before + 1
            assert history[0]["role"] == "user" and history[-1] is entries[-1][1]
            assert window.prompt_tokens(SYSTEM, history) <= 100  # keep_fraction 0.5 of the budget
            turns_between_trims.append(since_trim)
            since_trim = 0
        assert window.prompt_tokens(SYSTEM, history) <= 200
        previous, trims_before = history, window.trims
    # an exchange is 2 × (10 words + role + overhead) = 32 tokens: ~half the budget is freed
    # per trim, so a trim every 3 turns or so, never every turn
    assert window.trims >= 5 and min(turns_between_trims[1:]) >= 3, turns_between_trims


def test_the_current_turn_always_stays_even_over_the_budget():
    window = HistoryWindow(budget_tokens=20, count_tokens=one_token_per_word)
    entries = exchange(1) + [(object(), {"role": "user", "content": words(50)})]
    history = window.select(SYSTEM, entries)
    assert history == [entries[-1][1]]


def test_a_trim_cuts_before_a_user_message_never_inside_a_tool_call():
    window = HistoryWindow(budget_tokens=70, count_tokens=one_token_per_word)
    entries = [
        (object(), {"role": "user", "content": words(10)}),
        (object(), {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
        (object(), {"role": "tool", "tool_call_id": "c", "content": words(10)}),
        (object(), {"role": "assistant", "content": words(10)}),
        (object(), {"role": "user", "content": words(5)}),
    ]
    history = window.select(SYSTEM, entries)
    assert window.trims == 1 and [m["role"] for m in history] == ["user"]


def test_max_messages_keeps_only_the_current_question():
    window = HistoryWindow(max_messages=1)
    entries = exchange(1) + exchange(2)[:1]
    assert window.select(SYSTEM, entries) == [entries[-1][1]]


def test_the_models_tokenizer_and_budget_apply_unless_set_on_the_window():
    window = HistoryWindow()
    window.use_model(lambda text: 1000, 5000)
    assert window.effective_budget_tokens == 5000
    assert window.message_tokens({"role": "user", "content": "hi"}) == 1000 + MESSAGE_OVERHEAD_TOKENS
    explicit = HistoryWindow(budget_tokens=300, count_tokens=one_token_per_word)
    explicit.use_model(lambda text: 1000, 5000)
    assert explicit.effective_budget_tokens == 300
    assert explicit.message_tokens({"role": "user", "content": "a b"}) == 3 + MESSAGE_OVERHEAD_TOKENS
    assert HistoryWindow().message_tokens({"role": "user", "content": "x" * 30}) == estimate_tokens("user\n" + "x" * 30) + MESSAGE_OVERHEAD_TOKENS


@pytest.mark.parametrize("settings", [{"keep_fraction": 1.0}, {"budget_tokens": 0}, {"max_messages": -1}])
def test_bad_settings_are_rejected(settings):
    with pytest.raises(ValueError):
        HistoryWindow(**settings)


def _answer(conversation: Conversation, turn: int, question: str, reply: str) -> None:
    response = conversation.begin_response(turn, question)
    response.add_text(reply)
    conversation.complete_response(response)


def test_the_conversation_prompt_keeps_its_prefix_across_turns_and_trims():
    conversation = Conversation("Be brief.", history_window=HistoryWindow(budget_tokens=120, count_tokens=one_token_per_word))
    previous = conversation.messages()
    for turn in range(1, 13):
        _answer(conversation, turn, f"question {turn} " + words(6), f"answer {turn} " + words(6))
        messages = conversation.messages()
        if conversation.history_window.trims == 0:
            assert messages[: len(previous)] == previous
        assert messages[0] == {"role": "system", "content": "Be brief."} and messages[1]["role"] == "user"
        previous = messages
    assert conversation.history_window.trims >= 1
    assert len(conversation.entries()) == 24  # the history itself keeps everything; only the prompt is trimmed
    # the message cap of before still works, as a cap
    conversation.max_history_messages = 1
    _answer(conversation, 13, "last", "reply")
    conversation.begin_response(14, "now")
    assert [m["content"] for m in conversation.messages()] == ["Be brief.", "now"]


def test_the_server_conversation_folds_system_notes_into_the_system_prompt_within_the_same_budget():
    conversation = ServerConversation("Be brief.", history_window=HistoryWindow(budget_tokens=60, count_tokens=one_token_per_word))
    conversation.history.append(SystemNote("Speak French."))
    _answer(conversation, 1, "hello " + words(20), "hi " + words(20))
    conversation.add_item(FunctionCall(2, "c", "f", "{}"))
    conversation.add_item(FunctionCallOutput(2, "c", "ok"))
    conversation.begin_response(3, "and now?")
    messages = conversation.messages()
    assert messages[0] == {"role": "system", "content": "Be brief.\n\nSpeak French."}
    assert [m["content"] for m in messages[1:]] == ["and now?"]  # trimmed at the last user message
    assert conversation.history_window.trims == 1


# -- on the real model ----------------------------------------------------------------------
class _Sink:
    async def send(self, frame: object) -> None:
        pass


QUESTIONS = ["What is the capital of France?", "Tell me about dogs.", "How do planes fly?", "What is rain?",
             "Name a colour.", "Why is the sky blue?", "What is a cat?", "How big is the moon?"]


async def _talk(llm, conversation: Conversation, tracer: Tracer, turns: int) -> list[dict[str, int]]:
    ctx = StageContext(conversation, tracer)
    counts = []
    for turn in range(1, turns + 1):
        response = conversation.begin_response(turn, QUESTIONS[(turn - 1) % len(QUESTIONS)])
        await llm.generate(ctx, response, _Sink())
        assert response.text.strip(), f"turn {turn}: no reply"
        conversation.complete_response(response)
        counts.append(dict(tracer.turn(turn).counts))
    return counts


def _short_replies(llm):
    view = copy.copy(llm)  # shares the loaded model and its lock, like the server's per-response views
    view.max_tokens = 12
    return view


@pytest.mark.models
def test_a_growing_history_is_read_from_the_kv_cache_not_evaluated_again(llm):
    conversation, tracer = Conversation(), Tracer()
    counts = anyio.run(_talk, _short_replies(llm), conversation, tracer, 11)
    assert len(conversation.messages()) > 16 + 1  # past the old 16-message window
    totals = [c[PROMPT_TOKENS] for c in counts]
    evaluated = [c[PROMPT_TOKENS_EVALUATED] for c in counts]
    assert totals == sorted(totals) and totals[-1] > 3 * totals[0]  # append-only: the prompt only grows
    # each turn evaluates its question and the previous reply (≤ 12 tokens), not the history
    assert max(evaluated[1:]) <= 60, evaluated
    assert all(c[PROMPT_TOKENS_CACHED] + c[PROMPT_TOKENS_EVALUATED] == c[PROMPT_TOKENS] for c in counts)
    assert conversation.history_window.trims == 0


@pytest.mark.models
def test_the_conversation_goes_on_after_the_budget_is_reached(llm):
    window = HistoryWindow(budget_tokens=220)
    conversation, tracer = Conversation(history_window=window), Tracer()
    view = _short_replies(llm)
    counts = anyio.run(_talk, view, conversation, tracer, 12)
    assert window.trims >= 2
    budget_and_reply = window.effective_budget_tokens + 2 * MESSAGE_OVERHEAD_TOKENS
    assert all(c[PROMPT_TOKENS] <= budget_and_reply for c in counts), counts
    messages = conversation.messages()
    assert messages[1]["role"] == "user" and messages[-1]["content"] == conversation.entries()[-1].content
    # the trim turns keep the cached tokens of the messages that stay (context shift)
    assert max(c[PROMPT_TOKENS_EVALUATED] for c in counts[1:]) <= 60, counts
    # without the context shift, a trim turn evaluates the kept history again, and still answers
    view.engine.context_shift = False  # the shared engine: restored below
    try:
        more = anyio.run(_talk, view, Conversation(history_window=HistoryWindow(budget_tokens=220)), Tracer(), 8)
    finally:
        view.engine.context_shift = True
    assert max(c[PROMPT_TOKENS_EVALUATED] for c in more[1:]) > 60
