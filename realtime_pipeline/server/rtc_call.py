"""One WebRTC call (aiortc): the peer, its two audio tracks and the ``oai-events`` data channel.

A call is a :class:`RealtimeSession` like a WebSocket connection; only the
transport differs (see docs/webrtc.md):

- client events arrive as data-channel messages and server events leave the
  same way (``send_json`` / ``receive_text`` of :meth:`RealtimeSession.serve`);
- the microphone track is the input audio (Opus 48 kHz, resampled by PyAV to
  the pipeline's 16 kHz), fed in as ``input_audio_buffer.append`` would;
- the reply goes out on :class:`ReplyTrack` in 10 ms Opus packets instead of audio
  delta events; the track announces ``output_audio_buffer.started`` /
  ``stopped`` / ``cleared`` and is emptied at once on barge-in.

Needs the ``webrtc`` extra (aiortc) and the asyncio event loop (uvicorn's).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import fractions
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aioice.ice
import anyio
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt

from ..audio import INPUT_SAMPLE_RATE_HZ, StreamResampler
from ..conversation import ResponseDone, ResponseInterrupted, ResponsePaused, ResponseStarted
from ..frames import TranscriptFinal
from ..tracing import ASR_FINAL, FIRST_SAMPLE_PLAYED, LLM_FIRST_TOKEN, TTS_FIRST_AUDIO, TURN_COMMITTED, USER_SPEECH_END
from .engines import OUTPUT_SAMPLE_RATE_HZ, Engines
from .protocol import Dialect, ProtocolError, new_id
from .responses import ResponseState
from .session import RealtimeSession, SessionOptions

log = logging.getLogger(__name__)

#: The data channel OpenAI's WebRTC flow carries events on.
EVENTS_CHANNEL = "oai-events"
#: One output frame, and the most a barge-in lets through. Half Opus's usual 20 ms: a reply's
#: first sound waits for the track's next tick (5 ms on average instead of 10), and the
#: receiver's jitter buffer can hold less (NetEq's target is counted in packets). aiortc's own
#: encoder only makes 20 ms packets, so the track encodes its frames itself (:class:`OpusPacketizer`).
FRAME_MS = 10
#: The reply packet times a server may choose (``SessionOptions.webrtc_packet_ms``): 10 ms waits
#: less; 20 ms costs half the CPU (a call's two peers, measured: 5.5-6.8 % of a core at 20 ms,
#: 11.4-12.2 % at 10 ms; aiortc's per-packet work is Python) for many calls on a small machine.
PACKET_MS_CHOICES = (10, 20)
#: What the reply track sends: Opus's own rate. aiortc's encoder resamples anything else into
#: whole 960-sample frames, and that holds every sample back one frame: 24 kHz input reached the
#: encoder 20 ms late (an impulse at a frame's start left at the end of the next one).
TRACK_SAMPLE_RATE_HZ = 48_000
#: libopus's ``restricted-lowdelay`` mode (CELT only): 2.5 ms of look-ahead instead of the 6.5 ms
#: of ``voip`` (aiortc's), measured through aiortc's decoder. Its speech is transparent at
#: :data:`OPUS_BITRATE_BPS`; it gives up SILK's efficiency under ~20 kbit/s, which a reply track
#: on a LAN or a broadband link does not need.
OPUS_APPLICATION = "lowdelay"
#: Mono, 64 kbit/s (aiortc's encoder: stereo 96 kbit/s of the same mono voice).
OPUS_BITRATE_BPS = 64_000
#: The packet time asked of the caller's microphone (``a=ptime`` in the answer, which browsers apply
#: to their Opus encoder, RFC 8829 5.9). The user's last word waits for its packet to fill: 5 ms on
#: average at 10 ms instead of 10 ms at Opus's usual 20 ms; the server's VAD reads 10 ms frames anyway.
MICROPHONE_PTIME_MS = 10
#: The extension event with a turn's latency (only on calls that ask for it, see docs/webrtc.md).
LATENCY_EVENT = "realtime_pipeline.turn_latency"

# -- ICE on the address the server is bound to ------------------------------------------
# aioice gathers host candidates on every interface except loopback. A call is
# answered on the address its HTTP request reached (127.0.0.1 by default): that
# is the one address the client can surely reach, and a server bound to
# localhost must not expose other interfaces.
_ice_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("ice_address", default=None)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    address = _ice_address.get()
    if address is None:
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    return [address]


aioice.ice.get_host_addresses = _host_addresses


@contextlib.contextmanager
def ice_candidates_on(address: str | None) -> Iterator[None]:
    """Within this block, peer connections gather their host candidate on ``address`` only (None: aioice's choice)."""
    token = _ice_address.set(address)
    try:
        yield
    finally:
        _ice_address.reset(token)


# -- the microphone's packets, decoded as they arrive -------------------------------------
class MicrophoneJitterBuffer(JitterBuffer):
    """Hands each Opus packet to the decoder as it arrives (one RTP packet is one Opus frame).

    aiortc's audio jitter buffer holds a frame until four later ones have come
    (``prefetch=4``): 80 ms more before the server's VAD sees the last word,
    measured on every turn (docs/webrtc.md, "Measured"). A jitter buffer smooths
    *playout*; the server plays nothing, the VAD and Whisper read a stream, so
    only order matters: a packet that comes after a later one was decoded is
    dropped (20 ms missing from the stream, as a lost packet would be).
    """

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None  # sequence number of the last packet handed on
        self.dropped_late = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._last is not None and not uint16_gt(packet.sequence_number, self._last):
            self.dropped_late += 1  # late (reordered) or repeated
            return False, None
        self._last = packet.sequence_number
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def decode_on_arrival(receiver: RTCRtpReceiver) -> None:
    """Give an audio receiver a :class:`MicrophoneJitterBuffer` (before its first packet)."""
    name = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.16's private attribute: fail loudly if it moves
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        raise RuntimeError(f"aiortc {aiortc_version()} has no {name}: the microphone would be decoded 80 ms late")
    setattr(receiver, name, MicrophoneJitterBuffer())


def aiortc_version() -> str:
    from importlib.metadata import version

    return version("aiortc")


class OpusPacketizer:
    """Encodes the reply track's frames into one Opus packet each, a frame long.

    The track hands aiortc these packets ready-made (aiortc sends an ``av.Packet`` as it is,
    with its ``pts`` as the RTP timestamp), since aiortc's own encoder cuts 20 ms packets.
    Encoding 10 ms takes ~0.1 ms, so it runs on the event loop rather than hopping to a thread.
    """

    def __init__(self, frame_samples: int, sample_rate_hz: int = TRACK_SAMPLE_RATE_HZ) -> None:
        self.frame_samples = frame_samples
        self.frame_ms = frame_samples * 1000 // sample_rate_hz
        self.time_base = fractions.Fraction(1, sample_rate_hz)
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = OPUS_BITRATE_BPS
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = sample_rate_hz
        self.codec.time_base = self.time_base
        self.codec.options = {"application": OPUS_APPLICATION, "frame_duration": str(self.frame_ms)}

    def encode(self, samples: np.ndarray, timestamp: int) -> av.Packet:
        """One packet for one frame of int16 mono ``samples`` starting at ``timestamp`` (in samples)."""
        if len(samples) != self.frame_samples:
            raise ValueError(f"frames of {self.frame_samples} samples, got {len(samples)}")
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.planes[0].update(np.ascontiguousarray(samples, dtype=np.int16).tobytes())
        frame.pts = timestamp
        frame.sample_rate = self.codec.sample_rate
        frame.time_base = self.time_base
        packets = self.codec.encode(frame)
        if len(packets) != 1:  # libopus makes one packet per frame of frame_duration; anything else is a bug here
            raise RuntimeError(f"the Opus encoder returned {len(packets)} packets for one {self.frame_ms} ms frame")
        packet = packets[0]
        packet.pts = timestamp  # ffmpeg's pts start at minus the encoder's look-ahead; RTP wants the frame's own
        packet.time_base = self.time_base
        return packet


class ReplyTrack(MediaStreamTrack):
    """The reply audio, sent in real time in ``frame_ms`` Opus packets (silence when there is none).

    The session's player writes played blocks with :meth:`push` (at most its
    lead ahead of real time, at ``input_rate_hz``); the track resamples each
    response as one stream to ``TRACK_SAMPLE_RATE_HZ`` and encodes each frame
    itself (:class:`OpusPacketizer`). :meth:`clear` drops everything not yet sent,
    so the next frame is silent. ``on_event(kind, response_id)`` gets
    ``started`` (first frame of a response sent), ``stopped`` (its last frame
    sent, once :meth:`finish` said no more is coming) and ``cleared``.
    """

    kind = "audio"

    def __init__(self, on_event: Callable[[str, str], None], input_rate_hz: int = OUTPUT_SAMPLE_RATE_HZ,
                 frame_ms: int | None = None) -> None:
        super().__init__()
        frame_ms = FRAME_MS if frame_ms is None else frame_ms
        if frame_ms not in PACKET_MS_CHOICES:
            raise ValueError(f"reply packets of {' or '.join(map(str, PACKET_MS_CHOICES))} ms, got {frame_ms}")
        self.frame_ms = frame_ms
        self.input_rate_hz = input_rate_hz
        self.sample_rate_hz = TRACK_SAMPLE_RATE_HZ
        self.frame_samples = self.sample_rate_hz * frame_ms // 1000
        self.on_event = on_event
        self._queue: deque[tuple[str, np.ndarray]] = deque()
        # One stream per response: its filter state runs across the player's blocks (no clicks at
        # block edges); the few ms it holds back are flushed by finish(). While the player writes
        # ahead, the held-back samples are later ones, never the frame being sent.
        self._resamplers: dict[str, StreamResampler] = {}
        self._playing: str | None = None
        self._finished: set[str] = set()
        self._start_s: float | None = None
        self._timestamp = 0
        self.first_sent_s: dict[str, float] = {}
        self.first_pushed_s: dict[str, float] = {}
        self._packetizer = OpusPacketizer(self.frame_samples, self.sample_rate_hz)

    def push(self, response_id: str, samples: np.ndarray) -> None:
        if len(samples):
            self.first_pushed_s.setdefault(response_id, time.monotonic())
            resampler = self._resamplers.get(response_id)
            if resampler is None:
                resampler = self._resamplers[response_id] = StreamResampler(self.input_rate_hz, self.sample_rate_hz)
            out = resampler(samples)
            if len(out):
                self._queue.append((response_id, out))

    def finish(self, response_id: str) -> None:
        """No more audio will come for ``response_id``: ``stopped`` once its last frame is sent."""
        self._finished.add(response_id)
        resampler = self._resamplers.pop(response_id, None)
        if resampler is not None:
            tail = resampler.flush()
            if len(tail):
                self._queue.append((response_id, tail))
        if self._playing == response_id and not self._queue:
            self._stop()

    def clear(self) -> str | None:
        """Drop every queued sample now; returns the response that was cut off (None: nothing was)."""
        cut = self._playing or (self._queue[0][0] if self._queue else None)
        self._queue.clear()
        self._resamplers.clear()  # a resumed response pushes anew from where it was heard
        self.first_pushed_s.clear()  # what was pushed is gone: a resumed response pushes anew
        self._playing = None
        if cut is not None:
            self.on_event("cleared", cut)
        return cut

    def _stop(self) -> None:
        assert self._playing is not None
        stopped, self._playing = self._playing, None
        self._finished.discard(stopped)
        self.on_event("stopped", stopped)

    def _take(self) -> np.ndarray:
        """The next frame's samples: queued audio of one response, padded with silence."""
        out = np.zeros(self.frame_samples, dtype=np.int16)
        filled = 0
        while self._queue and filled < self.frame_samples:
            response_id, samples = self._queue[0]
            if self._playing != response_id:
                if self._playing is not None and filled:
                    break  # the next response starts in the next frame
                self._playing = response_id
                self.first_sent_s[response_id] = time.monotonic()
                self.on_event("started", response_id)  # reads first_sent_s / first_pushed_s (the latency event)
                self.first_sent_s.pop(response_id, None)
                self.first_pushed_s.pop(response_id, None)
            n = min(len(samples), self.frame_samples - filled)
            out[filled : filled + n] = samples[:n]
            filled += n
            if n == len(samples):
                self._queue.popleft()
            else:
                self._queue[0] = (response_id, samples[n:])
        if not self._queue and self._playing is not None and self._playing in self._finished:
            self._stop()
        return out

    async def recv(self) -> av.Packet:
        """The next frame's Opus packet, at its time (``frame_ms`` after the last one)."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start_s is None:
            self._start_s = now
        else:
            self._timestamp += self.frame_samples
            await asyncio.sleep(max(0.0, self._start_s + self._timestamp / self.sample_rate_hz - now))
        return self._packetizer.encode(self._take(), self._timestamp)


class ResponseTurns:
    """Which user turn each response answers: the latency event's spans run from that turn's stamps.

    A reply made by the session gets a turn of its own and answers the last transcribed user turn.
    A committed speculative reply (made during the end-of-turn pause) *is* its user's turn, and
    it starts before that turn's final transcript arrives: that late transcript must not be taken
    for the next reply's (it was: the next reply's spans ran from the turn before, 13-17 s long,
    in a benchmark run with speculation).
    """

    def __init__(self) -> None:
        self.turns: dict[str, tuple[int, int | None]] = {}  # response id → (its turn, the user turn it answers)
        self._pending: int | None = None
        self._answered: set[int] = set()

    def transcript(self, user_turn: int) -> None:
        """A user turn's final transcript arrived (it awaits an answer unless one already started)."""
        if user_turn not in self._answered:
            self._pending = user_turn

    def response_started(self, response_id: str, turn_id: int, *, is_user_turn: bool) -> None:
        """``is_user_turn``: the response's own turn is the user's (a committed speculative reply)."""
        answers = turn_id if is_user_turn else self._pending
        if answers is not None:
            self._answered.add(answers)
            if answers == self._pending:
                self._pending = None
        self.turns[response_id] = (turn_id, answers)


