"""The command line: a conversation from files, and clear one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

from conftest import EXAMPLE_AUDIO_DIR
from realtime_pipeline import read_wav
from realtime_pipeline.audio import speech_level_dbfs

ROOT = Path(__file__).parent.parent


def run_cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "realtime_pipeline", *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
    )


def wav(path: Path, data: bytes, *, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(16000)
        out.writeframes(data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.wav", "no such file"),
        (lambda d: (d / "text.wav").write_text("hello") and d / "text.wav", "not a PCM WAV"),
        (lambda d: wav(d / "8bit.wav", b"\x80" * 1600, width=1), "8-bit"),
        (lambda d: wav(d / "stereo.wav", b"\x00\x00" * 3200, channels=2), "2 channels"),
        (lambda d: wav(d / "empty.wav", b""), "empty audio"),
    ],
)
def test_bad_input_gets_one_clear_line_and_a_nonzero_exit(tmp_path, make, message):
    path = make(tmp_path)
    result = run_cli("--input", str(path), "--output", str(tmp_path / "reply.wav"), timeout_s=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert str(path.name) in error_lines[0]


def test_echo_path_fits_without_the_double_talk_path_are_refused(capsys):
    from realtime_pipeline.cli import main

    for flag in ("--no-aec", "--no-double-talk"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--echo-path-fit", flag])
        assert exit_info.value.code == 2
        assert f"does not go with {flag}" in capsys.readouterr().err


def test_output_without_input_is_refused(tmp_path):
    result = run_cli("--output", str(tmp_path / "reply.wav"), timeout_s=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--output needs at least one --input" in result.stderr


@pytest.mark.models
def test_a_conversation_from_files_prints_transcripts_replies_and_latency(tmp_path):
    reply = tmp_path / "reply.wav"
    result = run_cli(
        "--input", str(EXAMPLE_AUDIO_DIR / "question.wav"),
        "--input", str(EXAMPLE_AUDIO_DIR / "follow_up.wav"),
        "--output", str(reply),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    you = [line for line in lines if line.startswith("you: ")]
    assistant = [line for line in lines if line.startswith("assistant: ")]
    latency = [line for line in lines if line.strip().startswith("latency: ")]
    assert len(you) == 2 and len(assistant) == 2 and len(latency) == 2, result.stdout
    assert "capital of france" in you[0].lower()
    assert all(len(line) > len("assistant: ") + 3 for line in assistant)
    assert all("voice_to_voice" in line for line in latency)
    samples, rate = read_wav(reply)
    assert len(samples) / rate > 1.0
    assert speech_level_dbfs(samples, rate) > -30


@pytest.mark.models
def test_the_microphone_without_a_sound_card_is_a_clear_error():
    result = run_cli(timeout_s=120)
    if result.returncode == 0:
        pytest.skip("this machine has working audio devices")
    assert "Traceback" not in result.stderr
    assert any(line.startswith("error:") and "audio" in line.lower() for line in result.stderr.splitlines()), result.stderr


@pytest.mark.models
def test_the_minimal_example_answers_the_example_question(tmp_path):
    reply = tmp_path / "reply.wav"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "minimal_assistant.py"), str(EXAMPLE_AUDIO_DIR / "question.wav"), str(reply)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "you: What is the capital of France?" in result.stdout
    assert "assistant: " in result.stdout and "latency: " in result.stdout
    samples, rate = read_wav(reply)
    assert len(samples) / rate > 0.5
    assert len((ROOT / "examples" / "minimal_assistant.py").read_text().splitlines()) < 40
