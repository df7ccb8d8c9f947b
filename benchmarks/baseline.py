"""The sequential approach from the seed material, on the same models and turns.

Per turn: wait for the whole utterance (the same VAD end-of-turn delay the
streaming run measured on that turn), transcribe it in one pass, generate the
whole reply, synthesize the whole reply, then start playing it. Time to first
audio = that endpoint delay + the compute + the output's start. The playback
itself is skipped (it starts after the measurement ends), so the baseline adds
only seconds to a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.conversation import DEFAULT_SYSTEM_PROMPT
from realtime_pipeline.io.outputs import MemoryOutput

from .measure import Models
from .turns import Turn


async def run_baseline(
    turns: list[Turn],
    models: Models,
    endpoint_ms: list[float | None],
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    max_history_messages: int = 16,
    on_turn: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per turn: the times of each step (ms) and the time to first audio."""
    output = MemoryOutput(models.tts.output_sample_rate_hz, paced=True)
    block = models.tts.output_sample_rate_hz * 20 // 1000
    history: list[dict[str, str]] = []
    records = []
    for index, turn in enumerate(turns):
        if on_turn is not None:
            on_turn(index)
        start = time.monotonic()
        text = (await anyio.to_thread.run_sync(models.asr.transcribe, turn.samples)).strip()
        transcribed = time.monotonic()
        record: dict[str, Any] = {"index": index, "file": turn.name, "transcript": text, "reference": turn.reference}
        if not text:
            records.append({**record, "answered": False})
            continue
        messages = [{"role": "system", "content": system_prompt}, *history[-max_history_messages:],
                    {"role": "user", "content": text}]
        reply = await anyio.to_thread.run_sync(lambda: "".join(models.llm.stream_reply(messages, CancelToken())))
        generated = time.monotonic()
        audio = await anyio.to_thread.run_sync(models.tts.synthesize, reply, CancelToken())
        synthesized = time.monotonic()
        first_played_s = await output.write(audio[:block]) if audio.size else synthesized
        output.flush()  # the rest would play after the measurement: skip it
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        endpoint = endpoint_ms[index]
        compute_ms = 1000.0 * (first_played_s - start)
        records.append({
            **record,
            "reply": reply.strip(),
            "answered": True,
            "endpoint_ms": endpoint,
            "asr_ms": 1000.0 * (transcribed - start),
            "llm_ms": 1000.0 * (generated - transcribed),
            "tts_ms": 1000.0 * (synthesized - generated),
            "playback_ms": 1000.0 * (first_played_s - synthesized),
            "reply_audio_s": len(audio) / models.tts.output_sample_rate_hz,
            "time_to_first_audio_ms": None if endpoint is None else endpoint + compute_ms,
        })
    return records
