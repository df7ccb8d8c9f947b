"""The end-of-turn models on real speech, and the CLI answering a paused utterance once.

The pause corpus (tests/data/pauses) is the bundled speech with a pause inserted inside a clause;
``pauses.tsv`` says where. The same recording heard up to that pause is an unfinished turn, and
heard to its end a finished one: each model must put them on the expected sides, by a margin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SPEECH_DIR
from realtime_pipeline import WhisperASR, read_wav
from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ
from realtime_pipeline.conversation import DEFAULT_SYSTEM_PROMPT
from realtime_pipeline.models import ModelNotFoundError
from realtime_pipeline.stages.llm import LlamaLLM
from realtime_pipeline.stages.smart_turn import SmartTurnModel

pytestmark = pytest.mark.models

PAUSE_DIR = Path(__file__).parent / "data" / "pauses"
ROOT = Path(__file__).parent.parent
#: Real recordings whose mid-clause pause and end both models judge clearly (tests/data/pauses).
CLIPS = ("ps_librivox_0870.wav", "mfa_theother.wav", "ps_librivox_0930.wav")


def pause_start_s(name: str) -> float:
    for line in (PAUSE_DIR / "pauses.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        fields = line.split("\t")
        if fields[0] == name:
            return float(fields[1])
    raise KeyError(name)


def finished_and_unfinished(name: str, tail_ms: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The recording to its end, and the paused version up to ``tail_ms`` into its pause."""
    whole, _ = read_wav(SPEECH_DIR / name)
    paused, _ = read_wav(PAUSE_DIR / name)
    cut = int((pause_start_s(name) + tail_ms / 1000) * INPUT_SAMPLE_RATE_HZ)
    return whole, paused[:cut]


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurnModel:
    model = SmartTurnModel()
    model.load()
    return model


@pytest.mark.parametrize("name", CLIPS[:2])
def test_smart_turn_tells_a_finished_real_turn_from_one_paused_mid_clause(smart_turn: SmartTurnModel, name: str) -> None:
    finished, unfinished = finished_and_unfinished(name)
    p_finished, p_unfinished = smart_turn.predict(finished), smart_turn.predict(unfinished)
    assert p_finished > 0.7, p_finished
    assert p_unfinished < 0.3, p_unfinished


@pytest.mark.parametrize("name", [CLIPS[0], CLIPS[2]])
def test_the_llm_end_of_turn_score_tells_the_same_real_turns_apart(asr: WhisperASR, llm: LlamaLLM, name: str) -> None:
    finished, unfinished = finished_and_unfinished(name)
    scores = []
    for audio in (finished, unfinished):
        text = asr.transcribe(audio)
        assert text.strip(), "Whisper heard nothing"
        scores.append(llm.engine.end_of_turn_probability_sync(
            [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}]))
    p_finished, p_unfinished = scores
    assert p_finished is not None and p_unfinished is not None
    assert p_finished > 0.2 and p_unfinished < 0.05, scores
    assert p_finished > 10 * p_unfinished


def test_a_missing_smart_turn_model_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="nothing.onnx"):
        SmartTurnModel(tmp_path / "nothing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match="cannot load the Smart Turn model"):
        SmartTurnModel(broken).load()


def test_the_cli_answers_a_sentence_with_a_pause_in_it_once(tmp_path: Path) -> None:
    """Real time (as a microphone would hear it): the pause of 0.9 s after "how much" is held."""
    result = subprocess.run(
        [sys.executable, "-m", "realtime_pipeline", "--input", str(PAUSE_DIR / CLIPS[0]), "--output", str(tmp_path / "reply.wav"),
         "--max-tokens", "20"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    said = [line for line in lines if line.startswith("you: ")]
    answered = [line for line in lines if line.startswith("assistant")]
    assert len(said) == 1, result.stdout
    assert len(answered) == 1 and "interrupted" not in answered[0], result.stdout
