"""RemoteASR and RemoteTTS against a real speech server on loopback (tests/speech_server.py:
faster-whisper and Piper behind the OpenAI audio endpoints)."""

from __future__ import annotations

import anyio
import pytest

from conftest import SPEECH_DIR, normalize_text
from realtime_pipeline import CancelToken, Conversation, MemoryOutput, ResponseStatus, StageContext, Tracer, WavFileSource, voice_pipeline
from realtime_pipeline.audio import speech_level_dbfs
from realtime_pipeline.response import Response
from realtime_pipeline.server.app import free_port
from realtime_pipeline.stages.remote_speech import RemoteASR, RemoteSpeechError, RemoteTTS
from speech_server import SpeechServer

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def speech_server(asr, tts):
    with SpeechServer(asr, tts) as server:
        yield server


@pytest.mark.anyio
async def test_a_spoken_turn_is_transcribed_and_answered_aloud_by_the_remote_speech_models(speech_server, llm):
    remote_asr = RemoteASR(speech_server.base_url)
    remote_tts = RemoteTTS(speech_server.base_url, output_sample_rate_hz=16_000)
    output = MemoryOutput(16_000)
    source = WavFileSource([SPEECH_DIR / "mfa_thoughts.wav"], realtime=False)
    pipeline = voice_pipeline(source, output, asr=remote_asr, llm=llm, tts=remote_tts)
    try:
        with anyio.fail_after(120):
            await pipeline.run()
    finally:
        await remote_asr.aclose()
        await remote_tts.aclose()
    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert len(responses) == 1 and responses[0].status is ResponseStatus.DONE
    assert "thousand thoughts" in normalize_text(responses[0].user_text)
    audio = output.audio(responses[0].id)
    assert len(audio) / 16_000 > 0.5 and speech_level_dbfs(audio, 16_000) > -30
    assert {"transcriptions", "speech"} <= set(speech_server.requests)


@pytest.mark.anyio
@pytest.mark.parametrize("stage", [RemoteASR, RemoteTTS])
async def test_a_wrong_port_fails_at_setup_naming_the_url(stage):
    url = f"http://127.0.0.1:{free_port()}/v1"
    remote = stage(url, connect_timeout_s=1.0)
    with pytest.raises(RemoteSpeechError, match=url.replace(".", r"\.")):
        await remote.setup(StageContext(Conversation(), Tracer()))
    await remote.aclose()


def test_an_error_answer_names_the_url_and_the_status(speech_server):
    remote = RemoteTTS(speech_server.base_url)
    try:
        with pytest.raises(RemoteSpeechError, match=r"/v1/audio/speech answered HTTP 400: .*needs an input"):
            remote.request("", CancelToken())
        assert remote.synthesize("", CancelToken()).size == 0  # at run time: logged, the chunk is not spoken
    finally:
        anyio.run(remote.aclose)
