"""The echo room, the loopback, the echo stages and the fallback (no models)."""

from __future__ import annotations

import logging

import anyio
import numpy as np
import pytest
import soxr

from realtime_pipeline import Conversation, MemoryOutput
from realtime_pipeline import echo_cancel
from realtime_pipeline.assistant import voice_pipeline
from realtime_pipeline.echo_cancel import EchoCancellation, EchoCancellerUnavailable, EchoGate, ResidualGate, echo_stage
from realtime_pipeline.frames import AudioFrame, SpeechStarted, SpeechStopped
from realtime_pipeline.interruption import InterruptionSettings
from realtime_pipeline.io.echo_room import EchoRoom, EchoRoomSettings, EchoRoomSource, synthetic_impulse_response
from realtime_pipeline.io.loopback import Loopback, LoopbackReader
from realtime_pipeline.io.sources import MemorySource
from realtime_pipeline.stage import StageContext
from realtime_pipeline.tracing import Tracer

RATE = 16000
T0 = 1000.0  # a monotonic time for the stream's first sample


def frames_of(user: np.ndarray, *, frame=320, origin_s=T0):
    """The user's audio as the microphone frames a source emits (each stamped when it ends)."""
    for start in range(0, len(user), frame):
        samples = user[start : start + frame]
        yield AudioFrame(samples, RATE, start, origin_s + (start + len(samples)) / RATE)


def run_room(room: EchoRoom, user: np.ndarray) -> np.ndarray:
    return np.concatenate([room.mix(f).samples for f in frames_of(user)])


