"""Echo cancellation on real audio: a real Piper reply in the echo room, real speech spoken over it.

The stage runs offline on the room's microphone signal (``EchoCancellation.process``), so the
figures are exact: no timing, no threads. The pipeline-level run (AEC in the whole conversation)
is ``test_latency_benchmark_in_the_echo_room_does_not_interrupt_itself``.
"""

from __future__ import annotations

from pathlib import Path

import jiwer
import numpy as np
import pytest

from realtime_pipeline import echo_cancel
from realtime_pipeline.audio import read_wav, resample
from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.echo_cancel import EchoCancellation, EchoCanceller
from realtime_pipeline.echo_path_fit import FIT_DETECTOR_FRAMES, FIT_GAIN_DB
from realtime_pipeline.io.echo_room import EchoRoomSettings
from realtime_pipeline.io.outputs import MemoryOutput
from benchmarks.barge_in import speech_onset_sample
from benchmarks.echo_sim import VadRule
from benchmarks.first_reply import self_interruption_s

from conftest import SPEECH_DIR, load_transcripts, normalize_text

pytestmark = [pytest.mark.models,
              pytest.mark.skipif(not echo_cancel.aec_available(), reason="the [aec] extra is not installed")]

RATE = 16000
REPLIES_DIR = Path(__file__).parent / "data" / "replies"
REPLY = ("Paris is the capital of France, and it sits on the river Seine in the north of the country. "
         "It is known for the Eiffel Tower, the Louvre museum and its many cafes along wide boulevards. "
         "Millions of visitors come every year to see its art, its food and its old streets.")
USER = "ps_librivox_0920.wav"
USER_ONSET_S = 7.0  # into the reply: the echo path has been heard for a while, as after a few turns


