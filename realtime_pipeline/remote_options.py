"""The command-line options that put a model on a remote OpenAI-compatible server, shared by
``python -m realtime_pipeline`` and ``serve``: ``--llm-base-url`` (with the local model as the
fallback unless ``--no-llm-fallback``), ``--stt-base-url``, ``--tts-base-url``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from .failover import FailoverEngine
from .llm_engine import LLMEngine
from .stages.openai_llm import API_KEY_ENV, OpenAIEngine

#: The default first-token budget before the local model answers (see :mod:`.failover`).
DEFAULT_FIRST_TOKEN_TIMEOUT_S = 1.5


def add_remote_options(parser: argparse.ArgumentParser, *, speech: bool = True) -> None:
    """The ``--llm-*`` options, and with ``speech`` the ``--stt-*`` and ``--tts-*`` ones."""
    group = parser.add_argument_group(
        "remote models", "any OpenAI-compatible server (llama.cpp's llama-server or python -m llama_cpp.server, vLLM, Ollama, a cloud API)")
    group.add_argument("--llm-base-url", metavar="URL",
                       help="the LLM's Chat Completions API root, e.g. http://127.0.0.1:8080/v1 (default: the local llama.cpp model)")
    group.add_argument("--llm-model-name", metavar="NAME", help="the model to ask for (default: the first the server lists)")
    also = ", for --stt-base-url and --tts-base-url too" if speech else ""
    group.add_argument("--llm-api-key", metavar="KEY", default=None,
                       help=f"the server's API key{also} (default: ${API_KEY_ENV[0]}, then ${API_KEY_ENV[1]}; none for a local server)")
    group.add_argument("--llm-first-token-timeout-s", type=float, default=DEFAULT_FIRST_TOKEN_TIMEOUT_S, metavar="S",
                       help="with --llm-base-url: the local model answers a turn when the server gives no first token within this "
                       "long or fails (default %(default)s)")
    group.add_argument("--no-llm-fallback", dest="llm_fallback", action="store_false",
                       help="with --llm-base-url: no local model (a server failure is an error)")
    if not speech:
        return
    group.add_argument("--stt-base-url", metavar="URL", help="transcribe on this server's /audio/transcriptions (default: local faster-whisper)")
    group.add_argument("--stt-model-name", metavar="NAME", default="whisper-1")
    group.add_argument("--tts-base-url", metavar="URL", help="synthesize on this server's /audio/speech (default: local Piper)")
    group.add_argument("--tts-model-name", metavar="NAME", default="tts-1")
    group.add_argument("--tts-voice", metavar="NAME", default="alloy", help="the server's voice name (default %(default)s)")


def check_remote_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.llm_first_token_timeout_s <= 0:
        parser.error("--llm-first-token-timeout-s must be positive")
    for name in ("llm_base_url", "stt_base_url", "tts_base_url"):
        url = getattr(args, name, None)
        if url and not url.startswith(("http://", "https://")):
            parser.error(f"--{name.replace('_', '-')} must start with http:// or https://, got {url!r}")


def remote_llm_engine(args: argparse.Namespace, local: Callable[[], LLMEngine], *, max_tokens: int) -> LLMEngine | None:
    """The remote LLM engine of ``args`` (failing over to ``local()`` unless ``--no-llm-fallback``),
    or None without ``--llm-base-url``."""
    if not args.llm_base_url:
        return None
    api_key = args.llm_api_key or os.environ.get(API_KEY_ENV[0]) or os.environ.get(API_KEY_ENV[1])
    if not args.llm_fallback:
        return OpenAIEngine(args.llm_base_url, args.llm_model_name, api_key=api_key, max_tokens=max_tokens)
    # With a fallback, a refused connection is answered for at once instead of retried (measured:
    # 2 retries cost 0.6 s of first audio against a killed server; docs/deploying.md).
    remote = OpenAIEngine(args.llm_base_url, args.llm_model_name, api_key=api_key, max_tokens=max_tokens, connect_retries=0)
    return FailoverEngine(remote, local(), first_token_timeout_s=args.llm_first_token_timeout_s)
