"""Each stage on its real engine, on real speech."""

from __future__ import annotations

import re

import anyio
import jiwer
import numpy as np
import pytest

from conftest import SPEECH_DIR, load_transcripts, normalize_text
from realtime_pipeline import (
    CancelToken,
    Conversation,
    LlamaLLM,
    MemorySource,
    ModelNotFoundError,
    Pipeline,
    PiperTTS,
    SpeechPaused,
    SpeechStarted,
    SpeechStopped,
    Stage,
    StageContext,
    StageError,
    TextDelta,
    Tracer,
    TranscriptFinal,
    TranscriptPartial,
    VADSettings,
    WavFileSource,
    WebRTCVAD,
    WhisperASR,
    read_wav,
)
from realtime_pipeline.audio import speech_level_dbfs

pytestmark = pytest.mark.models


class Events(Stage):
    name = "events"

    def __init__(self):
        self.frames = []

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            if not hasattr(frame, "samples"):
                self.frames.append(frame)


def energy_bounds_ms(samples: np.ndarray, rate: int) -> tuple[int, int]:
    """First and last 10 ms window clearly above the noise floor."""
    windows = samples[: len(samples) // (rate // 100) * (rate // 100)].reshape(-1, rate // 100).astype(float)
    level = 20 * np.log10(np.sqrt(np.mean(windows**2, axis=1)) + 1e-9)
    loud = np.flatnonzero(level > level.max() - 35)
    return int(loud[0] * 10), int((loud[-1] + 1) * 10)


@pytest.mark.anyio
async def test_vad_finds_the_utterance_where_the_energy_says_it_is():
    path = SPEECH_DIR / "ps_goforward.wav"
    samples, rate = read_wav(path)
    onset_ms, offset_ms = energy_bounds_ms(samples, rate)
    source = WavFileSource([path], realtime=False, wait_for_reply=False, lead_silence_ms=0)
    events = Events()
    await Pipeline([source, WebRTCVAD(), events]).run()
    started = [f for f in events.frames if isinstance(f, SpeechStarted)]
    stopped = [f for f in events.frames if isinstance(f, SpeechStopped)]
    assert len(started) == 1 and len(stopped) == 1
    assert any(isinstance(f, SpeechPaused) for f in events.frames)
    # the start includes up to prefix_padding_ms (300) before the first voiced frame
    assert onset_ms - 450 <= started[0].audio_start_ms <= onset_ms + 100
    # webrtcvad may call a final unvoiced consonant ("meters") silence: allow that much early
    assert offset_ms - 500 <= stopped[0].audio_end_ms <= offset_ms + 100


@pytest.mark.anyio
async def test_streaming_asr_gives_partials_while_speaking_and_an_accurate_final(asr):
    name = "ps_librivox_0870.wav"  # 7 s: long enough for partials
    source = WavFileSource([SPEECH_DIR / name], realtime=True, wait_for_reply=True)
    events = Events()
    pipeline = Pipeline([source, WebRTCVAD(), asr, events])
    await pipeline.run()
    partials = [f for f in events.frames if isinstance(f, TranscriptPartial)]
    finals = [f for f in events.frames if isinstance(f, TranscriptFinal)]
    assert partials, "no partial transcript while the user spoke"
    assert finals
    assert all(p.text for p in partials)
    text = normalize_text(" ".join(f.text for f in finals))
    reference = load_transcripts()[name]
    assert jiwer.wer(reference, text) < 0.25, text
    # every partial came before the final
    assert events.frames.index(partials[-1]) < events.frames.index(finals[0])


def test_whisper_transcribes_real_speech(asr):
    samples, _ = read_wav(SPEECH_DIR / "ps_librivox_0880.wav")
    text = normalize_text(asr.transcribe(samples))
    assert jiwer.wer("he was not an ill disposed young man", text) < 0.4, text


def test_llm_streams_a_reply_and_stops_between_tokens_when_cancelled(llm):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    pieces_of_reply = list(llm.stream_reply(messages, CancelToken(), max_tokens=30))
    # Behaviour, not the tiny model's knowledge or language (it once answered in French):
    # a reply with words, streamed piece by piece, ending within its token budget.
    assert len(pieces_of_reply) > 1
    assert re.search(r"\w{2,}", "".join(pieces_of_reply))
    assert len(pieces_of_reply) <= 30

    token = CancelToken()
    pieces = []
    long_ask = [messages[0], {"role": "user", "content": "Write a long story about a dragon."}]
    for piece in llm.stream_reply(long_ask, token, max_tokens=100):
        pieces.append(piece)
        if len(pieces) == 3:
            token.cancel("turn_detected")
    assert len(pieces) == 3


@pytest.mark.anyio
async def test_llm_stage_answers_a_final_transcript_with_text_deltas(llm):
    class Finals(Stage):
        name = "finals"

        async def run(self, ctx, inbox, outbox):
            await outbox.send(TranscriptFinal(1, "What is the capital of France?", 0, 2000))

    events = Events()
    pipeline = Pipeline([Finals(), llm, events])
    await pipeline.run()
    deltas = [f for f in events.frames if isinstance(f, TextDelta)]
    assert len(deltas) > 1
    response = deltas[0].response
    assert "".join(d.text for d in deltas) == response.text
    assert re.search(r"\w{2,}", response.text)  # words, in whatever language the tiny model chose


def test_tts_speaks_words_the_asr_hears_again_at_a_consistent_loudness(tts, asr):
    text = "the capital of France is Paris, a beautiful city on the river Seine."
    first = tts.synthesize("Hello there,", CancelToken())
    second = tts.synthesize(text, CancelToken())
    assert first.dtype == np.int16 and second.dtype == np.int16
    rate = tts.output_sample_rate_hz
    first_db, second_db = speech_level_dbfs(first, rate), speech_level_dbfs(second, rate)
    assert first_db > -30 and second_db > -30
    for audio, level_db in ((first, first_db), (second, second_db)):
        peak = int(np.abs(audio).max()) / 32768
        # each chunk at the target level, or as loud as the 0.98 peak limit lets it be: Piper's
        # synthesis varies from call to call, and a peaky one came out at -21.6 dBFS (a fresh
        # clone's CI run, 2026-12-05; the test asked for the two chunks within 1.5 dB then). Over
        # 60 syntheses: on target within 0.3 dB, or held by the limit (peak 0.98, down to -21.9 dBFS)
        assert abs(level_db - tts.target_dbfs) < 0.5 or (level_db < tts.target_dbfs and peak >= 0.97), (level_db, peak)
        assert int(np.abs(audio).max()) < 32767  # limited, not clipped
    from realtime_pipeline import resample

    heard = normalize_text(asr.transcribe(resample(second, tts.output_sample_rate_hz, 16000)))
    # Piper varies between runs and tiny.en mishears names ("pairs", "scene"): most words, not each one
    assert len({"capital", "paris", "beautiful", "city", "river"} & set(heard.split())) >= 3, heard
    assert jiwer.wer(normalize_text(text), heard) < 0.5, heard


def test_tts_stops_when_cancelled_before_synthesis(tts):
    token = CancelToken()
    token.cancel()
    assert tts.synthesize("This should never be spoken.", token).size == 0


def test_unreadable_models_fail_at_setup_naming_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file")
    stage = LlamaLLM(bad)
    with pytest.raises(ModelNotFoundError, match="broken.gguf"):
        anyio.run(stage.setup, StageContext(Conversation(), Tracer()))

    voice = tmp_path / "broken.onnx"
    voice.write_bytes(b"not onnx")
    voice.with_name("broken.onnx.json").write_text('{"audio": {"sample_rate": 22050}}')
    with pytest.raises(ModelNotFoundError, match="broken.onnx"):
        anyio.run(PiperTTS(voice).setup, StageContext(Conversation(), Tracer()))

    whisper_dir = tmp_path / "whisper"
    whisper_dir.mkdir()
    (whisper_dir / "model.bin").write_bytes(b"junk")
    with pytest.raises(ModelNotFoundError, match="whisper"):
        anyio.run(WhisperASR(whisper_dir).setup, StageContext(Conversation(), Tracer()))


@pytest.mark.anyio
async def test_a_model_failing_at_setup_stops_the_pipeline_naming_the_stage(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"junk")
    source = WavFileSource([SPEECH_DIR / "ps_cards_001.wav"], realtime=False)
    with pytest.raises(StageError) as caught:
        await Pipeline([source, LlamaLLM(bad)]).run()
    assert caught.value.stage_name == "llm"


@pytest.mark.models
def test_the_first_chunk_of_a_real_piper_reply_starts_with_its_sound(tts):
    from realtime_pipeline.audio import LEADING_SILENCE_THRESHOLD, trim_leading_silence

    rate = tts.output_sample_rate_hz
    audio = tts.synthesize("The capital of France is Paris.", CancelToken())
    trimmed = trim_leading_silence(audio, rate)
    first_sound = int(np.flatnonzero(np.abs(trimmed.astype(np.float32)) > LEADING_SILENCE_THRESHOLD * 32768)[0])
    assert first_sound <= 5 * rate // 1000
    assert len(audio) - len(trimmed) > 10 * rate // 1000  # the voice's lead-in was there and is gone


@pytest.mark.anyio
async def test_the_vad_never_calls_frames_under_its_level_floor_voiced():
    # webrtcvad ignores the level (it called the echo canceller's -90 dBFS muted frames voiced
    # in an echo-room run); min_level_dbfs is what keeps such frames from starting a turn
    samples, rate = read_wav(SPEECH_DIR / "ps_goforward.wav")
    quiet = samples.astype(np.float64) * 10 ** (-65 / 20) * 32768 / np.sqrt(np.mean(samples.astype(np.float64) ** 2))
    quiet = np.round(quiet).astype(np.int16)  # the whole recording at -65 dBFS RMS

    async def starts(settings: VADSettings) -> int:
        events = Events()
        source = MemorySource([quiet], rate, realtime=False, wait_for_reply=False, lead_silence_ms=0)
        await Pipeline([source, WebRTCVAD(settings), events]).run()
        return sum(isinstance(f, SpeechStarted) for f in events.frames)

    assert await starts(VADSettings()) == 1  # -65 dBFS is above the default floor: still speech
    assert await starts(VADSettings(min_level_dbfs=-45.0)) == 0  # every frame is under -45 dBFS
    with pytest.raises(ValueError, match="min_level_dbfs"):
        VADSettings(min_level_dbfs=3.0)