def tone(seconds: float, rate: int, hz: float = 440.0, level: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_a_delta_impulse_response_gives_the_played_signal_delayed_and_scaled():
    loopback = Loopback(RATE)
    played = tone(0.5, RATE)
    loopback.played(T0 + 0.2, played)  # plays from 200 ms into the stream
    room = EchoRoom(loopback, EchoRoomSettings(delay_ms=100, gain_db=-6.0, impulse_response=[1.0]))
    user = np.zeros(RATE, dtype=np.int16)
    user[100:200] = 1000  # the user's own sound is kept as it is
    mic = run_room(room, user)
    expected = user.astype(np.float64)
    start = int(0.3 * RATE)  # 200 ms + the 100 ms delay
    expected[start : start + len(played)] += 10 ** (-6 / 20) * played
    assert np.max(np.abs(mic - np.round(expected))) <= 1
    # what the room recorded: the user and the echo apart
    assert sum(f.user_energy for f in room.frames) == pytest.approx(100 * 1000.0**2)
    assert sum(f.echo_energy for f in room.frames) == pytest.approx(np.sum((10 ** (-6 / 20) * played.astype(float)) ** 2), rel=1e-3)


def test_a_two_tap_response_adds_a_scaled_reflection_at_its_lag():
    loopback = Loopback(RATE)
    played = tone(0.2, RATE)
    loopback.played(T0, played)
    response = np.zeros(801)
    response[0], response[800] = 1.0, 0.5  # a reflection 50 ms after the direct path
    room = EchoRoom(loopback, EchoRoomSettings(delay_ms=20, impulse_response=response))
    mic = run_room(room, np.zeros(RATE // 2, dtype=np.int16)).astype(np.float64)
    expected = np.zeros(RATE // 2)
    expected[320 : 320 + len(played)] += played
    expected[320 + 800 : 320 + 800 + len(played)] += 0.5 * played
    assert np.max(np.abs(mic - expected)) <= 1


def test_the_echo_of_the_output_rate_is_the_played_signal_resampled():
    loopback = Loopback(22050)
    played = tone(0.6, 22050, hz=300)
    loopback.played(T0 + 0.2, played)  # times on whole samples of both rates: no sub-sample offset
    room = EchoRoom(loopback, EchoRoomSettings(delay_ms=100, impulse_response=[1.0]))
    mic = run_room(room, np.zeros(RATE, dtype=np.int16)).astype(np.float64)
    expected = soxr.resample(played.astype(np.float32), 22050, RATE, quality="HQ")
    start = int(0.3 * RATE)
    error = mic[start : start + len(expected)] - expected
    assert 10 * np.log10(np.sum(expected**2) / np.sum(error**2)) > 40  # only rounding to int16 differs


def test_audio_flushed_before_it_played_leaves_no_echo():
    loopback = Loopback(RATE)
    loopback.played(T0, tone(1.0, RATE))
    loopback.flushed(T0 + 0.25)  # a barge-in: the rest never played
    room = EchoRoom(loopback, EchoRoomSettings(delay_ms=100, impulse_response=[1.0]))
    mic = run_room(room, np.zeros(RATE, dtype=np.int16))
    assert np.any(mic[int(0.1 * RATE) : int(0.35 * RATE)] != 0)
    assert not np.any(mic[int(0.35 * RATE) + 1 :])


def test_the_room_takes_frames_in_stream_order_at_16_khz():
    room = EchoRoom(Loopback(RATE))
    room.mix(AudioFrame(np.zeros(320, dtype=np.int16), RATE, 0, T0))
    with pytest.raises(ValueError, match="follow each other"):
        room.mix(AudioFrame(np.zeros(320, dtype=np.int16), RATE, 960, T0))
    with pytest.raises(ValueError, match="16000 Hz"):
        EchoRoom(Loopback(RATE)).mix(AudioFrame(np.zeros(480, dtype=np.int16), 24000, 0, T0))
    with pytest.raises(ValueError, match="delay_ms"):
        EchoRoomSettings(delay_ms=5)
    with pytest.raises(ValueError, match="gain_db"):
        EchoRoomSettings(gain_db=40)


def test_the_synthetic_impulse_response_is_deterministic_unit_energy_and_decays():
    a, b = synthetic_impulse_response(seed=3), synthetic_impulse_response(seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, synthetic_impulse_response(seed=4))
    assert np.sum(a**2) == pytest.approx(1.0)
    assert np.argmax(np.abs(a)) == 0  # the direct path first
    early, late = np.sum(a[16:1600] ** 2), np.sum(a[4800:6400] ** 2)  # 1-100 ms against 300-400 ms
    assert late < early * 10 ** (-4)  # RT60 300 ms: ~ -60 dB after 300 ms


def test_the_loopback_reader_joins_resampled_blocks_exactly():
    loopback = Loopback(22050)
    signal = (np.random.default_rng(0).standard_normal(22050) * 3000).astype(np.int16)
    loopback.played(T0, signal)
    reader = LoopbackReader(loopback, RATE, T0)
    pieces = np.concatenate([reader.read(start, 160) for start in range(0, 15000, 160)])
    whole = soxr.resample(signal.astype(np.float32), 22050, RATE, quality="HQ")[: len(pieces)]
    error = pieces[320:-320] - whole[320:-320]
    assert 10 * np.log10(np.sum(whole[320:-320] ** 2) / np.sum(error**2)) > 80


@pytest.mark.anyio
async def test_a_paced_output_records_what_played_and_forgets_what_a_flush_dropped():
    output = MemoryOutput(RATE, paced=True, buffer_ms=1000)  # neither write waits
    loopback = output.loopback()
    started = await output.write(np.full(8000, 100, dtype=np.int16))  # 500 ms
    await output.write(np.full(1600, 200, dtype=np.int16))
    # a flush in the very sample the first block starts drops it too (nothing of it has played):
    # on a fast machine the two writes and the flush took under one sample (62 us), and heard was
    # all zeros. 20 ms in, the flush is well within the first block and the second never plays.
    await anyio.sleep(0.02)
    output.flush()
    at = loopback.index(started)
    heard = loopback.read(max(0, at - 800), 4000)
    assert np.any(heard == 100) and not np.any(heard == 200)


def test_without_the_package_the_fallback_runs_with_one_clear_message(monkeypatch, caplog):
    def missing():
        raise ImportError("No module named 'pywebrtc_audio'")

    monkeypatch.setattr(echo_cancel, "_import_backend", missing)
    monkeypatch.setattr(echo_cancel, "_logged_missing", False)
    output = MemoryOutput(22050, paced=True)
    with caplog.at_level(logging.WARNING, logger="realtime_pipeline.echo_cancel"):
        first = echo_stage(output)
        second = echo_stage(output)
    assert isinstance(first, EchoGate) and isinstance(second, EchoGate)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "pywebrtc-audio" in messages[0] and "realtime_pipeline[aec]" in messages[0]
    assert not echo_cancel.aec_available()
    with pytest.raises(EchoCancellerUnavailable, match=r"pip install 'realtime_pipeline\[aec\]'"):
        echo_cancel.EchoCanceller()
    # a pipeline on a source that hears the speaker still builds, with the gate after the source
    source = EchoRoomSource(MemorySource([np.zeros(320, dtype=np.int16)], RATE), EchoRoom(output))
    pipeline = voice_pipeline(source, output, llm=_NoLLM(), asr=_Nop("asr"), tts=_Nop("tts"), turn=_Nop("turn"))
    assert [s.name for s in pipeline.stages][:3] == ["source", "aec", "vad"]
    assert isinstance(pipeline.stages[1], EchoGate)


def test_sources_that_do_not_hear_the_output_get_no_echo_stage():
    output = MemoryOutput(22050, paced=True)
    pipeline = voice_pipeline(MemorySource([np.zeros(320, dtype=np.int16)], RATE), output,
                              llm=_NoLLM(), asr=_Nop("asr"), tts=_Nop("tts"), turn=_Nop("turn"))
    assert "aec" not in [s.name for s in pipeline.stages]
    with pytest.raises(ValueError, match="echo must be"):
        voice_pipeline(MemorySource([np.zeros(320, dtype=np.int16)], RATE), output, echo="maybe",
                       llm=_NoLLM(), asr=_Nop("asr"), tts=_Nop("tts"), turn=_Nop("turn"))


@pytest.mark.skipif(not echo_cancel.aec_available(), reason="the [aec] extra is not installed")
def test_with_the_package_the_microphone_gets_aec3():
    output = MemoryOutput(22050, paced=True)
    assert isinstance(echo_stage(output), EchoCancellation)
    assert echo_stage(output).linear is not None  # with the double-talk path by default
    source = EchoRoomSource(MemorySource([np.zeros(320, dtype=np.int16)], RATE), EchoRoom(output))
    for echo, double_talk in (("auto", True), ("double-talk", True), ("aec", False)):
        pipeline = voice_pipeline(source, output, echo=echo, llm=_NoLLM(), asr=_Nop("asr"), tts=_Nop("tts"),
                                  turn=_Nop("turn"))
        stage = pipeline.stages[1]
        assert isinstance(stage, EchoCancellation)
        assert (stage.linear is not None and stage.near_end is not None) is double_talk, echo
        assert stage.fit is None, echo  # the echo-path fits are opt-in
        assert stage.calibrate is double_talk, echo  # the start sound: the double-talk path's, on by default
    quiet = voice_pipeline(source, output, echo_calibration=False, llm=_NoLLM(), asr=_Nop("asr"), tts=_Nop("tts"),
                           turn=_Nop("turn"))
    assert quiet.stages[1].calibrate is False
    for echo in ("auto", "double-talk"):
        pipeline = voice_pipeline(source, output, echo=echo, echo_path_fit=True, llm=_NoLLM(), asr=_Nop("asr"),
                                  tts=_Nop("tts"), turn=_Nop("turn"))
        assert pipeline.stages[1].fit is not None, echo
    assert isinstance(echo_stage(output, enabled=False), EchoGate)


@pytest.mark.skipif(not echo_cancel.aec_available(), reason="the [aec] extra is not installed")
def test_the_stage_labels_its_frames_with_the_inputs_sample_positions():
    # what comes out at sample n of the stage's stream went in at sample n: a click at input
    # sample 8000 is at 8000 in the frames the VAD and the ASR get, whatever AEC3's own delay
    click_at = 8000
    mic = np.zeros(RATE, dtype=np.int16)
    mic[click_at : click_at + 16] = 20000
    stage = EchoCancellation(MemoryOutput(RATE), canceller=echo_cancel.EchoCanceller(), calibrate=False)

    async def run() -> list[AudioFrame]:
        send_in, inbox = anyio.create_memory_object_stream(100)
        outbox, receive_out = anyio.create_memory_object_stream(100)
        async with send_in, receive_out:
            for i in range(0, len(mic), 320):
                await send_in.send(AudioFrame(mic[i : i + 320], RATE, i, T0 + (i + 320) / RATE))
            await send_in.aclose()
            async with outbox:
                await stage.run(StageContext(Conversation(), Tracer()), inbox, outbox)
            return [frame async for frame in receive_out]

    frames = anyio.run(run)
    assert frames[0].start_sample == 0
    assert all(a.end_sample == b.start_sample for a, b in zip(frames, frames[1:]))  # no gap, no overlap
    out = np.concatenate([f.samples for f in frames])
    assert abs(int(np.argmax(np.abs(out.astype(np.int32)))) - click_at) <= 4  # AEC3's high-pass filter rings a little


def test_the_gate_mutes_the_echo_and_passes_a_user_louder_than_it():
    gate = ResidualGate()
    reference = tone(2.0, RATE, level=8000)
    echo = (0.5 * reference).astype(np.int16)  # -6 dB coupling
    out = gate.process(echo, reference)
    assert np.sum(out[RATE // 2 :].astype(float) ** 2) < 0.01 * np.sum(echo[RATE // 2 :].astype(float) ** 2)
    loud_user = (echo + tone(2.0, RATE, hz=1000, level=16000)).astype(np.int16)  # the user 6 dB above the reference
    passed = gate.process(loud_user, reference)
    assert np.sum(passed.astype(float) ** 2) > 0.5 * np.sum(loud_user.astype(float) ** 2)
    silence = np.zeros(RATE, dtype=np.int16)
    user = tone(1.0, RATE, level=3000)
    after = gate.process(user, silence)
    window = echo_cancel.GATE_WINDOW_MS * RATE // 1000  # the echo's delay and reverberation may last that long
    assert np.array_equal(after[window:], user[window:])  # the assistant silent since: nothing muted


def test_the_fallback_mutes_an_echo_louder_than_the_reply_before_it_has_learnt_the_room():
    reference = tone(0.5, RATE, level=3000)
    loud_echo = (reference * 10 ** (8 / 20)).astype(np.int16)  # a speaker next to the microphone: +8 dB
    fallback = EchoGate(MemoryOutput(RATE)).gate
    assert fallback is not None and fallback.prior_coupling_db == echo_cancel.FALLBACK_PRIOR_COUPLING_DB
    out = fallback.process(loud_echo, reference)  # its first half second: nothing learnt yet
    assert np.sum(out.astype(float) ** 2) < 1e-4 * np.sum(loud_echo.astype(float) ** 2)
    assert np.array_equal(ResidualGate().process(loud_echo, reference), loud_echo)  # a 0 dB prior let it through
    user = (loud_echo.astype(float) + tone(0.5, RATE, hz=1000, level=24000)).astype(np.int16)  # 18 dB over the reply
    passed = EchoGate(MemoryOutput(RATE)).gate.process(user, reference)
    assert np.sum(passed.astype(float) ** 2) > 0.5 * np.sum(user.astype(float) ** 2)


def test_without_echo_cancellation_barge_in_over_an_audible_reply_needs_more_voiced_audio():
    settings = InterruptionSettings(min_interruption_ms=80, min_interruption_while_speaking_ms=240)
    conversation = Conversation(interruptions=settings)
    conversation.echo_unprotected = True
    conversation.user_speech_started(SpeechStarted(1, 0))
    conversation.user_speech_stopped(SpeechStopped(1, 900))
    response = conversation.begin_response(1, "Hello there, how are you")
    response.output_sample_rate_hz, response.played_samples = 22050, 4410  # audible: 200 ms played
    conversation.user_speech_started(SpeechStarted(2, 2000))
    conversation.user_speech_progress(2, 200)
    assert not response.paused  # 200 ms could be its own echo
    conversation.user_speech_progress(2, 240)
    assert response.paused
    # with AEC (or no echo path) the usual threshold applies
    assert settings.threshold_ms(response, echo_unprotected=False) == 80
    assert settings.threshold_ms(None, echo_unprotected=True) == 80
    with pytest.raises(ValueError, match="min_interruption_while_speaking_ms"):
        InterruptionSettings(min_interruption_while_speaking_ms=-1)


class _Nop(echo_cancel.Stage):
    def __init__(self, name: str) -> None:
        self.name = name
        self.output_sample_rate_hz = 22050

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            await outbox.send(frame)


class _NoLLM(_Nop):
    score_end_of_turn = True

    def __init__(self) -> None:
        super().__init__("llm")
