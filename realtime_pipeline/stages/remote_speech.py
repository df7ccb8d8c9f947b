"""Speech models on a remote OpenAI-compatible server: transcription over
``POST {base_url}/audio/transcriptions`` and synthesis over ``POST {base_url}/audio/speech``.

:class:`RemoteASR` is :class:`~.asr.WhisperASR`'s streaming logic (partials while the user speaks,
the final pass started during the end-of-turn silence) with each pass sent to the server as a WAV
file; :class:`RemoteTTS` is :class:`~.tts.PiperTTS` (each chunk leveled to the same loudness,
resampled to the output rate) with each chunk synthesized by the server as raw PCM
(``response_format: "pcm"``: 24 kHz 16-bit mono, read as it streams in, so a barge-in stops the
download between two reads). Both run their blocking HTTP calls in the stage's worker threads, like
the local models, and check the server at start-up with one tiny request, so a wrong URL fails
then, naming it.

A failed pass at run time loses that transcript or that chunk, logged with the URL and the
status: the conversation goes on (a lost partial is harmless; a lost final leaves the turn
unanswered, as silence would).
"""

from __future__ import annotations

import io
import logging
import wave
from typing import Any

import numpy as np

from ..audio import INPUT_SAMPLE_RATE_HZ
from ..cancellation import CancelToken
from ..stage import StageContext
from .asr import WhisperASR, _Stats
from .openai_llm import api_key_from_env, describe, excerpt
from .tts import PiperTTS

log = logging.getLogger(__name__)

#: The sample rate of the OpenAI speech API's ``pcm`` format.
PCM_SAMPLE_RATE_HZ = 24_000


class RemoteSpeechError(RuntimeError):
    """The speech server could not be reached or answered with an error; the message names the URL."""


def wav_bytes(samples: np.ndarray, rate_hz: int = INPUT_SAMPLE_RATE_HZ) -> bytes:
    """16-bit mono PCM ``samples`` as a WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buffer.getvalue()


class _RemoteClient:
    """A blocking httpx2 client for one server (thread-safe; the stages call it from worker threads)."""

    def __init__(self, base_url: str, api_key: str | None, connect_timeout_s: float, read_timeout_s: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the speech server's base URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else api_key_from_env()
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import httpx2

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            timeout = httpx2.Timeout(connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.read_timeout_s, pool=self.read_timeout_s)
            self._client = httpx2.Client(timeout=timeout, headers=headers)
        return self._client

    def failure(self, url: str, error: Exception) -> RemoteSpeechError:
        return RemoteSpeechError(f"the speech server at {url} failed: {describe(error)}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RemoteASR(WhisperASR):
    """:class:`~.asr.WhisperASR` transcribing on ``{base_url}/audio/transcriptions`` (see the module)."""

    def __init__(
        self,
        base_url: str,
        model: str = "whisper-1",
        *,
        api_key: str | None = None,
        language: str | None = "en",
        partial_interval_ms: int | None = 1000,
        tail_ms: int = 100,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        """``partial_interval_ms``: a partial pass (a request) at most this often while the user
        speaks, one in flight at a time; None: finals only."""
        # WhisperASR's run loop reads these; the local model's settings do not apply.
        self.partial_interval_ms = partial_interval_ms
        self.tail_ms = tail_ms
        self.language = language
        self.model = model
        self.stats = _Stats()
        self.http = _RemoteClient(base_url, api_key, connect_timeout_s, read_timeout_s)
        self.url = f"{self.http.base_url}/audio/transcriptions"
        self._checked = False

    async def setup(self, ctx: StageContext) -> None:
        import anyio

        if not self._checked:  # one tiny pass: a wrong URL fails now, not on the first turn
            await anyio.to_thread.run_sync(self.request, np.zeros(INPUT_SAMPLE_RATE_HZ // 2, dtype=np.int16))
            self._checked = True

    def request(self, samples: np.ndarray) -> str:
        """One blocking transcription request; :class:`RemoteSpeechError` if it fails."""
        import httpx2

        data = {"model": self.model, "response_format": "json"}
        if self.language:
            data["language"] = self.language
        try:
            answer = self.http.client().post(self.url, data=data, files={"file": ("turn.wav", wav_bytes(samples), "audio/wav")})
        except httpx2.HTTPError as error:
            raise self.http.failure(self.url, error) from error
        if answer.status_code >= 400:
            raise RemoteSpeechError(f"the speech server at {self.url} answered HTTP {answer.status_code}: {excerpt(answer.text)}")
        try:
            return str(answer.json()["text"]).strip()
        except (ValueError, KeyError, TypeError) as error:
            raise RemoteSpeechError(f"the speech server at {self.url} answered without a transcript: {excerpt(answer.text)}") from error

    def transcribe(self, samples: np.ndarray) -> str:
        """A final pass: the transcript, or "" (logged) if the server failed."""
        try:
            return self.request(samples)
        except RemoteSpeechError as error:
            log.error("%s; the turn's transcript is lost", error)
            return ""

    async def aclose(self) -> None:
        self.http.close()


class RemoteTTS(PiperTTS):
    """:class:`~.tts.PiperTTS` synthesizing on ``{base_url}/audio/speech`` (see the module)."""

    def __init__(
        self,
        base_url: str,
        model: str = "tts-1",
        voice: str = "alloy",
        *,
        api_key: str | None = None,
        output_sample_rate_hz: int | None = None,
        target_dbfs: float = -20.0,
        speed: float | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        self.voice_sample_rate_hz = PCM_SAMPLE_RATE_HZ
        self.requested_output_rate_hz = output_sample_rate_hz
        self.target_dbfs = target_dbfs
        self.model = model
        self.voice = voice
        self.speed = speed
        self.http = _RemoteClient(base_url, api_key, connect_timeout_s, read_timeout_s)
        self.url = f"{self.http.base_url}/audio/speech"
        self._checked = False

    async def setup(self, ctx: StageContext) -> None:
        import anyio

        if not self._checked:
            await anyio.to_thread.run_sync(self.request, "Hello.", CancelToken())
            self._checked = True

    def request(self, text: str, token: CancelToken) -> np.ndarray:
        """The server's PCM for ``text`` at 24 kHz, read as it streams (empty once cancelled)."""
        import httpx2

        body: dict[str, Any] = {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}
        if self.speed is not None:
            body["speed"] = self.speed
        pieces: list[bytes] = []
        try:
            with self.http.client().stream("POST", self.url, json=body) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise RemoteSpeechError(f"the speech server at {self.url} answered HTTP {answer.status_code}: {excerpt(answer.text)}")
                for piece in answer.iter_bytes():
                    if token.cancelled:
                        return np.zeros(0, dtype=np.int16)
                    pieces.append(piece)
        except httpx2.HTTPError as error:
            raise self.http.failure(self.url, error) from error
        data = b"".join(pieces)
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)

    def synthesize(self, text: str, token: CancelToken) -> np.ndarray:
        """Blocking: ``text`` to int16 audio at the output rate (empty if cancelled or the server failed, logged)."""
        from ..audio import resample

        try:
            pcm = self.request(text, token)
        except RemoteSpeechError as error:
            log.error("%s; the chunk %r is not spoken", error, text)
            return np.zeros(0, dtype=np.int16)
        if pcm.size == 0:
            return pcm
        audio = self.level(pcm.astype(np.float32) / 32768.0)
        audio = resample(audio, self.voice_sample_rate_hz, self.output_sample_rate_hz)
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)

    async def aclose(self) -> None:
        self.http.close()
