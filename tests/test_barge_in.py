"""Barge-in scenarios on fake stages: the user interrupts during generation, synthesis,
playback and between chunks; false interruptions resume; interruptions can be turned off.

Every scenario checks the three promises: the output is silent from the stop on
(nothing of the cancelled response reaches the virtual speaker afterwards), the
history keeps what was heard and is marked interrupted, and the next turn is answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
import numpy as np
import pytest
from fakes import FakeTTS, ScriptedLLM, ScriptedUser, UserTurn, when_played_ms

from realtime_pipeline import (
    Conversation,
    MemoryOutput,
    Pipeline,
    Player,
    ResponseStatus,
    SentenceChunker,
)
from realtime_pipeline.conversation import (
    ResponseDone,
    ResponseInterrupted,
    ResponsePaused,
    ResponseResumed,
)
from realtime_pipeline.frames import SpeechStarted, SpeechStopped, TranscriptFinal
from realtime_pipeline.interruption import InterruptionSettings, has_words
from realtime_pipeline.response import Response

RATE_HZ = 16000
LONG_REPLY = "One two three four five six seven eight, nine ten eleven twelve thirteen. Fourteen fifteen sixteen."
SHORT_REPLY = "Sure, here is the answer."


@dataclass
class Run:
    conversation: Conversation
    llm: ScriptedLLM
    tts: FakeTTS
    output: MemoryOutput
    user: ScriptedUser
    events: list = field(default_factory=list)

    def of(self, kind: type, response: Response) -> list:
        return [e for e in self.events if isinstance(e, kind) and getattr(e, "response", None) is response]


async def run_scenario(turns, *, llm, tts=None, conversation=None, output=None) -> Run:
    conversation = conversation or Conversation()
    tts = tts or FakeTTS(ms_per_char=20)
    output = output or MemoryOutput(RATE_HZ, paced=True)
    user = ScriptedUser(turns)
    run = Run(conversation, llm, tts, output, user)
    conversation.add_listener(run.events.append)
    pipeline = Pipeline([user, llm, SentenceChunker(), tts, Player(output)], conversation=conversation, queue_capacity=8)
    with anyio.fail_after(60):
        await pipeline.run()
    return run


def stop_time_s(run: Run, response: Response) -> float:
    """When the output went silent for ``response``: its pause, or its cancel if it was never paused."""
    paused = run.of(ResponsePaused, response)
    interrupted = run.of(ResponseInterrupted, response)
    assert interrupted, f"{response} was not interrupted"
    return paused[-1].at_s if paused and not run.of(ResponseResumed, response) else interrupted[0].at_s


def assert_barged_in(run: Run, response: Response, next_response: Response) -> str:
    """The checks every barge-in scenario shares; returns what the user heard."""
    assert response.status is ResponseStatus.CANCELLED
    assert response.cancel_reason == "turn_detected"
    # silence from the stop on: nothing of it played after (one sample of rounding in the flush)
    stop_s = stop_time_s(run, response)
    blocks = [b for b in run.output.blocks if b.response_id == response.id]
    assert all(run.output.block_end_s(b) <= stop_s + 1.0 / RATE_HZ + 1e-9 for b in blocks)
    # what the speaker played is exactly what the response counts as played
    assert len(run.output.audio(response.id)) == response.played_samples
    # the history keeps what was heard, marked interrupted
    heard = response.heard_text()
    entry = next(e for e in run.conversation.entries() if e.role == "assistant" and e.turn_id == response.turn_id)
    assert entry.interrupted and entry.content == heard
    assert response.text.split()[: len(heard.split())] == heard.split()
    assert len(heard.split()) < len(response.text.split()) or not response.text
    # each response ended exactly once
    assert len(run.of(ResponseInterrupted, response)) == 1 and not run.of(ResponseDone, response)
    # the next turn was answered and played to the end, with the truncated history in its prompt
    assert next_response.status is ResponseStatus.DONE
    assert np.array_equal(run.output.audio(next_response.id), run.tts.audio(next_response))
    assert len(run.of(ResponseDone, next_response)) == 1
    assistant = [m["content"] for m in run.llm.prompts[next_response] if m["role"] == "assistant"]
    assert assistant == ([heard] if heard else [])
    assert run.conversation.idle
    return heard


@pytest.mark.anyio
async def test_interruption_during_llm_generation_stops_the_llm_at_the_next_token():
    llm = ScriptedLLM([LONG_REPLY.replace(",", "").replace(".", ""), SHORT_REPLY], token_delay_s=0.02)
    turns = [
        UserTurn("tell me a story"),
        UserTurn("stop, what time is it", when=lambda c: llm.generating is not None and llm.tokens_sent[llm.generating] >= 3),
    ]
    run = await run_scenario(turns, llm=llm)
    first, second = llm.responses
    heard = assert_barged_in(run, first, second)
    assert heard == ""
    assert first.played_samples == 0
    assert len(first.text.split()) < len(LONG_REPLY.split())  # generation stopped early


@pytest.mark.anyio
async def test_interruption_during_tts_synthesis_drops_the_chunk_in_flight():
    tts = FakeTTS(ms_per_char=20, synth_s=lambda chunk: 0.5 if chunk.response.turn_id == 1 else 0.0)
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [
        UserTurn("tell me a story"),
        UserTurn("no wait", when=lambda c: tts.in_flight is not None and tts.in_flight.response.turn_id == 1),
    ]
    run = await run_scenario(turns, llm=llm, tts=tts)
    first, second = llm.responses
    heard = assert_barged_in(run, first, second)
    assert heard == ""
    assert any(chunk.response is first and chunk.index == 0 for chunk in tts.dropped)
    assert first not in tts.synthesized


@pytest.mark.anyio
async def test_interruption_during_playback_silences_the_output_and_truncates_the_history():
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [UserTurn("tell me a story"), UserTurn("hold on", when=when_played_ms(400))]
    run = await run_scenario(turns, llm=llm)
    first, second = llm.responses
    heard = assert_barged_in(run, first, second)
    assert heard  # some words were heard, not all of the first chunk
    assert len(heard.split()) < len(first.chunks[0].text.split())
    paused = run.of(ResponsePaused, first)
    assert len(paused) == 1 and paused[0].turn_id == run.user.turn_ids[1]


@pytest.mark.anyio
async def test_interruption_between_chunks_keeps_exactly_the_played_chunk():
    tts = FakeTTS(ms_per_char=10, synth_s=lambda chunk: 0.6 if chunk.response.turn_id == 1 and chunk.index == 1 else 0.0)
    output = MemoryOutput(RATE_HZ, paced=True)

    def between_chunks(c: Conversation) -> bool:
        response = c.active_response
        in_flight = tts.in_flight
        return (
            response is not None
            and in_flight is not None
            and in_flight.response is response
            and in_flight.index == 1
            and len(response.chunks) == 1
            and response.played_samples == response.chunks[0].num_samples
            and time.monotonic() >= output.playing_until_s  # chunk 0 has played out
        )

    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [UserTurn("tell me a story"), UserTurn("enough", when=between_chunks)]
    run = await run_scenario(turns, llm=llm, tts=tts, output=output)
    first, second = llm.responses
    heard = assert_barged_in(run, first, second)
    assert heard == first.chunks[0].text
    assert np.array_equal(run.output.audio(first.id), tts.synthesized[first][0])


@pytest.mark.anyio
async def test_a_partial_transcript_with_words_confirms_the_interruption_before_the_final():
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [
        UserTurn("tell me a story"),
        UserTurn("wait a second", when=when_played_ms(300), partial="wait", silence_ms=200, final_after_ms=200),
    ]
    run = await run_scenario(turns, llm=llm)
    first, second = llm.responses
    assert_barged_in(run, first, second)
    order = [type(e) for e in run.events if getattr(e, "response", None) is first or isinstance(e, TranscriptFinal)]
    assert order.index(ResponseInterrupted) < len(order) - 1 - order[::-1].index(TranscriptFinal)


@pytest.mark.anyio
async def test_a_false_interruption_resumes_from_the_exact_sample_and_plays_everything():
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [UserTurn("tell me a story"), UserTurn("", when=when_played_ms(400), voiced_ms=160, silence_ms=100)]
    run = await run_scenario(turns, llm=llm)
    (first,) = llm.responses
    assert first.status is ResponseStatus.DONE
    assert len(run.of(ResponsePaused, first)) == 1
    resumed = run.of(ResponseResumed, first)
    assert len(resumed) == 1 and resumed[0].reason == "no_words"
    # the flushed tail was played again: the speaker heard the whole reply, once, in order
    assert np.array_equal(run.output.audio(first.id), run.tts.audio(first))
    assert run.conversation.entries()[-1].interrupted is False
    assert run.conversation.entries()[-1].content == LONG_REPLY


@pytest.mark.anyio
async def test_a_false_interruption_without_a_transcript_resumes_after_false_interruption_ms():
    settings = InterruptionSettings(false_interruption_ms=600)
    conversation = Conversation(interruptions=settings)
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    # the "ASR" is slow: the empty final comes 1 s of audio after the sound
    turns = [UserTurn("tell me a story"), UserTurn("", when=when_played_ms(300), voiced_ms=120, final_after_ms=1000)]
    run = await run_scenario(turns, llm=llm, conversation=conversation)
    (first,) = llm.responses
    resumed = run.of(ResponseResumed, first)
    assert len(resumed) == 1 and resumed[0].reason == "timeout"
    assert first.status is ResponseStatus.DONE
    assert np.array_equal(run.output.audio(first.id), run.tts.audio(first))


@pytest.mark.anyio
async def test_speech_shorter_than_min_interruption_ms_does_not_interrupt():
    conversation = Conversation(interruptions=InterruptionSettings(min_interruption_ms=200))
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [UserTurn("tell me a story"), UserTurn("", when=when_played_ms(300), voiced_ms=100)]
    run = await run_scenario(turns, llm=llm, conversation=conversation)
    (first,) = llm.responses
    assert first.status is ResponseStatus.DONE
    assert not run.of(ResponsePaused, first) and not run.of(ResponseInterrupted, first)
    assert np.array_equal(run.output.audio(first.id), run.tts.audio(first))


@pytest.mark.anyio
async def test_without_resume_the_response_is_cancelled_as_soon_as_min_interruption_ms_is_reached():
    conversation = Conversation(interruptions=InterruptionSettings(resume_false_interruption=False))
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [UserTurn("tell me a story"), UserTurn("hmm", when=when_played_ms(300), final_after_ms=200)]
    run = await run_scenario(turns, llm=llm, conversation=conversation)
    first, second = llm.responses
    assert_barged_in(run, first, second)
    assert not run.of(ResponsePaused, first)
    finals = [i for i, e in enumerate(run.events) if isinstance(e, TranscriptFinal) and e.turn_id == run.user.turn_ids[1]]
    interrupted = run.events.index(run.of(ResponseInterrupted, first)[0])
    assert interrupted < finals[0]


@pytest.mark.anyio
async def test_with_interruptions_off_the_reply_plays_to_the_end_and_the_next_turn_is_answered_after():
    conversation = Conversation(allow_interruptions=False)
    llm = ScriptedLLM([LONG_REPLY, SHORT_REPLY])
    turns = [UserTurn("tell me a story"), UserTurn("and then what", when=when_played_ms(300))]
    run = await run_scenario(turns, llm=llm, conversation=conversation)
    first, second = llm.responses
    for response in (first, second):
        assert response.status is ResponseStatus.DONE
        assert np.array_equal(run.output.audio(response.id), run.tts.audio(response))
    assert not run.events or not any(isinstance(e, (ResponsePaused, ResponseInterrupted)) for e in run.events)
    ids = [b.response_id for b in run.output.blocks]
    assert ids.index(second.id) > len(ids) - 1 - ids[::-1].index(first.id)  # played after, not mixed in
    assert {"role": "assistant", "content": LONG_REPLY} in llm.prompts[second]


def test_a_response_begun_while_the_user_talks_is_paused_at_once_and_resumes_without_words():
    conversation = Conversation()
    conversation.turns_answered = True
    events: list = []
    conversation.add_listener(events.append)
    conversation.user_speech_started(SpeechStarted(7, 0))
    conversation.user_speech_progress(7, 200)
    response = conversation.begin_response(6, "the previous question")
    assert response.paused
    conversation.user_speech_stopped(SpeechStopped(7, 200))
    conversation.transcript_final(TranscriptFinal(7, "", 0, 200))
    assert not response.paused and response.status is ResponseStatus.ACTIVE
    assert [type(e) for e in events if isinstance(e, (ResponsePaused, ResponseResumed))] == [ResponsePaused, ResponseResumed]


def test_more_speech_while_paused_keeps_the_response_paused_until_every_turn_is_settled():
    conversation = Conversation()
    conversation.turns_answered = True
    response = conversation.begin_response(1, "question")
    conversation.user_speech_started(SpeechStarted(2, 0))
    conversation.user_speech_progress(2, 100)
    assert response.paused
    conversation.user_speech_stopped(SpeechStopped(2, 100))
    conversation.user_speech_started(SpeechStarted(3, 300))  # the user goes on
    conversation.transcript_final(TranscriptFinal(2, "", 0, 100))
    assert response.paused  # turn 3 may still have words
    conversation.advance_audio(10_000)
    assert response.paused  # the timeout does not run while the user speaks
    conversation.user_speech_progress(3, 40)
    conversation.user_speech_stopped(SpeechStopped(3, 400))
    conversation.transcript_final(TranscriptFinal(3, "actually, stop", 300, 400))
    assert response.status is ResponseStatus.CANCELLED and response.cancel_reason == "turn_detected"
    assert conversation.entries()[-1].interrupted


def test_words_that_come_after_the_timeout_resumed_the_response_still_interrupt_it():
    conversation = Conversation(interruptions=InterruptionSettings(false_interruption_ms=500))
    conversation.turns_answered = True
    events: list = []
    conversation.add_listener(events.append)
    response = conversation.begin_response(1, "question")
    conversation.user_speech_started(SpeechStarted(2, 1000))
    conversation.user_speech_progress(2, 100)
    conversation.user_speech_stopped(SpeechStopped(2, 1100))
    conversation.advance_audio(1580)
    assert response.paused  # 480 ms of audio after the sound: not yet
    conversation.advance_audio(1600)
    assert not response.paused and response.status is ResponseStatus.ACTIVE
    assert [e.reason for e in events if isinstance(e, ResponseResumed)] == ["timeout"]
    conversation.transcript_final(TranscriptFinal(2, "stop please", 1000, 1100))  # a slow ASR
    assert response.status is ResponseStatus.CANCELLED and response.cancel_reason == "turn_detected"


def test_heard_text_maps_played_samples_to_words_by_characters():
    response = Response(1, "q")
    response.add_chunk("Hello there,", 1200, 16000)
    response.add_chunk("a longer second sentence.", 2500, 16000)
    assert response.heard_text() == ""
    response.played_samples = 300  # "Hello" spans chars 0-5 of 12: its middle is at 2.5 chars = 250 samples
    assert response.heard_text() == "Hello"
    response.played_samples = 1200
    assert response.heard_text() == "Hello there,"
    response.played_samples = 1200 + 1400  # 14 of 25 chars: "a" (mid 0.5), "longer" (mid 5), "second" (mid 11.5)
    assert response.heard_text() == "Hello there, a longer second"
    response.played_samples = 3700
    assert response.heard_text() == "Hello there, a longer second sentence."


def test_has_words():
    assert has_words("stop") and has_words("Wait.")
    assert not has_words("") and not has_words(" ... ") and not has_words("?!")


def test_interruption_settings_are_checked():
    with pytest.raises(ValueError, match="min_interruption_ms"):
        InterruptionSettings(min_interruption_ms=-1)
    with pytest.raises(ValueError, match="false_interruption_ms"):
        InterruptionSettings(false_interruption_ms=-5)


@pytest.mark.anyio
async def test_a_paced_wav_output_leaves_flushed_audio_out_of_the_file(tmp_path):
    from realtime_pipeline import WavFileOutput, read_wav

    output = WavFileOutput(tmp_path / "reply.wav", RATE_HZ, paced=True)
    await output.open()
    for _ in range(10):
        await output.write(np.full(320, 100, dtype=np.int16), "r1")
    dropped = output.flush()
    await output.close()
    samples, _ = read_wav(tmp_path / "reply.wav")
    assert dropped > 0  # a paced output always has some audio queued right after a write
    assert len(samples) == 10 * 320 - dropped


def test_speech_before_any_reply_sample_was_heard_holds_the_reply_at_once():
    """A user who goes on after a pause the detector took for the end is not talked over: the
    committed reply, not yet heard, is held on the first voiced frame (not after 80 ms of it), and
    it is cancelled once the new speech has words."""
    conversation = Conversation()
    conversation.user_speech_started(SpeechStarted(1, 0))
    conversation.user_speech_stopped(SpeechStopped(1, 900))
    response = conversation.begin_response(1, "And so my fellow Americans")
    assert not response.paused and response.played_ms == 0
    conversation.user_speech_started(SpeechStarted(2, 1400))  # the user resumes, nothing played yet
    assert response.paused
    conversation.transcript_final(TranscriptFinal(2, "ask not what your country can do for you", 1400, 3000))
    assert response.cancelled


def test_speech_over_a_reply_already_heard_still_needs_the_interruption_threshold():
    conversation = Conversation()
    conversation.user_speech_started(SpeechStarted(1, 0))
    conversation.user_speech_stopped(SpeechStopped(1, 900))
    response = conversation.begin_response(1, "Hello")
    response.output_sample_rate_hz, response.played_samples = 22050, 4410  # 200 ms of the reply was heard
    conversation.user_speech_started(SpeechStarted(2, 2000))
    assert not response.paused  # a breath does not stop a reply the user is hearing
    conversation.user_speech_progress(2, conversation.interruptions.min_interruption_ms)
    assert response.paused
