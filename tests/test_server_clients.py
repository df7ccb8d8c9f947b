"""The Realtime server as real clients reach it: a browser-style subprotocol client, wss://, and
the third-party client libraries people use (Pipecat, LiveKit Agents, openai-agents), each
completing a spoken and a text turn against the real server on the real models."""

from __future__ import annotations

import ssl

import anyio
import numpy as np
import pytest
from openai import AsyncOpenAI
from server_support import Client, RawClient, RunningServer, heard_as, self_signed_certificate, speech_24k, types_of
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from realtime_pipeline.server import Engines, ServerOptions, SessionOptions

pytestmark = [pytest.mark.models, pytest.mark.anyio]

KEY = "sekrit"
SHORT = 12


@pytest.fixture(scope="module")
def server(engines: Engines):
    with RunningServer(engines, ServerOptions(api_key=KEY, session=SessionOptions(output_lead_ms=300))) as running:
        yield running


async def text_turn(client: Client, text: str, **response: object) -> dict:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create", "response": response})
    return await client.until("response.done", 120)


async def test_browser_style_client_authenticates_and_picks_the_dialect_by_subprotocol(server):
    url = f"{server.base_url}/realtime?model=gpt-realtime"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, subprotocols=["realtime", "openai-insecure-api-key.wrong"]):
            pass
    assert refused.value.response.status_code == 403
    offered = ["realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1"]
    async with ws_connect(url, subprotocols=offered) as connection:
        assert connection.subprotocol == "realtime"  # a WHATWG WebSocket needs one of its offers back
        client = RawClient(connection, "beta")  # every event validated against the beta SDK models
        created = await client.until("session.created", 30)
        assert "modalities" in created["session"]
        done = await text_turn(client, "Say hello.", modalities=["text"], max_response_output_tokens=SHORT)
        assert done["response"]["status"] == "completed"
        assert "".join(e["delta"] for e in client.events if e["type"] == "response.text.delta").strip()
        start = len(client.events)
        await client.append_audio(speech_24k("ps_goforward.wav"))
        spoken = await client.until("response.done", 180)
        events = client.since(start)
        transcript = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert heard_as(transcript["transcript"], "go forward ten meters"), transcript["transcript"]
        assert spoken["response"]["status"] == "completed"
        assert "response.audio.delta" in types_of(events)
    async with ws_connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as connection:
        created = await RawClient(connection, "ga").until("session.created", 30)  # no beta subprotocol: GA
        assert created["session"]["type"] == "realtime"


async def test_null_means_not_given_in_every_optional_field(server):
    """What LiveKit and other clients send: every optional field present, as null."""
    client_sdk = AsyncOpenAI(api_key=KEY, websocket_base_url=server.base_url)
    async with client_sdk.realtime.connect(model="gpt-realtime") as connection:
        client = Client(connection, "ga")
        await client.until("session.created", 30)
        await client.send_raw('{"type": "session.update", "session": {"type": "realtime", "instructions": null, "output_modalities": null,'
                              ' "tools": null, "tool_choice": null, "max_output_tokens": null, "audio": {"input": {"format": null,'
                              ' "turn_detection": {"type": "server_vad", "threshold": null, "silence_duration_ms": null}},'
                              ' "output": {"format": null, "voice": null}}}}')
        session = (await client.until("session.updated", 30))["session"]
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # null fields kept their values
        await client.send_raw('{"type": "conversation.item.create", "previous_item_id": null, "item": {"id": null, "type": "message",'
                              ' "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}}')
        await client.until("conversation.item.added", 30)
        await client.send_raw('{"type": "response.create", "response": {"instructions": null, "output_modalities": ["text"],'
                              ' "tools": null, "tool_choice": null, "max_output_tokens": 8, "metadata": null, "conversation": null}}')
        done = await client.until("response.done", 120)
        assert done["response"]["status"] == "completed"


async def test_wss_with_a_self_signed_certificate(engines, tmp_path):
    certfile, keyfile = self_signed_certificate(tmp_path)
    with RunningServer(engines, ServerOptions(), ssl_certfile=certfile, ssl_keyfile=keyfile) as tls:
        assert tls.base_url.startswith("wss://")
        context = ssl.create_default_context(cafile=certfile)
        sdk = AsyncOpenAI(api_key="local", websocket_base_url=tls.base_url)
        async with sdk.realtime.connect(model="gpt-realtime", websocket_connection_options={"ssl": context}) as connection:  # type: ignore[typeddict-unknown-key]
            client = Client(connection, "ga")
            await client.until("session.created", 30)
            done = await text_turn(client, "Say hello.", output_modalities=["text"], max_output_tokens=8)
            assert done["response"]["status"] == "completed"
        with pytest.raises(ssl.SSLCertVerificationError):  # really TLS: an unknown certificate is refused
            async with ws_connect(f"{tls.base_url}/realtime", ssl=ssl.create_default_context()):
                pass


