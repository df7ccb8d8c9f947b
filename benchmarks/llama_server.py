"""A real OpenAI-compatible model server for the tests and benchmarks: ``python -m llama_cpp.server`` (the
llama-cpp-python ``[server]`` extra) serving the embedded SmolLM2 GGUF on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from realtime_pipeline.models import llm_model_file
from realtime_pipeline.server.app import free_port

#: The longest a server may take to load the model and answer GET /v1/models (a loop bound).
START_TIMEOUT_S = 90.0
#: The model name the server answers to (its alias).
MODEL_NAME = "smollm2"


class LlamaServer:
    """``python -m llama_cpp.server`` in a child process; ``stop()`` (or leaving ``with``) kills it.

    ``chat_format`` None: the GGUF's own chat template (SmolLM2's ChatML), with which the server
    streams tool calls for a named ``tool_choice`` (a grammar on the tool's schema) and renders
    ``tool`` results; it ignores ``auto`` and ``required`` (the model writes text).
    ``chatml-function-calling`` is worse here: it cannot stream ``auto``, refuses ``required``
    and leaves ``tool`` messages out of the prompt (llama-cpp-python 0.3.36)."""

    def __init__(self, *, chat_format: str | None = None, n_ctx: int = 2048, threads: int = 1) -> None:
        self.port = free_port()
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log"
        self.command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(llm_model_file()), "--model_alias", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--verbose", "False",
            # Queue concurrent requests instead of cutting the running one off (its default).
            "--interrupt_requests", "False",
        ]
        if chat_format:
            self.command += ["--chat_format", chat_format]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as a crashed or OOM-killed one would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its socket (connections are accepted) but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        try:
            self.log_path.unlink()
        except OSError:
            pass
