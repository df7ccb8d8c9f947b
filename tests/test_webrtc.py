"""WebRTC calls with the official SDK's ``calls.create`` and an aiortc peer, on the real models.

The peer's microphone track says real speech (tests/data/speech); the reply
comes back on its audio track and is re-transcribed with the project's
Whisper. Every event on the ``oai-events`` channel is validated strictly
against the SDK's model for its type (server_support.validate_event).
Loopback only: the server answers with its 127.0.0.1 candidate, the peer
gathers on 127.0.0.1 and no STUN server is configured on either side.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import anyio
import httpx2 as httpx  # the HTTP client the openai SDK brings
import jiwer
import numpy as np
import openai
import pytest
from conftest import SPEECH_DIR, normalize_text
from openai import AsyncOpenAI
from server_support import RunningServer, validate_event

from realtime_pipeline.audio import read_wav, resample
from realtime_pipeline.server import Engines, ServerOptions, SessionOptions

aiortc = pytest.importorskip("aiortc", reason="the webrtc extra (aiortc) is not installed")
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from webrtc_support import Recorder, SpeechMicrophone  # noqa: E402

from aiortc.rtp import RtpPacket  # noqa: E402

from realtime_pipeline.server.rtc_call import MicrophoneJitterBuffer, ice_candidates_on  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.anyio]


@pytest.fixture(scope="module")
def server(engines: Engines):
    with RunningServer(engines, ServerOptions(api_key="local", session=SessionOptions(output_lead_ms=300))) as running:
        yield running


def http_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.port}/v1"


def registry(server: RunningServer) -> Any:
    return server.server.config.app.state.webrtc_calls


def server_loop(server: RunningServer) -> asyncio.AbstractEventLoop:
    return server.server.servers[0].get_loop()


def speech(name: str) -> tuple[np.ndarray, int]:
    return read_wav(SPEECH_DIR / name)


class Peer:
    """The client side of a call: an aiortc peer with a speaking microphone, the events channel and a recorder."""

    def __init__(self, dialect: str = "ga") -> None:
        self.dialect = dialect
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = SpeechMicrophone()
        self.recorder = Recorder()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._arrived = asyncio.Condition()
        self.channel = self.pc.createDataChannel("oai-events")
        self.pc.addTrack(self.mic)
        self.pc.on("track", self.recorder.start)
        self.channel.on("message", self._on_message)

    def _on_message(self, message: str) -> None:
        data = json.loads(message)
        validate_event(data, self.dialect)
        self.events.append((time.monotonic(), data))

        async def notify() -> None:
            async with self._arrived:
                self._arrived.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def offer(self) -> str:
        with ice_candidates_on("127.0.0.1"):  # loopback only
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def until(self, event_type: str, timeout_s: float = 120.0, *, after: int = 0, **match: Any) -> tuple[float, dict[str, Any]]:
        """The first event of ``event_type`` (from index ``after``) whose fields equal ``match``."""
        with anyio.fail_after(timeout_s):
            async with self._arrived:
                while True:
                    for at, event in self.events[after:]:
                        if event["type"] == event_type and all(event.get(k) == v for k, v in match.items()):
                            return at, event
                        assert event["type"] != "error", f"error while waiting for {event_type}: {event}"
                    await self._arrived.wait()

    def types(self, after: int = 0) -> list[str]:
        return [event["type"] for _, event in self.events[after:]]


def _pool_thread(name: str) -> bool:
    return name.startswith(("AnyIO worker thread", "asyncio_", "ThreadPoolExecutor"))


def reply_words_heard(heard: str, reply: str) -> float:
    """Share of the reply's words found in the re-transcription of its audio."""
    words = normalize_text(reply).split()
    found = set(normalize_text(heard).split())
    return sum(word in found for word in words) / max(1, len(words))