@pytest.fixture(scope="module")
def room(tts):
    """The reply as played (16 kHz), the microphone (its echo plus the user) and where the user is."""
    reply = tts.synthesize(REPLY, CancelToken())
    played = np.round(resample(reply.astype(np.float32) / 32768, tts.output_sample_rate_hz, RATE) * 32767)
    settings = EchoRoomSettings(delay_ms=100, gain_db=0.0)
    delayed = np.concatenate([np.zeros(settings.delay_ms * RATE // 1000), played])
    echo = np.convolve(delayed, settings.response())[: len(played)]
    user, rate = read_wav(SPEECH_DIR / USER)
    assert rate == RATE
    onset = speech_onset_sample(user)
    start = int(USER_ONSET_S * RATE) - onset
    assert start + len(user) < len(played), "the reply must outlast the user"
    mixed = echo.copy()
    mixed[start : start + len(user)] += user
    capture = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
    return played.astype(np.int16), capture, echo, start, len(user), start + onset


def _process(capture: np.ndarray, reference: np.ndarray, *, double_talk: bool = True) -> tuple[np.ndarray, EchoCancellation]:
    out, _, stage = _process_both(capture, reference, double_talk=double_talk)
    return out, stage


def _process_both(capture: np.ndarray, reference: np.ndarray, *,
                  double_talk: bool = True) -> tuple[np.ndarray, np.ndarray, EchoCancellation]:
    """What the VAD gets and what the ASR gets (``AudioFrame.asr_samples``, else the same)."""
    stage = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller(), double_talk=double_talk)
    step = 320
    usable = len(capture) // step * step
    vad, asr = [], []
    for i in range(0, usable, step):
        vad.append(stage.process(i, capture[i : i + step], reference[i : i + step]))
        asr.append(vad[-1] if stage.for_asr is None else stage.for_asr)
    return np.concatenate(vad), np.concatenate(asr), stage


def _vad_starts(samples: np.ndarray) -> list[int]:
    """Samples (the 20 ms frame) where the VAD stage's rule would start speech: webrtcvad over its
    level floor in 3 of the last 5 frames (``benchmarks.echo_sim.VadRule``). Without the floor
    (-70 dBFS) AEC3's quiet residual counted as starts the stage never makes."""
    rule, starts = VadRule(), []
    frame = RATE * rule.settings.frame_ms // 1000
    for i in range(0, len(samples) - frame, frame):
        was = rule.in_speech
        rule.step(samples[i : i + frame])
        if rule.in_speech and not was:
            starts.append(i)
    return starts


def _energy(samples: np.ndarray) -> float:
    return float(np.sum(np.square(samples.astype(np.float64))))


@pytest.mark.parametrize("double_talk", [False, True], ids=["aec", "double-talk"])
def test_aec_removes_a_real_reply_and_the_vad_hears_nothing_until_the_user_speaks(room, double_talk):
    reference, capture, echo, start, _, onset = room
    out, stage = _process(capture, reference, double_talk=double_talk)
    alone = slice(2 * RATE, start)  # echo alone, after AEC3's first two seconds
    loud = np.array([_energy(echo[i : i + 160]) / 160 > (32768 * 10 ** (-50 / 20)) ** 2 for i in range(alone.start, alone.stop, 160)])
    mic = sum(_energy(capture[i : i + 160]) for i, keep in zip(range(alone.start, alone.stop, 160), loud) if keep)
    left = sum(_energy(out[i : i + 160]) for i, keep in zip(range(alone.start, alone.stop, 160), loud) if keep)
    assert 10 * np.log10(mic / left) >= 25.0  # the ERLE target (measured: ~70 dB, muted to -90 dBFS)
    assert _vad_starts(capture[alone])  # without AEC the echo alone starts the VAD
    # with it: no self-interruption once AEC3 has heard the room. In its first second AEC3 can let
    # a burst through (Piper's output varies run to run; a VAD start at 0.86 s on one of them):
    # the whole-pipeline test and the 30-turn benchmark count what that does to a conversation.
    assert not [s for s in _vad_starts(out[: start]) if s >= alone.start]
    if double_talk:
        assert stage.near_end is not None and stage.near_end.threshold_db is not None  # the linear filter converged


def test_the_user_speaking_over_the_echo_reaches_the_vad_and_the_asr(room, asr):
    reference, capture, echo, start, length, onset = room
    out, for_asr, stage = _process_both(capture, reference)
    heard = [s for s in _vad_starts(out) if s >= start]
    assert heard, "the user's speech over the echo never started the VAD"
    # audio time, not wall time: the user's first word (after 330 ms of room noise, which the
    # echo hides) starts the VAD 0-20 ms after its onset (3 runs)
    assert heard[0] - onset < 0.2 * RATE
    assert stage.double_talk_frames > 0
    # the first 250 ms of the user's words reach the VAD and the ASR whole (measured: 100 % of
    # their energy), not muted while the detector makes up its mind
    user = capture.astype(np.float64) - echo
    first = slice(onset, onset + RATE // 4)
    assert _energy(out[first]) > 0.5 * _energy(user[first])
    assert _energy(for_asr[first]) > 0.5 * _energy(user[first])
    reference_words = load_transcripts()[USER]
    wer_over_echo = jiwer.wer(reference_words, normalize_text(asr.transcribe(for_asr[start : start + length])))
    wer_alone = jiwer.wer(reference_words, normalize_text(asr.transcribe(read_wav(SPEECH_DIR / USER)[0])))
    assert wer_over_echo <= wer_alone + 0.25  # measured: 0.05 and 0.05
    # AEC3 and its suppressor alone remove most of a user this loud (1.6 dB under the echo):
    # what the double-talk path is for (measured: 4.5x less energy, WER 0.89)
    without, _ = _process(capture, reference, double_talk=False)
    span = slice(onset, start + length)
    assert _energy(out[span]) > 2 * _energy(without[span])
    assert wer_over_echo < jiwer.wer(reference_words, normalize_text(asr.transcribe(without[start : start + length])))


SESSION_USERS = ("ps_librivox_0870.wav", "mfa_um.wav", "ps_cards_002.wav", "ps_librivox_0920.wav", "mfa_words.wav",
                 "ps_goforward.wav", "mfa_thoughts.wav", "ps_librivox_0880.wav", "mfa_longstop.wav")
#: With this seed the former detector (no AEC3 floor veto) paused a reply on its echo, and so
#: missed its user, in 4 of 7 runs (Piper's replies vary from run to run; seeds 0-9 searched),
#: the current one in none.
SESSION_SEED = 6


def test_a_simulated_barge_in_session_stops_replies_for_the_user_and_never_for_their_echo(tts):
    # benchmarks/echo_sim.py: the real AEC3 and Piper replies in the echo room, users speaking over
    # them, the reply stopping when the VAD has 80 ms of the user, causally in 20 ms steps. Before
    # AEC3's floor vetoed the linear residual's near-end frames this session paused replies on
    # their own echo (docs/echo.md); a user the residual hears must still stop the reply. Without the
    # start sound, the session this test was written for: with it the session paused a reply on its
    # echo in 3 of 42 syntheses until the onset guard ran on a reply's fade-in (docs/echo.md, "The
    # onset guard never ran on a Piper reply"; test_double_talk has that case); the pipeline-level
    # echo test runs with the sound
    from benchmarks import echo_sim

    replies = echo_sim.synthesize_replies(tts, echo_sim.REPLY_TEXTS[:4])
    users = [echo_sim.load_user(SPEECH_DIR / name) for name in SESSION_USERS]
    outcomes = {mode: echo_sim.simulate_session(lambda mode=mode: echo_sim.stage_for(mode), replies, users,
                                                echo_sim.ROOMS[0], seed=SESSION_SEED, calibrate=False)
                for mode in ("aec", "double-talk")}
    for mode, session in outcomes.items():
        assert sum(o.self_interruptions for o in session) == 0, mode
    # every user heard (AEC3 alone can miss one: its suppressor held a user through a reply
    # on 1 of 5 runs, Piper's replies differing from run to run)
    assert all(o.barge_in_ms is not None for o in outcomes["double-talk"] if o.playing)
    faster = [a.barge_in_ms - d.barge_in_ms for a, d in zip(outcomes["aec"], outcomes["double-talk"])
              if a.barge_in_ms is not None and d.barge_in_ms is not None]
    assert len(faster) >= 6 and float(np.median(faster)) > 0  # double talk hears them sooner than AEC3 alone


def _erle_on_a_fresh_reply(stage: EchoCancellation, played: np.ndarray, room: EchoRoomSettings) -> float:
    """What the stage's linear filter, as the session left it, removes from a reply it has not
    heard (not adapting)."""
    assert stage.linear is not None
    delayed = np.concatenate([np.zeros(room.delay_ms * RATE // 1000), played])
    echo = (np.convolve(delayed, room.response()) * 10 ** (room.gain_db / 20))[: len(played)]
    block = stage.linear.block
    residual = np.concatenate([stage.linear.cancel(echo[i : i + block], played[i : i + block])
                               for i in range(0, len(played) // block * block, block)])
    heard = slice(RATE // 2, len(residual))  # after the echo's delay
    return float(10 * np.log10(np.sum(echo[heard] ** 2) / max(float(np.sum(residual[heard] ** 2)), 1e-9)))


def test_replies_cut_short_still_teach_the_filter_the_room(tts):
    # Each reply stops 0.5 s in, as when a user interrupts every reply early (the live barge-in
    # benchmark: ~0.5 s of echo alone per reply), silence between them. After four such replies
    # the NLMS filter removed 13-16 dB from a reply it had not heard, the least-squares fits over
    # all four 34-37 dB (5 runs; Piper's replies vary from run to run).
    from benchmarks import echo_sim

    *replies, fresh = echo_sim.synthesize_replies(tts, echo_sim.REPLY_TEXTS[:5])  # the last one is not played
    room = echo_sim.ROOMS[0]
    delay = room.delay_ms * RATE // 1000
    response = room.response() * 10 ** (room.gain_db / 20)
    played = np.concatenate([np.concatenate([reply[: RATE // 2], np.zeros(2 * RATE)]) for reply in replies])
    echo = np.convolve(np.concatenate([np.zeros(delay), played]), response)[: len(played)]
    capture = np.clip(np.round(echo), -32768, 32767).astype(np.int16)
    reference = played.astype(np.int16)
    stages = {}
    for fit in (False, True):
        stage = stages[fit] = echo_sim.stage_for("double-talk", echo_path_fit=fit)
        for start in range(0, len(capture) // 320 * 320, 320):
            stage.process(start, capture[start : start + 320], reference[start : start + 320])
    nlms_db, fit_db = (_erle_on_a_fresh_reply(stages[fit], fresh, room) for fit in (False, True))
    print(f"fresh reply ERLE: NLMS alone {nlms_db:.1f} dB, with the fits {fit_db:.1f} dB")
    assert stages[True].fit is not None and stages[True].fit.installs >= 1
    assert fit_db > 25.0, (nlms_db, fit_db)
    assert fit_db > nlms_db + 10.0, (nlms_db, fit_db)


def _first_reply_with_a_start_sound(room, *, calibrate: bool, settings: EchoRoomSettings,
                                    user_speaks: bool = True) -> tuple[np.ndarray, EchoCancellation, int, float | None]:
    """The session's start: the start sound (if ``calibrate``), 0.5 s of silence, then the reply
    (4 s), and the user's first word 600 ms into it (a user interrupting 400 ms in, after 200 ms of
    breath), as in the barge-in benchmark (no user: the reply's echo alone). What the VAD gets, the
    stage, where the user's onset is, and the near-end detector's line just before it (None: it
    could not tell the user from the echo yet)."""
    reference, _, _, _, _, _ = room
    stage = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller())
    sound = stage.start_calibration(RATE) if calibrate else np.zeros(0, dtype=np.int16)
    reply_start = len(sound) + RATE // 2
    far = np.concatenate([sound, np.zeros(RATE // 2, dtype=np.int16), reference[: 4 * RATE]]).astype(np.float64)
    delayed = np.concatenate([np.zeros(settings.delay_ms * RATE // 1000), far])
    mic = np.convolve(delayed, settings.response() * 10 ** (settings.gain_db / 20))[: len(far)]
    user, _ = read_wav(SPEECH_DIR / USER)
    onset = reply_start + int(0.6 * RATE)
    begin = onset - speech_onset_sample(user)
    if user_speaks:
        mic[begin : begin + len(user)] += user[: len(mic) - begin]
    capture = np.clip(np.round(mic), -32768, 32767).astype(np.int16)
    far16 = far.astype(np.int16)
    step = 320
    pieces, line_at_onset = [], None
    for i in range(0, len(capture) // step * step, step):
        if i <= onset < i + step:
            line_at_onset = stage.near_end.threshold_db if stage.near_end is not None else None
        pieces.append(stage.process(i, capture[i : i + step], far16[i : i + step]))
    return np.concatenate(pieces), stage, onset, line_at_onset


@pytest.mark.parametrize("settings", [EchoRoomSettings(delay_ms=100, gain_db=0.0),
                                      EchoRoomSettings(delay_ms=50, rt60_ms=500, seed=3)], ids=["issue-room", "reverberant"])
def test_the_start_sound_teaches_the_room_before_the_first_reply(room, settings):
    out, stage, onset, line_db = _first_reply_with_a_start_sound(room, calibrate=True, settings=settings)
    assert stage.calibration_result == {"played": True, "fit_installed": True}
    assert stage.fit is None  # fits ran for the start sound only (echo_path_fit is opt-in)
    assert stage.near_end.line_min_frames == FIT_DETECTOR_FRAMES
    starts = _vad_starts(out)
    assert not [s for s in starts if s < onset - RATE // 50], "the start sound or the reply's echo started the VAD"
    heard = [s for s in starts if s >= onset - RATE // 50]
    assert heard and heard[0] - onset < 0.2 * RATE
    # the detector can tell a user from the echo when the first user speaks; without the start sound
    # the filter has heard ~0.5 s of the reply then and it cannot yet (this user, 1.6 dB under the
    # echo, is heard as fast either way: a fresh AEC3 lets them through; quieter ones wait for it)
    assert line_db is not None
    # one fit on the whole sound (echo_calibration.StartSoundFit) left so little of the reply's echo
    # that the line stood low here; the fits while it played (before stop 34) left it at -21 and
    # -17 dB, over a user 20 dB under the reply (docs/echo.md, "One fit on the whole start sound").
    # Measured: -40.0 dB (the lowest point) in the room; -30.0 in the reverberant one, where it
    # stands on what the fit left of the sound's echo (-36 dB) + START_LEAK_MARGIN_DB.
    assert stage.start_fit_gain_db is not None and stage.start_fit_gain_db >= FIT_GAIN_DB
    floor_db = stage.near_end.leak_floor_db
    assert floor_db is not None and floor_db < -28.0, floor_db
    print(f"\nline at the onset {line_db:.1f} dB, the fit's leak + margin {floor_db:.1f} dB")
    assert line_db <= max(-30.0, floor_db + 0.01), (line_db, floor_db)
    _, bare, _, bare_line_db = _first_reply_with_a_start_sound(room, calibrate=False, settings=settings)
    assert bare_line_db is None and bare.calibration_result is None


def test_in_a_reverberant_room_the_first_reply_after_the_start_sound_does_not_interrupt_itself(room):
    # AEC3 that has heard no echo yet leaks a first reply's echo in this room: over 16 Piper replies
    # its echo alone reached the barge-in threshold 4-5 times without the start sound, never with it
    # (benchmarks.first_reply, the same function; docs/echo.md). A bare VAD start (60 ms voiced, not
    # enough to pause the reply) came with the sound too, once on a fresh clone's run.
    reference, _, _, _, _, _ = room
    settings = EchoRoomSettings(delay_ms=50, rt60_ms=500, seed=3)
    assert self_interruption_s(settings, reference, calibrate=True) is None, "the first reply paused on its own echo"
    bare = self_interruption_s(settings, reference, calibrate=False, guard=False)
    print(f"\nwithout the start sound (and without the longer threshold) this reply paused at {bare} s")  # not asserted


@pytest.mark.parametrize("name", ["fox_story.wav", "tea.wav"])
def test_first_replies_whose_echo_outgrew_a_line_drawn_too_soon_do_not_interrupt_themselves(name):
    # two Piper replies that paused on their echo after the start sound's fit (1.06 and 0.62 s in):
    # the line, drawn from the reply's first 30 frames of echo alone, stood at its lowest point (then -35 dB)
    # while the fit left the sound's echo 36 dB down, and the reply's leak rose to -32 dB as its
    # reverberation built up. The line now stays over what the fit left (START_LEAK_MARGIN_DB).
    reply, rate = read_wav(REPLIES_DIR / name)
    assert rate == RATE
    settings = EchoRoomSettings(delay_ms=50, rt60_ms=500, seed=3)
    stage = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller())
    assert self_interruption_s(settings, reply.astype(np.float64), calibrate=True, stage=stage) is None, \
        "the first reply paused on its own echo"
    assert stage.calibration_result == {"played": True, "fit_installed": True}
    leaks_db = stage.start_fit_leak_db
    assert leaks_db is not None and min(leaks_db) > -40.0, leaks_db  # measured -36 / -37 dB: the floor binds here


def test_a_user_who_talks_over_the_start_sound_is_heard(room):
    reference, _, _, _, _, _ = room
    settings = EchoRoomSettings(delay_ms=100, gain_db=0.0)
    stage = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller())
    sound = stage.start_calibration(RATE)
    user, _ = read_wav(SPEECH_DIR / "ps_cards_002.wav")  # a question asked at once, over the sound
    reply_start = len(user) + RATE  # the reply after it, nobody speaking over it
    far = np.zeros(reply_start + 4 * RATE)
    far[: len(sound)] = sound
    far[reply_start:] = reference[: 4 * RATE]
    delayed = np.concatenate([np.zeros(settings.delay_ms * RATE // 1000), far])
    mic = np.convolve(delayed, settings.response())[: len(far)]
    mic[: len(user)] += user
    capture = np.clip(np.round(mic), -32768, 32767).astype(np.int16)
    step = 320
    out = np.concatenate([stage.process(i, capture[i : i + step], far[i : i + step].astype(np.int16))
                          for i in range(0, len(capture) // step * step, step)])
    starts = _vad_starts(out)
    onset = speech_onset_sample(user)
    assert [s for s in starts if onset - RATE // 50 <= s < len(user)], "the user speaking over the start sound was not heard"
    assert stage.calibration_result is not None and stage.calibration_result["played"]
    # the detector draws its line from as many frames of the reply's echo as without the sound,
    # unless a fit replaced the filter (then 30: a fit changes the filter at once)
    installed = stage.calibration_result["fit_installed"]
    assert stage.near_end.line_min_frames == (FIT_DETECTOR_FRAMES if installed else stage.near_end.min_frames)
    # not asserted: that the reply after it never starts the VAD on its own echo. A fit on a sound
    # with a voice over it is not installed, and this first reply then meets an AEC3 that has heard
    # little of the room: over 16 Piper replies the VAD started 1 time here, as often as after the
    # same user's turn without the sound (in the reverberant room 4 against 6; docs/echo.md)
    heard = _energy(out[onset : onset + RATE // 2]) / _energy(user[onset : onset + RATE // 2])
    print(f"\nover the start sound: VAD {[round(1000 * (s - onset) / RATE) for s in starts if s < len(user)]} ms after the "
          f"onset, {100 * heard:.0f} % of the first 500 ms passed, fit installed: {stage.calibration_result['fit_installed']}")


def test_until_aec3_has_heard_the_room_barge_in_needs_the_longer_threshold(room):
    reference, capture, _, _, _, _ = room
    bare = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller(), calibrate=False)
    assert bare.echo_unprotected()  # nothing heard yet
    step, learning = 320, echo_cancel.AEC3_LEARNING_MS * RATE // 1000
    silent = np.zeros(step, dtype=np.int16)
    for i in range(0, RATE, step):  # a second of silence teaches AEC3 nothing
        bare.process(i, silent, silent)
    assert bare.echo_unprotected()
    heard = []  # after each step of the reply: does the stage still ask for the longer threshold?
    for i in range(0, learning + RATE, step):
        bare.process(i, capture[i : i + step], reference[i : i + step])
        heard.append(bare.echo_unprotected())
    first_protected = heard.index(False)  # once AEC3 has heard 2.5 s of the reply (its pauses do not count)
    frames = reference[: (first_protected + 1) * step].reshape(-1, 160).astype(np.float64)
    audible = np.sum(10 * np.log10(np.mean(frames**2, axis=1) / 32768.0**2 + 1e-12) >= echo_cancel.GATE_AUDIBLE_DBFS)
    assert learning // 160 <= audible < learning // 160 + 2 and not any(heard[first_protected:])
    # after the start sound AEC3 has heard the room: the usual threshold from the first reply
    calibrated = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller())
    sound = calibrated.start_calibration(RATE)
    far = np.concatenate([sound, np.zeros(RATE, dtype=np.int16)])
    for i in range(0, len(far) // step * step, step):
        calibrated.process(i, silent, far[i : i + step])
    assert calibrated.calibration_result is not None and calibrated.calibration_result["played"]
    assert not calibrated.echo_unprotected()


def _lag(out: np.ndarray, user: np.ndarray, span: slice, *, max_lag: int = 320) -> int:
    """How many samples late ``user``'s voice over ``span`` is in ``out`` (the best match)."""
    piece = user[span]
    return int(np.argmax([float(np.dot(out[span.start + lag : span.stop + lag], piece)) for lag in range(max_lag)]))


def test_the_users_voice_leaves_the_stage_on_one_clock_whichever_path_carries_it(room):
    # AEC3 returns the microphone 128 samples (8 ms) late; the double-talk path's linear residual
    # was not, so each switch between the two skipped or repeated 8 ms of the user's voice. The
    # reply stops one second into the user's words: before that the ASR hears the residual, after
    # it (the far end silent for 400 ms) AEC3's output.
    reference, capture, echo, start, length, onset = room
    stop = onset + RATE
    played = reference.copy()
    played[stop:] = 0
    room_echo = echo.copy()
    room_echo[stop + int(0.1 * RATE) :] = 0  # the echo's delay; its reverberation tail is lost in the user
    user = capture.astype(np.float64) - echo
    mic = np.clip(np.round(user + room_echo), -32768, 32767).astype(np.int16)
    _, for_asr, stage = _process_both(mic, played)
    lag = stage.latency_samples
    assert lag == 128  # AEC3's block framing at 16 kHz, as the canceller's probe measures it
    assert stage.double_talk_frames > 0 and stage.near_end.threshold_db is not None  # converged: the residual
    assert _lag(for_asr, user, slice(onset, stop)) == lag  # the residual (it was 0)
    # AEC3's output (its high-pass filter shifts the best match by a sample or two on some voices)
    assert abs(_lag(for_asr, user, slice(stop + RATE // 2, start + length - RATE // 50)) - lag) <= 2



def test_a_recorded_session_replays_to_the_same_output_and_finds_the_users_pause(room, tmp_path):
    # benchmarks.echo_replay: what the stage got, saved and run again, gives its output back exactly
    from benchmarks import echo_replay

    reference, capture, _, start, length, onset = room
    stage = EchoCancellation(MemoryOutput(RATE), canceller=EchoCanceller())
    stage.recording = []
    step = 320
    out = np.concatenate([stage.process(i, capture[i : i + step], reference[i : i + step])
                          for i in range(0, len(capture) // step * step, step)])
    path = tmp_path / "session.npz"
    echo_replay.save_recording(path, stage, [(start, length)], [echo_replay.Attempt(USER, start, onset, start + length, 100.0)])
    recording = echo_replay.load_recording(path)
    result = echo_replay.replay(recording)
    assert np.array_equal(result["output"], out)
    pause_ms = result["attempts"][0]["pause_ms"]
    assert pause_ms is not None and 0 < pause_ms < 500, pause_ms  # the user, heard over the reply
    assert result["pauses_on_echo"] == []
    pooled = echo_replay.summary([result])
    assert pooled["attempts"] == 1 and pooled["missed"] == 0 and pooled["pause_ms"]["p50"] == pause_ms
    # a variant runs on the same frames: AEC3 alone holds the user back (docs/echo.md: 390 ms or never)
    alone = echo_replay.replay(recording, make_stage=lambda **settings: echo_replay.ReplayedStage(**{**settings, "double_talk": False}))
    assert not np.array_equal(alone["output"], out)
    later = alone["attempts"][0]["pause_ms"]
    assert later is None or later > pause_ms
