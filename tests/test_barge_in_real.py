"""Real models, real speech: a recorded user interrupts a real reply in real time (``benchmarks.barge_in``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import SPEECH_DIR, normalize_text

from benchmarks.barge_in import run_barge_in
from realtime_pipeline import InterruptionSettings


@pytest.mark.models
@pytest.mark.anyio
async def test_real_speech_interrupts_a_real_reply_and_is_answered(asr, llm, tts):
    models = SimpleNamespace(asr=asr, llm=llm, tts=tts)
    # A long false-interruption window: however slow Whisper is on the CI machine, the words decide.
    settings = InterruptionSettings(false_interruption_ms=60_000)
    result = await run_barge_in(models, files=[SPEECH_DIR / "ps_librivox_0880.wav"], interruptions=settings)
    (turn,) = result["turns"]  # "he was not an ill disposed young man"
    assert turn["interrupted"], turn
    assert turn["reason"] == "turn_detected" and turn["false_interruption_resumes"] == []
    # nothing of the interrupted reply played after it was stopped
    assert result["leaked_turns"] == 0 and turn["leaked_blocks"] == 0
    # this recording has 270 ms of room noise before its first word, which webrtcvad may stop the
    # reply on: then it is counted before the onset, not measured (benchmarks.barge_in.speech_onset_sample)
    assert result["measured"] + result["vad_before_onset"] == 1
    assert len(result["barge_in_ms"]["values"]) == result["measured"]
    # the history keeps the words that were heard, marked interrupted
    heard, reply = turn["heard_text"].split(), turn["reply_text"].split()
    assert reply[: len(heard)] == heard and len(heard) < len(reply)
    history = result["history"]
    interrupted = [entry for entry in history if entry["interrupted"]]
    assert [entry["content"] for entry in interrupted] == [turn["heard_text"]]
    # the interrupting words became the next user turn, and it was answered to the end
    users = [entry for entry in history if entry["role"] == "user"]
    assert "young man" in normalize_text(users[-1]["content"])
    # the record says what the ASR made of the interrupter, and in how many VAD turns
    assert turn["user_vad_turns"] >= 1 and "young man" in normalize_text(turn["user_heard"])
    last = history[-1]
    assert last["role"] == "assistant" and not last["interrupted"] and last["content"]