async def test_sdk_call_spoken_turn_barge_in_and_hang_up(server, engines):
    threads_before = {t.ident for t in threading.enumerate()}
    client = AsyncOpenAI(api_key="local", base_url=http_url(server))
    peer = Peer("ga")
    raw = await client.realtime.calls.with_raw_response.create(
        sdp=await peer.offer(),
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "Answer in one short sentence.",
                 "max_output_tokens": 16},
    )
    assert raw.status_code == 201
    assert raw.headers["content-type"].startswith("application/sdp")
    call_id = raw.headers["location"].rsplit("/", 1)[-1]
    assert raw.headers["location"] == f"/v1/realtime/calls/{call_id}" and call_id.startswith("rtc_")
    answer = raw.http_response.text
    assert "a=candidate:" in answer and " 127.0.0.1 " in answer  # the bound address, nothing else
    assert all(" 127.0.0.1 " in line for line in answer.splitlines() if line.startswith("a=candidate:"))
    audio_section = answer.split("m=audio", 1)[1].split("\r\nm=", 1)[0]
    assert "a=ptime:10" in audio_section.split("\r\n")  # the microphone's packet time (Chromium applies it)
    await peer.accept(answer)
    _, created = await peer.until("session.created", 30)
    assert created["session"]["model"] == "gpt-realtime"
    assert created["session"]["instructions"] == "Answer in one short sentence."  # the call's session object
    assert created["session"]["max_output_tokens"] == 16

    # -- a spoken turn: the microphone track says a real sentence ------------------------
    samples, rate = speech("ps_librivox_0880.wav")
    peer.mic.say(np.zeros(rate // 2, dtype=np.int16), rate)
    peer.mic.say(samples, rate)
    _, transcript = await peer.until("conversation.item.input_audio_transcription.completed", 60)
    assert jiwer.wer("he was not an ill disposed young man", normalize_text(transcript["transcript"])) <= 0.34, transcript
    started_at, started = await peer.until("output_audio_buffer.started", 120)
    _, done = await peer.until("response.done", 120)
    assert done["response"]["status"] == "completed" and done["response"]["id"] == started["response_id"]
    stopped_at, _ = await peer.until("output_audio_buffer.stopped", 30, response_id=started["response_id"])
    types = peer.types()
    assert types.index("response.content_part.added") < types.index("output_audio_buffer.started")
    assert "response.output_audio.delta" not in types  # the audio is on the track, not in events
    reply_text = done["response"]["output"][0]["content"][0]["transcript"]
    assert reply_text.strip()
    await anyio.sleep(0.5)  # the jitter buffer's tail
    reply = peer.recorder.between(started_at - 0.1, stopped_at + 0.5)
    assert len(reply) > 0.3 * 48_000
    rms = float(np.sqrt(np.mean(reply.astype(np.float64) ** 2)))
    assert rms > 300, f"the reply track is (nearly) silent: rms {rms:.0f}"
    heard = await anyio.to_thread.run_sync(engines.asr.transcribe, resample(reply, 48_000, 16_000))
    assert reply_words_heard(heard, reply_text) >= 0.5, (heard, reply_text)

    # -- barge-in: speak over a long reply ------------------------------------------------
    mark = len(peer.events)
    peer.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "server_vad", "create_response": False, "interrupt_response": True}}}}})
    await peer.until("session.updated", 30, after=mark)
    peer.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story about a dragon."}]}})
    peer.send({"type": "response.create", "response": {"max_output_tokens": 200}})
    _, long_started = await peer.until("output_audio_buffer.started", 60, after=mark)
    samples, rate = speech("mfa_thoughts.wav")
    spoken_s = peer.mic.say(samples, rate)
    said_at = time.monotonic()
    cleared_at, cleared = await peer.until("output_audio_buffer.cleared", 30, after=mark)
    assert cleared["response_id"] == long_started["response_id"]
    _, cancelled = await peer.until("response.done", 30, after=mark)
    assert cancelled["response"]["id"] == long_started["response_id"]
    assert cancelled["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    await anyio.sleep(max(0.0, said_at + spoken_s - time.monotonic()))
    # after the clear (and the browser-like jitter buffer of the peer) the track carries silence
    after = peer.recorder.between(cleared_at + 0.3, said_at + spoken_s)
    assert len(after) > 0.5 * 48_000
    assert np.abs(after.astype(np.int32)).max() < 300, "reply audio went on after output_audio_buffer.cleared"
    assert "output_audio_buffer.stopped" not in peer.types(mark)

    # -- hang-up: the peer closes; the server ends the session and frees everything -----
    await peer.pc.close()
    with anyio.fail_after(30):
        while call_id in registry(server).calls:
            await anyio.sleep(0.05)

    async def leftover_tasks() -> list[str]:
        names = []
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            where = getattr(coro, "__qualname__", "") + " " + str(getattr(getattr(coro, "cr_code", None), "co_filename", ""))
            if any(key in where for key in ("aiortc", "aioice", "rtc_call", "RealtimeSession")):
                names.append(where)
        return names

    with anyio.fail_after(10):
        while await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(leftover_tasks(), server_loop(server))):
            await anyio.sleep(0.1)
    new = ["?"]
    for _ in range(100):  # aiortc's decoder threads end with the call (worker pools are not the call's)
        new = [t.name for t in threading.enumerate() if t.ident not in threads_before and not _pool_thread(t.name)]
        if not new:
            break
        await anyio.sleep(0.1)
    assert not new, f"threads left by the call: {new}"
    await client.close()


