"""benchmarks.echo_replay without models: what a recording must be, and its command's errors.
(The replay of a real session is in tests/test_echo_real.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import barge_in, echo_replay
from realtime_pipeline.echo_cancel import EchoCancellation
from realtime_pipeline.io.outputs import MemoryOutput


def _stage() -> EchoCancellation:
    return EchoCancellation(MemoryOutput(16000), canceller=None)


def test_a_recording_must_exist_and_be_contiguous(tmp_path):
    stage = _stage()
    with pytest.raises(ValueError, match="nothing recorded"):
        echo_replay.save_recording(tmp_path / "r.npz", stage, [], [])
    frame = np.zeros(320, dtype=np.int16)
    stage.recording = [(0, frame, frame, frame), (480, frame, frame, frame)]  # 160 samples lost in between
    with pytest.raises(ValueError, match="not contiguous"):
        echo_replay.save_recording(tmp_path / "r.npz", stage, [], [])
    stage.recording = [(-128, frame, frame, frame), (192, frame, frame, frame)]
    echo_replay.save_recording(tmp_path / "r.npz", stage, [(100, 320)], [echo_replay.Attempt("a.wav", 100, 200, 420, None)])
    recording = echo_replay.load_recording(tmp_path / "r.npz")
    assert recording.start_sample == -128 and len(recording.capture) == 640 and not recording.calibrated
    assert recording.attempts == [echo_replay.Attempt("a.wav", 100, 200, 420, None)]
    assert recording.settings == {"double_talk": True, "high_band": True, "echo_path_fit": False}
    result = echo_replay.replay(recording)  # silence: nothing paused, nothing measured
    assert result["attempts"] == [{"name": "a.wav", "pause_ms": None, "live_barge_in_ms": None}]
    assert echo_replay.summary([result])["attempts"] == 0


def test_the_commands_refuse_what_they_cannot_do(tmp_path, capsys):
    assert echo_replay.main([str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    # recording needs the echo room's double-talk path: refused before any model loads
    assert barge_in.main(["--record", str(tmp_path / "r.npz")]) == 2
    assert barge_in.main(["--record", str(tmp_path / "r.npz"), "--echo-delay-ms", "100", "--echo-mode", "aec"]) == 2
    assert "--record needs" in capsys.readouterr().err
