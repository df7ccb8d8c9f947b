"""The benchmark's user turns: WAV files, their references, and where the speech really ends."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ, read_wav, resample

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"

_NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


@dataclass(frozen=True, eq=False)
class Turn:
    """One user turn: 16 kHz int16 audio, its normalized reference, and its ground-truth speech end."""

    name: str
    samples: np.ndarray
    reference: str
    speech_end_sample: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / INPUT_SAMPLE_RATE_HZ


def normalize_text(text: str) -> str:
    """Like ``transcripts_normalized.tsv``: lower case, no punctuation; digits 0–10 as words
    (Whisper writes "10", the references "ten")."""
    text = re.sub(r"[^a-z0-9' ]", " ", text.lower())
    words = [_NUMBER_WORDS[int(w)] if w.isdigit() and int(w) <= 10 else w for w in text.split()]
    return " ".join(words)


def last_voiced_sample(samples: np.ndarray, sample_rate_hz: int, *, frame_ms: int = 10) -> int:
    """End (exclusive sample index) of the last voiced audio, by energy, not by the VAD.

    10 ms frames count as voiced above ``max(noise floor + 12 dB, loud peak - 40 dB)``
    (floor: the 10th percentile frame, peak: the 99th); a lone loud frame
    (a click) does not count, two of three consecutive frames must be voiced.
    """
    frame = max(1, sample_rate_hz * frame_ms // 1000)
    count = len(samples) // frame
    if count == 0:
        return len(samples)
    blocks = samples[: count * frame].astype(np.float64).reshape(count, frame)
    level_db = 10.0 * np.log10(np.mean(np.square(blocks), axis=1) + 1e-9)
    threshold = max(np.percentile(level_db, 10) + 12.0, np.percentile(level_db, 99) - 40.0)
    voiced = level_db > threshold
    for index in range(count - 1, -1, -1):
        if voiced[index] and voiced[max(0, index - 2) : index].any():
            return (index + 1) * frame
    return count * frame


def read_tsv(path: Path) -> dict[str, str]:
    rows = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}:{number}: expected 'filename<TAB>text'")
        name, text = line.split("\t", 1)
        rows[name.strip()] = text.strip()
    return rows


def load_turns(audio_dir: str | Path = DEFAULT_AUDIO_DIR, *, limit: int | None = None, seed: int = 0) -> list[Turn]:
    """The turns listed in ``audio_dir/transcripts.tsv``, in file order.

    With ``limit``, a random subset of that size chosen with ``seed`` (kept in
    file order). References come from ``transcripts_normalized.tsv`` when it
    exists, else ``transcripts.tsv`` normalized with :func:`normalize_text`.
    """
    directory = Path(audio_dir)
    listing = directory / "transcripts.tsv"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: --audio-dir needs WAV files and a transcripts.tsv (filename<TAB>text)")
    references = read_tsv(listing)
    normalized_path = directory / "transcripts_normalized.tsv"
    normalized = read_tsv(normalized_path) if normalized_path.is_file() else {}
    names = list(references)
    if not names:
        raise ValueError(f"{listing} lists no files")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        if limit < len(names):
            chosen = set(random.Random(seed).sample(names, limit))
            names = [name for name in names if name in chosen]
    turns = []
    for name in names:
        samples, rate = read_wav(directory / name)
        samples = resample(samples, rate, INPUT_SAMPLE_RATE_HZ)
        reference = normalize_text(normalized.get(name, references[name]))
        turns.append(Turn(name, samples, reference, last_voiced_sample(samples, INPUT_SAMPLE_RATE_HZ)))
    return turns