async def test_beta_form_raw_sdp_and_hangup_endpoint(server):
    peer = Peer("beta")
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{http_url(server)}/realtime?model=gpt-4o-realtime-preview", content=await peer.offer(),
                                headers={"Authorization": "Bearer local", "Content-Type": "application/sdp"})
        assert reply.status_code == 201, reply.text
        await peer.accept(reply.text)
        _, created = await peer.until("session.created", 30)  # beta shapes (validated strictly)
        assert created["session"]["model"] == "gpt-4o-realtime-preview"
        peer.send({"type": "output_audio_buffer.clear", "event_id": "evt_1"})  # nothing played yet: no event, no error
        peer.send({"type": "response.cancel", "event_id": "evt_2"})  # the session's own error events still work
        _, error = await peer.until("error", 30)
        assert error["error"]["code"] == "response_cancel_not_active" and error["error"]["event_id"] == "evt_2"
        assert "output_audio_buffer.cleared" not in peer.types()
        call_id = reply.headers["location"].rsplit("/", 1)[-1]
        hangup = await http.post(f"{http_url(server)}/realtime/calls/{call_id}/hangup", headers={"Authorization": "Bearer local"})
        assert hangup.status_code == 200
        assert call_id not in registry(server).calls
        again = await http.post(f"{http_url(server)}/realtime/calls/{call_id}/hangup", headers={"Authorization": "Bearer local"})
        assert again.status_code == 404 and again.json()["error"]["code"] == "call_not_found"
    await peer.pc.close()


