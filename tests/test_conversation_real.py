"""Whole conversations on the real models and real speech."""

from __future__ import annotations

import jiwer
import pytest

from conftest import SPEECH_DIR, load_transcripts, normalize_text
from realtime_pipeline import (
    MemoryOutput,
    Pipeline,
    PiperTTS,
    ResponseStatus,
    Stage,
    TranscriptFinal,
    WavFileSource,
    WebRTCVAD,
    read_wav,
    resample,
    voice_pipeline,
)
from realtime_pipeline.audio import speech_level_dbfs
from realtime_pipeline.response import Response

pytestmark = pytest.mark.models


@pytest.mark.anyio
async def test_a_real_spoken_turn_gets_a_spoken_reply_that_says_the_reply_text(asr, llm, tts):
    output = MemoryOutput(tts.output_sample_rate_hz, paced=True)
    source = WavFileSource([SPEECH_DIR / "mfa_thoughts.wav"], realtime=True)
    pipeline = voice_pipeline(source, output, asr=asr, llm=llm, tts=tts)
    await pipeline.run()

    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert len(responses) == 1
    response = responses[0]
    assert response.status is ResponseStatus.DONE
    assert "thousand thoughts" in normalize_text(response.user_text)
    assert response.text.strip()

    audio = output.audio(response.id)
    rate = output.sample_rate_hz
    assert len(audio) / rate > 0.5
    assert speech_level_dbfs(audio, rate) > -30
    heard = normalize_text(asr.transcribe(resample(audio, rate, 16000)))
    said = normalize_text(response.text)
    assert jiwer.wer(said, heard) < 0.5, (said, heard)

    trace = pipeline.tracer.turn(response.turn_id)
    added = trace.critical_path_ms()  # what each stage added to the wait (work done ahead adds 0)
    totals = trace.breakdown_ms()
    assert set(added) == {"endpoint", "asr", "llm", "tts", "playback"}
    assert all(value >= 0 for value in added.values()), added
    assert totals["voice_to_voice"] > 0 and totals["after_endpoint"] >= 0
    assert abs(sum(added.values()) - totals["voice_to_voice"]) < 1.0


@pytest.mark.anyio
async def test_two_turns_share_the_history(asr, llm):
    tts = PiperTTS(output_sample_rate_hz=16000)
    output = MemoryOutput(16000)
    source = WavFileSource([SPEECH_DIR / "ps_goforward.wav", SPEECH_DIR / "ps_cards_001.wav"], realtime=False)
    pipeline = voice_pipeline(source, output, asr=asr, llm=llm, tts=tts)
    await pipeline.run()
    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert [r.status for r in responses] == [ResponseStatus.DONE, ResponseStatus.DONE]
    messages = pipeline.conversation.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == responses[0].text
    assert len(output.audio()) > 0


class Finals(Stage):
    name = "finals"

    def __init__(self):
        self.finals: list[TranscriptFinal] = []

    async def run(self, ctx, inbox, outbox):
        async for frame in inbox:
            if isinstance(frame, TranscriptFinal):
                self.finals.append(frame)


def test_live_transcripts_are_as_accurate_as_transcribing_whole_files(asr):
    """VAD + streaming ASR over all 30 recordings, as one stream with silences between them.

    Fed as fast as the stages take it (in real time this test took 182 s of the suite's ~9 min):
    what it checks, how the VAD cuts the stream into turns and what the ASR makes of each, does not
    depend on the pacing; partials on real-time input are
    test_streaming_asr_gives_partials_while_speaking_and_an_accurate_final's."""
    import anyio

    references = load_transcripts()
    names = sorted(references)
    whole = {name: normalize_text(asr.transcribe(read_wav(SPEECH_DIR / name)[0])) for name in names}

    source = WavFileSource([SPEECH_DIR / name for name in names], realtime=False)
    finals = Finals()
    anyio.run(Pipeline([source, WebRTCVAD(), asr, finals]).run)

    # A file may be split into several turns by a pause: join them by where each turn ended.
    live = {name: [] for name in names}
    starts = source.turn_start_samples
    for final in finals.finals:
        end_sample = final.audio_end_ms * 16
        index = max(i for i, start in enumerate(starts) if start <= end_sample)
        live[names[index]].append(final.text)
    live_text = {name: normalize_text(" ".join(texts)) for name, texts in live.items()}

    refs = [references[name] for name in names]
    wer_whole = jiwer.wer(refs, [whole[name] for name in names])
    wer_live = jiwer.wer(refs, [live_text[name] for name in names])
    split_files = sum(1 for texts in live.values() if len(texts) > 1)
    print(f"\nWER whole files: {wer_whole:.3f}  live pipeline: {wer_live:.3f}  "
          f"({len(finals.finals)} turns for {len(names)} files, {split_files} files split by a pause)")
    assert wer_live <= wer_whole + 0.02
