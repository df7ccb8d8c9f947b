"""``python -m benchmarks.tracer_overhead``: what tracing costs, on a null pipeline.

A source pushes 20 ms audio frames as fast as the queues take them through
five pass-through stages (no models) into the pipeline's drain. Every stage
stamps the tracer on *every* frame (the real stages stamp a few times per
turn, so this is a worst case), with a new turn every 50 frames. Frames per
second with tracing on and off, best of a few alternating rounds, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from realtime_pipeline.frames import AudioFrame
from realtime_pipeline.pipeline import Pipeline
from realtime_pipeline.stage import Inbox, Outbox, Stage, StageContext
from realtime_pipeline.tracing import STAMP_ORDER, Tracer

FRAMES_PER_TURN = 50


class NullSource(Stage):
    name = "source"

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.samples = np.zeros(320, dtype=np.int16)

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        for index in range(self.frames):
            await outbox.send(AudioFrame(self.samples, 16_000, index * 320, 0.0))


class StampingStage(Stage):
    """Forwards every frame and stamps its own hop on it, like a stage would at a turn's hop."""

    def __init__(self, name: str, stamp: str) -> None:
        self.name = name
        self.stamp_name = stamp

    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        tracer = ctx.tracer
        async for frame in inbox:
            tracer.stamp(frame.start_sample // (320 * FRAMES_PER_TURN), self.stamp_name)
            await outbox.send(frame)


@dataclass(frozen=True)
class Overhead:
    frames: int
    traced_fps: float
    untraced_fps: float

    @property
    def ratio(self) -> float:
        """Traced throughput / untraced throughput (1.0 = no cost)."""
        return self.traced_fps / self.untraced_fps

    @property
    def stamp_cost_us(self) -> float:
        """Extra time per stamp (five stamps per frame), in microseconds."""
        return 1e6 * (1.0 / self.traced_fps - 1.0 / self.untraced_fps) / 5


async def frames_per_second(frames: int, *, enabled: bool) -> float:
    stages: list[Stage] = [NullSource(frames)]
    stages += [StampingStage(f"stage{i}", STAMP_ORDER[i]) for i in range(5)]
    pipeline = Pipeline(stages, tracer=Tracer(enabled=enabled))
    await pipeline.start()
    began = time.perf_counter()
    await pipeline.run()
    elapsed = time.perf_counter() - began
    if enabled and len(pipeline.tracer.turns) != -(-frames // FRAMES_PER_TURN):
        raise AssertionError("the traced run did not record every turn")
    return frames / elapsed


async def measure(frames: int = 20_000, rounds: int = 3) -> Overhead:
    traced, untraced = [], []
    for _ in range(rounds):  # alternate, so drift in machine load hits both alike
        untraced.append(await frames_per_second(frames, enabled=False))
        traced.append(await frames_per_second(frames, enabled=True))
    return Overhead(frames, max(traced), max(untraced))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracer_overhead", description=__doc__)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result = anyio.run(measure, args.frames, args.rounds)
    print(f"null pipeline, 6 stages, {result.frames} frames, best of {args.rounds}:")
    print(f"  tracing off: {result.untraced_fps:,.0f} frames/s")
    print(f"  tracing on : {result.traced_fps:,.0f} frames/s (5 stamps per frame)")
    print(f"  ratio on/off: {result.ratio:.3f} (a microphone delivers 50 frames/s)")
    print(f"  cost per stamp: {result.stamp_cost_us:.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