async def test_bad_requests_get_a_json_error(server):
    peer = Peer()
    offer = await peer.offer()
    await peer.pc.close()
    client = AsyncOpenAI(api_key="local", base_url=http_url(server))
    with pytest.raises(openai.BadRequestError) as bad:
        await client.realtime.calls.create(sdp="hello")
    assert bad.value.body["code"] == "invalid_offer"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        await client.realtime.calls.create(sdp="v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
    assert bad.value.body["code"] == "invalid_offer"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        await client.realtime.calls.create(sdp=offer, session={"type": "realtime", "temperature": "hot"})
    assert bad.value.body["param"] == "session.temperature"  # type: ignore[index]
    async with AsyncOpenAI(api_key="wrong", base_url=http_url(server)) as wrong:  # closed here: its pool must not outlive the loop
        with pytest.raises(openai.AuthenticationError):
            await wrong.realtime.calls.create(sdp=offer)
    async with httpx.AsyncClient() as http:
        auth = {"Authorization": "Bearer local"}
        missing = await http.post(f"{http_url(server)}/realtime/calls", headers=auth, files={"session": (None, "{}", "application/json")})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "sdp"
        not_json = await http.post(f"{http_url(server)}/realtime/calls", headers=auth,
                                   files={"sdp": (None, offer, "application/sdp"), "session": (None, "{nope", "application/json")})
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
        wrong_type = await http.post(f"{http_url(server)}/realtime/calls", headers={**auth, "Content-Type": "image/png"}, content=b"x")
        assert wrong_type.status_code == 400 and wrong_type.json()["error"]["code"] == "unsupported_content_type"
        page = await http.get(f"http://127.0.0.1:{server.port}/")
        assert page.status_code == 200 and "app.js" in page.text
    assert not registry(server).calls  # no half-made call left behind
    await client.close()


async def test_calls_take_a_session_slot(engines):
    """A call is a session of ``--max-sessions``: a second one is refused while the first lives, as a
    WebSocket session would be, and the slot is free again after a hang-up, whatever way it ends."""
    from websockets.asyncio.client import connect as ws_connect

    with RunningServer(engines, ServerOptions(max_sessions=1)) as limited:
        admission = limited.server.config.app.state.admission
        client = AsyncOpenAI(api_key="none", base_url=http_url(limited), max_retries=0)
        first = Peer()
        raw = await client.realtime.calls.with_raw_response.create(sdp=await first.offer())
        await first.accept(raw.http_response.text)
        _, limits = await first.until("rate_limits.updated", 30)
        assert {"name": "requests", "limit": 1, "remaining": 0, "reset_seconds": 0.0} in limits["rate_limits"]
        assert admission.active == 1
        receiver = registry(limited).calls[raw.headers["location"].rsplit("/", 1)[-1]].pc.getTransceivers()[0].receiver
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, MicrophoneJitterBuffer)  # the mic is decoded on arrival

        second = Peer()
        offer = await second.offer()
        with pytest.raises(openai.RateLimitError) as refused:  # 429, the WebSocket's error
            await client.realtime.calls.create(sdp=offer)
        assert refused.value.body["code"] == "session_limit_reached" and "1 sessions" in refused.value.body["message"]  # type: ignore[index]
        assert refused.value.response.headers["retry-after"] == "1"
        async with ws_connect(f"{limited.base_url}/realtime") as websocket:  # the slot is the WebSocket's too
            assert json.loads(await websocket.recv())["error"]["code"] == "session_limit_reached"
        with pytest.raises(openai.BadRequestError):  # a bad offer takes no slot: the limit is checked after parsing
            await client.realtime.calls.create(sdp="hello")
        assert admission.active == 1

        # hang-up by the endpoint frees the slot: the refused offer is accepted now
        call_id = raw.headers["location"].rsplit("/", 1)[-1]
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{http_url(limited)}/realtime/calls/{call_id}/hangup")).status_code == 200
        await first.pc.close()
        assert admission.active == 0
        answer = await client.realtime.calls.create(sdp=offer)
        await second.accept(answer.text)
        await second.until("session.created", 30)
        assert admission.active == 1

        # hang-up by the peer (it closes) frees it too
        await second.pc.close()
        with anyio.fail_after(30):
            while admission.active:
                await anyio.sleep(0.05)
        assert not registry(limited).calls
        await client.close()


def test_the_answer_asks_for_the_microphone_packet_time_in_its_audio_sections_only():
    from realtime_pipeline.server.rtc_call import with_audio_ptime

    offer = ("v=0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
             "a=ptime:20\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n")
    audio, application = with_audio_ptime(offer, 10).split("m=application")
    assert audio.endswith("a=rtpmap:111 opus/48000/2\r\na=ptime:10\r\n") and "ptime:20" not in audio  # after c=, replaced
    assert "ptime" not in application and with_audio_ptime(offer, 10).endswith("\r\n")


def test_microphone_packets_are_decoded_on_arrival():
    """Each packet is a whole Opus frame: handed on at once, in order; one older than the last handed on is dropped."""
    buffer = MicrophoneJitterBuffer()

    def add(sequence_number: int) -> bytes | None:
        packet = RtpPacket(payload_type=111, sequence_number=sequence_number, timestamp=960 * sequence_number)
        packet._data = bytes([sequence_number % 256])  # type: ignore[attr-defined]  # what aiortc's depayload sets
        pli, frame = buffer.add(packet)
        assert not pli
        return None if frame is None else frame.data

    assert add(65534) == bytes([254])  # no waiting for later packets (aiortc's own buffer holds four)
    assert add(65535) == bytes([255])
    assert add(1) == bytes([1])  # across the wrap, one lost (0)
    assert add(0) is None  # came after 1: too late for a stream
    assert add(1) is None  # a repeat
    assert add(2) == bytes([2])
    assert buffer.dropped_late == 2


