"""The pipeline only wires: stages in a row, a bounded queue between each pair.

Lifecycle: :meth:`Pipeline.start` loads and warms up every stage,
:meth:`Pipeline.run` runs them in one task group until the first stage's
input ends and every queue has drained (a graceful stop), and
:meth:`Pipeline.stop` ends everything at once. A stage that raises stops the
whole pipeline with a :class:`StageError` naming it; the task group and the
conversation's cancellation token guarantee that no task or worker thread of
ours outlives :meth:`run`.

When a queue is full the upstream stage's ``send`` waits (backpressure) until
the downstream stage takes a frame. Sources that cannot wait (a microphone)
drop their oldest audio instead and count what they dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from anyio.abc import ObjectSendStream

from .conversation import Conversation
from .frames import Frame
from .stage import Inbox, Outbox, Stage, StageContext
from .tracing import Tracer

log = logging.getLogger(__name__)

DEFAULT_QUEUE_CAPACITY = 32


def _single_cause(error: Exception) -> Exception:
    """The one error inside (nested) exception groups of a stage's own task group, else ``error``:
    the StageError then says what failed, not "unhandled errors in a TaskGroup"."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1 and isinstance(error.exceptions[0], Exception):
        error = error.exceptions[0]
    return error


class StageError(RuntimeError):
    """A stage failed; the pipeline stopped. ``stage_name`` says which."""

    def __init__(self, stage_name: str, error: BaseException) -> None:
        super().__init__(f"stage {stage_name!r} failed: {type(error).__name__}: {error}")
        self.stage_name = stage_name
        self.error = error


class Pipeline:
    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        conversation: Conversation | None = None,
        tracer: Tracer | None = None,
        queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
    ) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if queue_capacity < 1:
            raise ValueError(f"queue_capacity must be at least 1, got {queue_capacity}")
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.stages = list(stages)
        self.queue_capacity = queue_capacity
        self.context = StageContext(conversation or Conversation(), tracer or Tracer())
        self.context.tracer.attach(self.context.conversation)  # stamps response done / cancelled
        if any(stage.answers_turns for stage in self.stages):
            self.context.conversation.turns_answered = True
        self._started = False
        self._scope: anyio.CancelScope | None = None
        self._queues: list[ObjectSendStream[Frame]] = []

    @property
    def conversation(self) -> Conversation:
        return self.context.conversation

    @property
    def tracer(self) -> Tracer:
        return self.context.tracer

    def queue_sizes(self) -> list[int]:
        """Frames waiting in each queue (between stage i and i+1), for monitoring."""
        return [queue.statistics().current_buffer_used for queue in self._queues]

    async def start(self) -> None:
        """Load and warm up every stage (concurrently), before the first turn."""
        if self._started:
            return

        async def setup(stage: Stage) -> None:
            try:
                await stage.setup(self.context)
            except Exception as error:
                raise StageError(stage.name, error) from error

        await _run_all([lambda stage=stage: setup(stage) for stage in self.stages])
        self._started = True

    async def run(self) -> None:
        """Run until the input ends and everything drained, :meth:`stop`, or a stage fails."""
        await self.start()
        senders: list[Outbox] = []
        receivers: list[Inbox] = []
        for _ in range(len(self.stages) + 1):
            send, receive = anyio.create_memory_object_stream[Frame](self.queue_capacity)
            senders.append(send)
            receivers.append(receive)
        self._queues = senders[1:-1]
        await senders[0].aclose()  # the first stage (the source) has no input

        async def run_stage(stage: Stage, inbox: Inbox, outbox: Outbox) -> None:
            try:
                async with inbox, outbox:
                    await stage.run(self.context, inbox, outbox)
            except Exception as error:
                self.conversation.token.cancel(f"stage {stage.name} failed")
                cause = _single_cause(error)
                raise StageError(stage.name, cause) from cause

        async def drain(inbox: Inbox) -> None:
            async with inbox:
                async for _ in inbox:
                    pass

        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as group:
                    for index, stage in enumerate(self.stages):
                        group.start_soon(run_stage, stage, receivers[index], senders[index + 1], name=stage.name)
                    group.start_soon(drain, receivers[-1])
        except BaseExceptionGroup as group_error:
            raise _first_stage_error(group_error) from None
        finally:
            self._scope = None
            self.conversation.cancel_response("pipeline_stopped")
            self.conversation.token.cancel("pipeline stopped")
            for stream in (*senders, *receivers):
                stream.close()

    def stop(self) -> None:
        """End the running pipeline now (from the event loop thread)."""
        self.conversation.token.cancel("pipeline stopped")
        if self._scope is not None:
            self._scope.cancel()

    async def aclose(self) -> None:
        for stage in self.stages:
            await stage.aclose()


def _first_stage_error(group_error: BaseExceptionGroup) -> BaseException:
    stage_errors, _ = group_error.split(StageError)
    return _leaves(stage_errors or group_error)[0]


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


async def _run_all(jobs: list) -> None:
    try:
        async with anyio.create_task_group() as group:
            for job in jobs:
                group.start_soon(job)
    except BaseExceptionGroup as group_error:
        raise _first_stage_error(group_error) from None
