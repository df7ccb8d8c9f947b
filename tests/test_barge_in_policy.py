"""The barge-in policy and the speculation bookkeeping as pure state machines: plain numbers
in, decisions out (no pipeline, no clock)."""

from __future__ import annotations

from realtime_pipeline.interruption import BargeIn, Cancel, InterruptionSettings, Pause, Resume
from realtime_pipeline.response import Response
from realtime_pipeline.speculation import Speculation


def paused_machine(settings: InterruptionSettings | None = None) -> tuple[BargeIn, Response]:
    machine, response = BargeIn(settings), Response(1, "question")
    assert machine.speech_started(2, can_interrupt=True, unheard=False) is None
    assert machine.speech_progress(2, 60, can_interrupt=True) is None  # below min_interruption_ms (80)
    assert machine.speech_progress(2, 80, can_interrupt=True) == Pause(2)
    machine.paused(response, 2, at_s=10.0)
    return machine, response


def test_enough_voiced_audio_pauses_and_words_cancel():
    machine, _ = paused_machine()
    assert machine.transcript(2, "wait", final=False, live=True) == Cancel("turn_detected")


def test_no_words_resume_on_the_empty_final_and_keep_the_pause_time():
    machine, response = paused_machine()
    machine.speech_stopped(2, audio_end_ms=1500)
    decision = machine.transcript(2, "  ", final=True, live=True)
    assert isinstance(decision, Resume) and decision.reason == "no_words"
    assert decision.pending.response is response and decision.pending.paused_at_s == 10.0
    assert machine.pending is None


def test_the_timeout_resumes_on_input_audio_time_and_late_words_still_interrupt():
    machine, _ = paused_machine(InterruptionSettings(false_interruption_ms=3000))
    machine.speech_stopped(2, audio_end_ms=1500)
    assert machine.audio_advanced(4499) is None
    decision = machine.audio_advanced(4500)
    assert isinstance(decision, Resume) and decision.reason == "timeout"
    assert machine.transcript(2, "stop please", final=True, live=True) == Cancel()  # words after the resume
    assert machine.transcript(2, "stop please", final=True, live=True) is None  # once


def test_more_speech_while_paused_postpones_the_resume_until_its_transcript_too():
    machine, _ = paused_machine()
    machine.speech_stopped(2, audio_end_ms=1500)
    assert machine.speech_started(3, can_interrupt=True, unheard=False) is None
    assert machine.audio_advanced(10_000) is None  # user speaking: no timeout
    machine.speech_stopped(3, audio_end_ms=2500)
    assert machine.transcript(2, "", final=True, live=True) is None  # turn 3 still pending
    assert isinstance(machine.transcript(3, "", final=True, live=True), Resume)


def test_without_resume_the_threshold_cancels_and_without_a_response_nothing_happens():
    machine = BargeIn(InterruptionSettings(resume_false_interruption=False))
    machine.speech_started(2, can_interrupt=True, unheard=True)
    assert machine.speech_progress(2, 80, can_interrupt=True) == Cancel()
    idle = BargeIn()
    idle.speech_started(2, can_interrupt=False, unheard=False)
    assert idle.speech_progress(2, 500, can_interrupt=False) is None


def test_an_unheard_reply_is_held_on_the_first_frame_of_speech():
    machine = BargeIn()
    assert machine.speech_started(2, can_interrupt=True, unheard=True) == Pause(2)


def test_a_response_beginning_while_the_user_talks_over_it_is_paused():
    machine = BargeIn()
    machine.speech_started(2, can_interrupt=False, unheard=False)
    machine.speech_progress(2, 200, can_interrupt=False)
    assert machine.response_began(can_interrupt=True) == Pause(2)
    machine.speech_stopped(2, 900)
    assert machine.response_began(can_interrupt=True) is None


def test_speculation_commits_on_the_same_stop_and_counts_hits_and_misses():
    speculation = Speculation()
    held = Response(1, "what time is it")
    speculation.hold(held, audio_end_ms=1200)
    assert speculation.settle(1, 1200) == (held, None)
    assert speculation.answered(1, "what time is it") == (True, None)
    other = Response(2, "and the")
    speculation.hold(other, audio_end_ms=3000)
    assert speculation.settle(2, 3400) == (None, other)  # the turn ended elsewhere
    third = Response(3, "the weather")
    speculation.hold(third, 5000)
    speculation.settle(3, 5000)
    assert speculation.answered(3, "the weather in paris") == (False, third)  # the words changed
    assert speculation.discard() is None
    assert (speculation.hits, speculation.misses) == (1, 2)