@pytest.mark.parametrize("frame_ms", [10, 20])
async def test_the_reply_track_reaches_the_decoder_without_a_frame_of_delay(frame_ms: int):
    """The track sends 48 kHz itself in Opus packets of its own, 10 ms by default (aiortc's encoder resampled
    24 kHz into whole 20 ms frames a frame late, and its ``voip`` mode looks 6.5 ms ahead)."""
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.jitterbuffer import JitterFrame

    from realtime_pipeline.server.rtc_call import FRAME_MS, ReplyTrack
    from realtime_pipeline.server.session import SessionOptions

    assert FRAME_MS == SessionOptions().webrtc_packet_ms == 10
    events: list[tuple[str, str]] = []
    track = ReplyTrack(lambda kind, response_id: events.append((kind, response_id)), input_rate_hz=24_000, frame_ms=frame_ms)
    lead_ms, tone_ms = 40, 100
    t = np.arange(24 * tone_ms) / 24_000
    reply = np.concatenate([np.zeros(24 * lead_ms), 10_000 * np.sin(2 * np.pi * 1000 * t)]).astype(np.int16)
    track.push("resp_1", reply[:1000])  # the player writes in blocks: one resampling stream across them
    track.push("resp_1", reply[1000:])
    track.finish("resp_1")
    decoder = OpusDecoder()
    onset_ms = end_ms = None
    timestamps = []
    packets = 240 // frame_ms
    for sent in range(packets):  # packet n leaves at n * frame_ms; a sample plays at its packet's send time + its place in it
        packet = await track.recv()
        timestamps.append(packet.pts)
        for out in decoder.decode(JitterFrame(data=bytes(packet), timestamp=packet.pts)):
            assert out.samples == 48 * frame_ms, "one frame per packet"
            loud = np.flatnonzero(np.abs(out.to_ndarray().reshape(-1, 2)[:, 0]) > 2_000)
            if len(loud):
                onset_ms = onset_ms if onset_ms is not None else sent * frame_ms + loud[0] / 48
                end_ms = sent * frame_ms + loud[-1] / 48
    assert timestamps == [48 * frame_ms * n for n in range(packets)], "RTP timestamps count the track's samples from 0"
    assert onset_ms is not None and end_ms is not None
    delay_ms = onset_ms - lead_ms
    assert 0 <= delay_ms < 5, f"the reply's first sound left {delay_ms:.1f} ms late (the encoder looks 2.5 ms ahead)"
    assert abs(end_ms - onset_ms - tone_ms) < 3, "the whole reply is sent, its tail flushed by finish()"
    assert events == [("started", "resp_1"), ("stopped", "resp_1")]
    track.stop()
    with pytest.raises(ValueError, match="10 or 20 ms"):
        ReplyTrack(lambda kind, response_id: None, frame_ms=15)
    with pytest.raises(ValueError, match="webrtc_packet_ms must be 10 or 20"):
        SessionOptions(webrtc_packet_ms=15)  # a server's bad setting fails at start, not on each call


def test_a_speculative_reply_answers_its_own_turn_and_its_late_transcript_is_not_the_next_ones():
    """The latency event's spans start at the user turn a reply answers; a committed speculative reply
    starts before its turn's final transcript, which used to be taken for the next reply's turn."""
    from realtime_pipeline.server.rtc_call import ResponseTurns

    turns = ResponseTurns()
    turns.transcript(1)
    turns.response_started("resp_1", 2, is_user_turn=False)  # a reply of its own after the transcript
    turns.response_started("resp_2", 3, is_user_turn=True)  # speculative: turn 3 is the user's
    turns.transcript(3)  # its final transcript comes after it started
    turns.transcript(4)
    turns.response_started("resp_3", 5, is_user_turn=False)
    turns.response_started("resp_4", 6, is_user_turn=False)  # no transcript since (a client's response.create)
    assert turns.turns == {"resp_1": (2, 1), "resp_2": (3, 3), "resp_3": (5, 4), "resp_4": (6, None)}
