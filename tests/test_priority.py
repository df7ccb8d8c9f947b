"""Model work runs at a lower CPU priority than the audio (``realtime_pipeline.priority``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import threadpoolctl

from conftest import SPEECH_DIR
from realtime_pipeline import MemoryOutput, WavFileSource, priority, voice_pipeline
from realtime_pipeline.response import Response

linux_only = pytest.mark.skipif(not priority.supported(), reason="threads are niced one by one on Linux only")


def thread_cpu_s_and_nice() -> dict[int, tuple[float, int]]:
    """Each thread of this process: CPU seconds used so far and its niceness (/proc)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that just ended
            continue
        # after the name: state is field 3, utime 14, stime 15, nice 19 (proc(5))
        threads[int(task.name)] = ((int(fields[11]) + int(fields[12])) / ticks_per_s, int(fields[16]))
    return threads


@linux_only
@pytest.mark.anyio
async def test_model_calls_run_niced_and_so_do_the_threads_they_start_but_not_the_event_loop():
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def model_work() -> tuple[int, int]:
        started: list[int] = []
        child = threading.Thread(target=lambda: started.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        child.start()
        child.join()
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), started[0]

    worker_nice, child_nice = await priority.run_model(model_work)
    assert worker_nice >= priority.MODEL_THREAD_NICE > 0
    assert child_nice == worker_nice  # a model library's pool started from the call is niced too
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice
    blas = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    assert blas and all(info["num_threads"] == 1 for info in blas)  # numpy's; its workers, at nice 0, would spin


@linux_only
def test_nice_zero_from_the_environment_leaves_model_threads_as_they_are():
    script = (
        "import os, threading, anyio\n"
        "from realtime_pipeline import priority\n"
        "nice = anyio.run(priority.run_model, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))\n"
        "print(priority.MODEL_THREAD_NICE, nice, os.getpriority(os.PRIO_PROCESS, 0))\n"
    )
    for value in ("0", "5"):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60,
                                env={**os.environ, "REALTIME_PIPELINE_MODEL_NICE": value})
        setting, worker_nice, process_nice = map(int, result.stdout.split())
        assert setting == int(value)
        assert worker_nice == max(int(value), process_nice)


@linux_only
@pytest.mark.models
@pytest.mark.anyio
async def test_a_real_spoken_turns_model_work_is_done_at_the_models_priority(asr, llm, tts):
    """What a turn costs on the CPU (Whisper, the LLM, Piper, through the stages' own calls) is
    spent in niced threads; the event loop, which paces the audio, keeps its priority."""
    output = MemoryOutput(tts.output_sample_rate_hz, paced=False)
    pipeline = voice_pipeline(WavFileSource([SPEECH_DIR / "mfa_thoughts.wav"], realtime=False), output,
                              asr=asr, llm=llm, tts=tts)
    loop_thread = threading.get_native_id()
    loop_nice = os.getpriority(os.PRIO_PROCESS, loop_thread)
    before = thread_cpu_s_and_nice()
    await pipeline.run()
    after = thread_cpu_s_and_nice()

    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    assert any(output.audio(response.id).size for response in responses), "no spoken reply"
    used_s = {tid: cpu_s - before.get(tid, (0.0, 0))[0] for tid, (cpu_s, _) in after.items()}
    total_s = sum(used_s.values())
    niced_s = sum(s for tid, s in used_s.items() if after[tid][1] >= priority.MODEL_THREAD_NICE)
    assert total_s > 0.5, used_s  # the models did run
    assert niced_s / total_s > 0.9, {tid: (round(s, 2), after[tid][1]) for tid, s in used_s.items() if s > 0.01}
    assert after[loop_thread][1] == loop_nice
