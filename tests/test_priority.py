"""Model calls: BLAS in their own thread, and at a lower CPU priority when asked (``realtime_pipeline.priority``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import threadpoolctl

from conftest import SPEECH_DIR
from realtime_pipeline import priority

linux_only = pytest.mark.skipif(not priority.supported(), reason="threads are niced one by one on Linux only")


@pytest.mark.anyio
async def test_model_calls_keep_blas_in_their_thread_and_leave_it_unniced_by_default():
    if "REALTIME_PIPELINE_MODEL_NICE" not in os.environ:
        assert priority.MODEL_THREAD_NICE == 0  # opt-in: niced models yield to any busy thread (the module's doc)
    if priority.MODEL_THREAD_NICE > 0:
        pytest.skip("REALTIME_PIPELINE_MODEL_NICE is set: the other tests cover it")
    before = os.getpriority(os.PRIO_PROCESS, 0)
    nice = await priority.run_model(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert nice == before
    blas = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    assert blas and all(info["num_threads"] == 1 for info in blas)  # numpy's; its worker would spin after each call


@linux_only
def test_with_a_nice_set_model_calls_run_niced_and_so_do_the_threads_they_start_but_not_the_event_loop():
    script = (
        "import os, threading, anyio\n"
        "from realtime_pipeline import priority\n"
        "def nice(): return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
        "def model_work():\n"
        "    started = []\n"
        "    child = threading.Thread(target=lambda: started.append(nice()))\n"
        "    child.start(); child.join()\n"
        "    return nice(), started[0]\n"
        "async def main():\n"
        "    worker, child = await priority.run_model(model_work)\n"
        "    print(priority.MODEL_THREAD_NICE, worker, child, nice())\n"
        "anyio.run(main)\n"
    )
    process_nice = os.getpriority(os.PRIO_PROCESS, 0)
    for value in (5, 10):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60,
                                env={**os.environ, "REALTIME_PIPELINE_MODEL_NICE": str(value)})
        setting, worker_nice, child_nice, loop_nice = map(int, result.stdout.split())
        assert setting == value
        assert worker_nice == max(value, process_nice)
        assert child_nice == worker_nice  # a model library's pool started from the call is niced too
        assert loop_nice == process_nice


_REAL_TURN = """
import json, os, threading, anyio
from pathlib import Path
from realtime_pipeline import MemoryOutput, WavFileSource, voice_pipeline
from realtime_pipeline.response import Response

def threads():
    ticks = os.sysconf("SC_CLK_TCK"); out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[task.name] = ((int(fields[11]) + int(fields[12])) / ticks, int(fields[16]))  # utime+stime, nice (proc(5))
    return out

async def main():
    output = MemoryOutput(22050, paced=False)
    pipeline = voice_pipeline(WavFileSource([Path(os.environ["WAV"])], realtime=False), output)
    await pipeline.start()  # the models load (in niced threads too)
    before = threads()
    await pipeline.run()
    after = threads()
    responses = [item for item in pipeline.conversation.items if isinstance(item, Response)]
    used = {tid: (cpu - before.get(tid, (0.0, 0))[0], nice) for tid, (cpu, nice) in after.items()}
    print(json.dumps({"used": used, "loop": str(threading.get_native_id()), "spoken": sum(len(output.audio(r.id)) for r in responses)}))

anyio.run(main)
"""


@linux_only
@pytest.mark.models
def test_with_a_nice_set_a_real_spoken_turns_model_work_runs_niced():
    """What a turn costs on the CPU (Whisper, the LLM, Piper, through the stages' own calls) is
    spent in niced threads; the event loop, which paces the audio, keeps its priority."""
    result = subprocess.run([sys.executable, "-c", _REAL_TURN], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "REALTIME_PIPELINE_MODEL_NICE": "10", "WAV": str(SPEECH_DIR / "mfa_thoughts.wav")})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["spoken"] > 0, "no spoken reply"
    used = report["used"]
    total_s = sum(cpu_s for cpu_s, _ in used.values())
    niced_s = sum(cpu_s for cpu_s, nice in used.values() if nice >= 10)
    assert total_s > 0.5, used  # the models did run
    assert niced_s / total_s > 0.9, used
    assert used[report["loop"]][1] == os.getpriority(os.PRIO_PROCESS, 0)
