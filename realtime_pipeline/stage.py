"""The stage interface: load and warm up once, then one async ``run`` loop.

A stage reads frames from ``inbox`` and writes frames to ``outbox``; both are
bounded anyio memory streams, so a slow stage slows its producer instead of
piling frames up in memory. A stage forwards every frame it does not consume
(the pipeline never relies on a stage remembering more than that), drops
frames of cancelled responses, and runs blocking model calls in worker threads
with :func:`realtime_pipeline.priority.run_model` (BLAS kept to that thread; niced
on request), checking the response's token between tokens or chunks.
"""

from __future__ import annotations

from typing import ClassVar

from abc import ABC, abstractmethod
from dataclasses import dataclass

from anyio.abc import ObjectReceiveStream, ObjectSendStream

from .conversation import Conversation
from .frames import Frame, response_of
from .tracing import Tracer

Inbox = ObjectReceiveStream[Frame]
Outbox = ObjectSendStream[Frame]


@dataclass(frozen=True)
class StageContext:
    """What every stage of one pipeline shares."""

    conversation: Conversation
    tracer: Tracer


class Stage(ABC):
    #: Name used in errors and traces; defaults to the class name.
    name: str = ""
    #: True for a stage that answers each user turn and then closes it (a responder). Without
    #: one in the pipeline, the conversation closes a turn when its final transcript comes.
    answers_turns: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "name", ""):  # a subclass keeps its parent's name
            cls.name = cls.__name__

    async def setup(self, ctx: StageContext) -> None:
        """Load models and warm them up before the first turn. Default: nothing to do."""

    @abstractmethod
    async def run(self, ctx: StageContext, inbox: Inbox, outbox: Outbox) -> None:
        """Process frames until ``inbox`` ends. The pipeline closes ``outbox`` afterwards."""

    async def aclose(self) -> None:
        """Release what :meth:`setup` acquired. Default: nothing."""


async def send_unless_cancelled(outbox: Outbox, frame: Frame) -> bool:
    """Send ``frame`` unless its response is cancelled, also while waiting for room.

    Returns whether the frame was sent. A frame of a cancelled response is
    dropped, and a send blocked on a full queue is abandoned the moment the
    response is cancelled.
    """
    response = response_of(frame)
    if response is None:
        await outbox.send(frame)
        return True
    if response.cancelled:
        return False
    with response.token.scope():
        await outbox.send(frame)
        return True
    return False