async def test_sessions_beyond_the_limit_are_refused_with_an_error_and_close_code(engines):
    from websockets.exceptions import ConnectionClosed

    with RunningServer(engines, ServerOptions(max_sessions=1)) as limited:
        url = f"{limited.base_url}/realtime"
        async with ws_connect(url) as first:
            client = RawClient(first, "ga")
            limits = await client.until("rate_limits.updated", 30)
            assert {"name": "requests", "limit": 1, "remaining": 0, "reset_seconds": 0.0} in limits["rate_limits"]
            async with ws_connect(url) as second:
                refused = RawClient(second, "ga")
                error = await refused.next(30)
                assert error["type"] == "error" and error["error"]["code"] == "session_limit_reached"
                assert "1 sessions" in error["error"]["message"]
                with pytest.raises(ConnectionClosed) as closed:
                    await refused.next(30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            done = await text_turn(client, "Say hello.", output_modalities=["text"], max_output_tokens=4)
            assert done["response"]["status"] == "completed"  # the admitted session is served as before
        for _ in range(100):  # the slot frees once the first session's handler has returned
            async with ws_connect(url) as again:
                event = await RawClient(again, "ga").next(30)
                if event["type"] == "session.created":
                    break
            await anyio.sleep(0.05)
        else:
            raise AssertionError("the freed session slot was never given to a new connection")


# -- third-party client libraries -------------------------------------------------------------
async def _agents_until(session, server_event: str, timeout_s: float = 180.0) -> list:
    """openai-agents session events until the raw server event ``server_event`` (errors fail)."""
    seen = []
    with anyio.fail_after(timeout_s):
        async for event in session:
            seen.append(event)
            assert event.type != "error", f"openai-agents reported an error: {event.error}"
            if event.type == "raw_model_event" and event.data.type == "raw_server_event" and event.data.data.get("type") == server_event:
                return seen
    raise AssertionError(f"the session ended before {server_event}")


async def test_openai_agents_realtime_runner_spoken_and_text_turns(server):
    agents_realtime = pytest.importorskip("agents.realtime", reason="the clients extra (openai-agents)")
    agent = agents_realtime.RealtimeAgent(name="assistant", instructions="Answer in one short sentence.")
    runner = agents_realtime.RealtimeRunner(agent, config={"model_settings": {"max_output_tokens": SHORT}})
    session = await runner.run(model_config={"url": f"{server.base_url}/realtime?model=gpt-realtime", "api_key": KEY})
    async with session:
        await _agents_until(session, "session.updated", 30)
        await session.send_message("Say hello.")
        text_events = await _agents_until(session, "response.done")
        assert any(e.type == "audio" and e.audio.data for e in text_events)  # the reply was spoken
        speech = speech_24k("ps_goforward.wav")
        silence = np.zeros(24 * 1200, dtype=np.int16)
        for piece in np.array_split(np.concatenate([np.zeros(24 * 300, dtype=np.int16), speech, silence]), 40):
            await session.send_audio(piece.astype("<i2").tobytes())
        spoken = await _agents_until(session, "response.done")
    transcripts = [e.data.data["transcript"] for e in spoken if e.type == "raw_model_event" and e.data.type == "raw_server_event"
                   and e.data.data.get("type") == "conversation.item.input_audio_transcription.completed"]
    assert transcripts and heard_as(transcripts[-1], "go forward ten meters"), transcripts
    assert any(e.type == "audio" and e.audio.data for e in spoken)


async def _livekit_generation(generation) -> tuple[str, int]:
    """Read a LiveKit generation: its text and how many audio samples it carried."""
    text, samples = [], [0]

    async def read_message(message) -> None:
        async def read_text() -> None:
            async for piece in message.text_stream:
                text.append(str(piece))

        async def read_audio() -> None:
            async for frame in message.audio_stream:
                samples[0] += frame.samples_per_channel

        async with anyio.create_task_group() as group:
            group.start_soon(read_text)
            group.start_soon(read_audio)

    async for message in generation.message_stream:
        await read_message(message)
    return "".join(text), samples[0]


async def test_livekit_realtime_model_spoken_and_text_turns(server):
    livekit_openai = pytest.importorskip("livekit.plugins.openai", reason="the clients extra (livekit-plugins-openai)")
    import aiohttp
    from livekit import rtc

    async with aiohttp.ClientSession() as http:
        model = livekit_openai.realtime.RealtimeModel(model="gpt-realtime", base_url=server.base_url, api_key=KEY, http_session=http)
        model.update_options(max_response_output_tokens=SHORT)
        session = model.session()
        server_events: list[dict] = []
        generations: list = []
        errors: list = []
        session.on("openai_server_event_received", server_events.append)
        session.on("generation_created", generations.append)
        session.on("error", errors.append)
        try:
            generation = await session.generate_reply(instructions="Say hello.")
            with anyio.fail_after(120):
                text, samples = await _livekit_generation(generation)
            assert text.strip() and samples > 24_000 * 0.3, (text, samples)  # generate_reply works (instructions were never null-safe)
            speech = speech_24k("ps_goforward.wav")
            audio = np.concatenate([np.zeros(24 * 300, dtype=np.int16), speech, np.zeros(24 * 1200, dtype=np.int16)])
            before = len(generations)
            for start in range(0, len(audio), 2400):
                chunk = audio[start : start + 2400]
                session.push_audio(rtc.AudioFrame(chunk.astype("<i2").tobytes(), 24_000, 1, len(chunk)))
                await anyio.sleep(0.02)
            with anyio.fail_after(180):
                while len(generations) == before:
                    await anyio.sleep(0.05)
                spoken_text, spoken_samples = await _livekit_generation(generations[-1])
            assert spoken_samples > 24_000 * 0.3 and spoken_text.strip()
            transcripts = [e["transcript"] for e in server_events if e.get("type") == "conversation.item.input_audio_transcription.completed"]
            assert transcripts and heard_as(transcripts[-1], "go forward ten meters"), transcripts
            assert not errors, errors
            assert not [e for e in server_events if e.get("type") == "error"]
        finally:
            await session.aclose()
            await model.aclose()


async def test_pipecat_openai_realtime_llm_service_spoken_and_text_turns(server):
    realtime_llm = pytest.importorskip("pipecat.services.openai.realtime.llm", reason="pipecat-ai and the clients extra")
    from pipecat.frames.frames import EndFrame, ErrorFrame, InputAudioRawFrame, LLMContextFrame, TranscriptionFrame, TTSAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.services.openai.realtime import events

    class Collector(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.frames: list = []

        async def process_frame(self, frame, direction) -> None:
            await super().process_frame(frame, direction)
            self.frames.append(frame)
            await self.push_frame(frame, direction)

    settings = realtime_llm.OpenAIRealtimeLLMService.Settings(
        model="gpt-realtime", system_instruction="Answer in one short sentence.",
        session_properties=events.SessionProperties(max_output_tokens=SHORT),
    )
    service = realtime_llm.OpenAIRealtimeLLMService(api_key=KEY, base_url=f"{server.base_url}/realtime", settings=settings)
    upstream, downstream = Collector(), Collector()
    task = PipelineTask(Pipeline([upstream, service, downstream]), params=PipelineParams(audio_in_sample_rate=24_000, audio_out_sample_rate=24_000))

    def audio_frames(start: int) -> int:
        return sum(1 for f in downstream.frames[start:] if isinstance(f, TTSAudioRawFrame))

    async def until(condition, timeout_s: float) -> None:
        with anyio.fail_after(timeout_s):
            while not condition():
                errors = [f for f in upstream.frames + downstream.frames if isinstance(f, ErrorFrame)]
                assert not errors, errors
                await anyio.sleep(0.05)

    async def drive() -> None:
        await task.queue_frame(LLMContextFrame(LLMContext(messages=[{"role": "user", "content": "Say hello."}])))
        await until(lambda: audio_frames(0) > 0 and service._current_assistant_response is None, 120)
        start = len(downstream.frames)
        speech = speech_24k("ps_goforward.wav")
        audio = np.concatenate([np.zeros(24 * 300, dtype=np.int16), speech, np.zeros(24 * 1200, dtype=np.int16)])
        for offset in range(0, len(audio), 2400):
            await task.queue_frame(InputAudioRawFrame(audio[offset : offset + 2400].astype("<i2").tobytes(), 24_000, 1))
            await anyio.sleep(0.02)
        await until(lambda: any(isinstance(f, TranscriptionFrame) for f in upstream.frames) and audio_frames(start) > 0, 180)
        await until(lambda: service._current_assistant_response is None, 120)
        await task.queue_frame(EndFrame())

    async with anyio.create_task_group() as group:
        group.start_soon(drive)
        with anyio.fail_after(400):
            await PipelineRunner(handle_sigint=False).run(task)
    transcripts = [f.text for f in upstream.frames if isinstance(f, TranscriptionFrame)]
    assert transcripts and heard_as(transcripts[-1], "go forward ten meters"), transcripts