class WebRTCSession(RealtimeSession):
    """A Realtime session whose audio goes through the call's tracks instead of audio events."""

    def __init__(self, engines: Engines, dialect: Dialect, send_json: Callable[[str], Any], *,
                 model: str | None, options: SessionOptions, latency_events: bool,
                 rate_limit: Callable[[], dict[str, Any] | None] | None = None) -> None:
        # The track plays in real time, so the player must be paced for barge-in to know what was heard.
        super().__init__(engines, dialect, send_json, model=model, options=dataclasses.replace(options, pace_output=True),
                         rate_limit=rate_limit)
        self.track = ReplyTrack(self._on_track_event, frame_ms=options.webrtc_packet_ms)
        self.latency_events = latency_events
        self.response_turns = ResponseTurns()
        self._last_response_id: str | None = None

    async def handle(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("type") == "output_audio_buffer.clear":
            self._clear_output()
            return
        await super().handle(text)

    def _clear_output(self) -> None:
        """``output_audio_buffer.clear``: cut the reply off now (its generation too, as the service does)."""
        cut = self.track.clear()  # ``cleared`` if audio was queued or playing
        if self.conversation.active_response is not None:
            self.conversation.cancel_response("client_cancelled")  # response.done: cancelled
        if cut is None and self._last_response_id is not None:
            self.emit("output_audio_buffer.cleared", response_id=self._last_response_id)

    # -- output -----------------------------------------------------------------------
    def _send_audio(self, state: ResponseState, samples: np.ndarray) -> None:
        self.track.push(state.id, samples)

    def _on_track_event(self, kind: str, response_id: str) -> None:
        if self._closing:
            return
        self.emit(f"output_audio_buffer.{kind}", response_id=response_id)
        if kind == "started" and self.latency_events:
            self._emit_latency(response_id)

    def on_transcript(self, frame: TranscriptFinal) -> None:
        self.response_turns.transcript(frame.turn_id)
        super().on_transcript(frame)

    def _on_conversation_event(self, event: object) -> None:
        if isinstance(event, ResponseStarted):
            own = self.pipeline.tracer.turn(event.response.turn_id)
            self.response_turns.response_started(event.response.id, event.response.turn_id,
                                                 is_user_turn=own is not None and USER_SPEECH_END in own.stamps)
            self._last_response_id = event.response.id
        super()._on_conversation_event(event)
        if isinstance(event, (ResponseInterrupted, ResponsePaused)):
            self.track.clear()  # barge-in: the next frame is silent
        elif isinstance(event, ResponseDone):
            self.track.finish(event.response.id)

    def _emit_latency(self, response_id: str) -> None:
        """The turn's spans from the tracer (ms): what the page shows per turn."""
        response_turn, user_turn = self.response_turns.turns.get(response_id, (None, None))
        tracer = self.pipeline.tracer
        stamps: dict[str, float] = {}
        for turn_id in (user_turn, response_turn):
            trace = tracer.turn(turn_id) if turn_id is not None else None
            if trace is not None:
                stamps.update({k: v for k, v in trace.stamps.items() if k not in stamps})
        sent = self.track.first_sent_s.pop(response_id, None)
        # The player stamps first_sample_played once its first write returns, which yields to the event
        # loop: the track may send that block first. The write pushed it to the track at that very instant.
        pushed = self.track.first_pushed_s.pop(response_id, None)
        played = stamps.get(FIRST_SAMPLE_PLAYED, pushed)

        def span(start: str | None, end: str | None, end_s: float | None = None) -> float | None:
            a = stamps.get(start) if start else None
            b = end_s if end_s is not None else stamps.get(end) if end else None
            return None if a is None or b is None else round(1000.0 * (b - a), 1)

        latency = {
            "endpoint": span(USER_SPEECH_END, TURN_COMMITTED),
            "asr": span(TURN_COMMITTED, ASR_FINAL),
            "llm": span(ASR_FINAL, LLM_FIRST_TOKEN),
            "tts": span(LLM_FIRST_TOKEN, TTS_FIRST_AUDIO),
            "voice_to_voice": span(USER_SPEECH_END, None, played),
            "first_frame_sent": span(USER_SPEECH_END, None, sent),
        }
        self.emit(LATENCY_EVENT, response_id=response_id, latency_ms=latency)


def with_audio_ptime(sdp: str, ptime_ms: int) -> str:
    """``sdp`` with ``a=ptime:{ptime_ms}`` as the last line of each audio section (after its c=
    line, as SDP's order wants), replacing any ptime it had."""
    out: list[str] = []
    in_audio = False
    for line in sdp.rstrip("\r\n").split("\r\n"):
        if line.startswith("m="):
            if in_audio:
                out.append(f"a=ptime:{ptime_ms}")
            in_audio = line.startswith("m=audio")
        elif in_audio and line.startswith("a=ptime:"):
            continue
        out.append(line)
    if in_audio:
        out.append(f"a=ptime:{ptime_ms}")
    return "\r\n".join(out) + "\r\n"


def invalid_offer(error: Exception) -> ProtocolError:
    return ProtocolError(f"the SDP offer could not be used: {type(error).__name__}: {error}", code="invalid_offer", param="sdp")


class Call:
    """One peer connection and its session, from the SDP offer to the hang-up."""

    session: WebRTCSession  # set by the signaling, before :meth:`answer`

    def __init__(self, on_closed: Callable[[Call], None]) -> None:
        self.id = new_id("rtc")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: offline, loopback or LAN
        self.channel: Any = None
        self._incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self._channel_ready = asyncio.Event()
        self._has_channel = True
        self._ended = False
        self._on_closed = on_closed
        self._tasks: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, offer_sdp: str, ice_address: str | None) -> str:
        """Apply the offer and return the answer SDP (candidates included: no trickle ICE)."""
        if "m=audio" not in offer_sdp:
            raise ProtocolError("the SDP offer has no audio section (m=audio): a call needs the microphone track",
                                code="invalid_offer", param="sdp")
        self._has_channel = "m=application" in offer_sdp
        with ice_candidates_on(ice_address):
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            except Exception as error:  # aiortc's parser and negotiation: ValueError, InvalidAccessError... a bad offer
                raise invalid_offer(error) from None
            for transceiver in self.pc.getTransceivers():  # before any packet can come
                if transceiver.kind == "audio":
                    decode_on_arrival(transceiver.receiver)
            try:
                self.pc.addTrack(self.session.track)
                await self.pc.setLocalDescription(await self.pc.createAnswer())
            except Exception as error:
                raise invalid_offer(error) from None
        return with_audio_ptime(self.pc.localDescription.sdp, MICROPHONE_PTIME_MS)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"webrtc-call-{self.id}")

    async def _run(self) -> None:
        log.info("call %s: session %s opened (%s)", self.id, self.session.id, self.session.dialect.value)
        try:
            await self.session.serve(self._receive_text)
        finally:
            await self._close()
            log.info("call %s: session %s closed", self.id, self.session.id)

    def hang_up(self) -> None:
        """End the call (peer gone, ICE failed, the client hung up, the server stops)."""
        if not self._ended:
            self._ended = True
            self._incoming.put_nowait(None)
            self._channel_ready.set()

    async def _close(self) -> None:
        self.hang_up()
        try:
            self.session.track.stop()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.pc.close()
        finally:
            self._on_closed(self)  # frees the session slot, whatever happened above

    # -- events in and out ------------------------------------------------------------
    async def send_json(self, text: str) -> bool:
        if not self._has_channel:
            return False  # an audio-only call: nobody to tell
        await self._channel_ready.wait()
        channel = self.channel
        if self._ended or channel is None or channel.readyState != "open":
            return False
        channel.send(text)
        return True

    async def _receive_text(self) -> str | None:
        return await self._incoming.get()

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != EVENTS_CHANNEL or self.channel is not None:
            log.warning("call %s: ignoring data channel %r (events go on %r)", self.id, channel.label, EVENTS_CHANNEL)
            return
        self.channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if not self._ended:
                self._incoming.put_nowait(message if isinstance(message, str) else message.decode("utf-8", errors="replace"))

        @channel.on("close")
        def on_close() -> None:
            self.hang_up()

        if channel.readyState == "open":
            self._channel_ready.set()
        else:
            channel.on("open", self._channel_ready.set)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("call %s: connection %s", self.id, state)
        if state in ("failed", "closed"):
            self.hang_up()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        task = asyncio.get_running_loop().create_task(self._read_microphone(track), name=f"webrtc-mic-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_microphone(self, track: MediaStreamTrack) -> None:
        """Decoded mic frames (48 kHz, any layout) → 16 kHz mono int16 → the session."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=INPUT_SAMPLE_RATE_HZ)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:  # the remote track ended: so did the call's microphone
                return
            frame.pts = None  # resample by content: the RTP clock may jump after loss
            try:
                for out in resampler.resample(frame):
                    await self.session.input_audio(out.to_ndarray().reshape(-1).astype(np.int16))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):  # the session ended (hang-up) while the track still had frames
                return


def parse_session_config(session: WebRTCSession, spec: Mapping[str, Any]) -> None:
    """The call's ``session`` JSON, applied as the session's starting configuration (ProtocolError if bad)."""
    config = session._parse_session(spec)
    session._check_tools(config.tools, config.tool_choice, "session")
    session._apply(config)
