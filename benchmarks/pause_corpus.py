"""``python -m benchmarks.pause_corpus``: the turn-taking corpus of real speech with a pause inside a clause.

Each bundled recording (tests/data/speech) is split at a word boundary inside a
clause — found with faster-whisper's word timestamps on the embedded tiny.en,
never after a word that ends with punctuation, never in the first or last
word — and 0.6–1.5 s of the clip's own background noise is inserted there. The
result is one user turn with a hesitation: a detector that commits the turn
in that pause cuts the user off. Recordings with fewer than four words, or no
boundary inside a clause, are left out. The output directory gets the WAV
files, ``transcripts.tsv`` / ``transcripts_normalized.tsv`` (the original
references: the words do not change) and ``pauses.tsv`` (where the pause is).

Deterministic for a given ``--seed`` and model. Regenerate with:

    python -m benchmarks.pause_corpus --out tests/data/pauses
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_pipeline import models
from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ, read_wav, resample, write_wav

from .turns import DEFAULT_AUDIO_DIR, read_tsv

FRAME_MS = 10
CROSSFADE_MS = 20


@dataclass(frozen=True)
class Cut:
    after_word: str
    before_word: str
    cut_sample: int
    word_index: int
    words: int


def frame_levels_db(samples: np.ndarray, rate: int) -> np.ndarray:
    frame = rate * FRAME_MS // 1000
    count = len(samples) // frame
    blocks = samples[: count * frame].astype(np.float64).reshape(count, frame)
    return 10.0 * np.log10(np.mean(np.square(blocks), axis=1) + 1e-9)


def background_noise(samples: np.ndarray, rate: int, length: int, rng: random.Random) -> np.ndarray:
    """``length`` samples of the clip's own background: its quietest 10 ms frames, spliced with crossfades."""
    frame = rate * FRAME_MS // 1000
    levels = frame_levels_db(samples, rate)
    quiet = np.argsort(levels)[: max(8, len(levels) // 10)]  # the quietest tenth of the clip
    fade = rate * CROSSFADE_MS // 1000
    pieces: list[np.ndarray] = []
    total = 0
    while total < length + fade:
        # runs of three quiet frames in a row where they exist (less choppy), single frames otherwise
        index = int(quiet[rng.randrange(len(quiet))])
        start = index * frame
        piece = samples[max(0, start - fade) : start + 3 * frame].astype(np.float64)
        pieces.append(piece)
        total += len(piece) - fade
    out = pieces[0]
    ramp = np.linspace(0.0, 1.0, fade)
    for piece in pieces[1:]:
        if len(out) >= fade and len(piece) >= fade:
            out[-fade:] = out[-fade:] * (1.0 - ramp) + piece[:fade] * ramp
            out = np.concatenate([out, piece[fade:]])
        else:
            out = np.concatenate([out, piece])
    return out[:length]


def choose_cut(words: Sequence, samples: np.ndarray, rate: int, rng: random.Random) -> Cut | None:
    """A boundary between two words inside a clause, near the middle, at the quietest 10 ms in the gap."""
    if len(words) < 4:
        return None
    candidates = [
        i for i in range(1, len(words) - 2)  # after word i; not after the first, not before the last
        if not words[i].word.strip()[-1:] in ",.;:!?-" and words[i].word.strip()
    ]
    if not candidates:
        return None
    middle = (len(words) - 1) / 2
    candidates.sort(key=lambda i: (abs(i - middle), rng.random()))
    i = candidates[0]
    frame = rate * FRAME_MS // 1000
    levels = frame_levels_db(samples, rate)
    lo = max(0, int((words[i].end - 0.05) * 1000 / FRAME_MS))
    hi = min(len(levels) - 1, int((words[i + 1].start + 0.05) * 1000 / FRAME_MS))
    best = lo + int(np.argmin(levels[lo : hi + 1])) if hi >= lo else int(words[i].end * 1000 / FRAME_MS)
    return Cut(words[i].word.strip(), words[i + 1].word.strip(), best * frame + frame // 2, i, len(words))


def make_corpus(source_dir: Path, out_dir: Path, *, seed: int = 0, min_pause_s: float = 0.6, max_pause_s: float = 1.5) -> list[dict]:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(models.whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=2)
    references = read_tsv(source_dir / "transcripts.tsv")
    normalized_path = source_dir / "transcripts_normalized.tsv"
    normalized = read_tsv(normalized_path) if normalized_path.is_file() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in references:
        rng = random.Random(f"{seed}:{name}")
        samples, rate = read_wav(source_dir / name)
        samples = resample(samples, rate, INPUT_SAMPLE_RATE_HZ)
        rate = INPUT_SAMPLE_RATE_HZ
        segments, _ = model.transcribe(samples.astype(np.float32) / 32768.0, language="en", beam_size=1,
                                       word_timestamps=True, condition_on_previous_text=False, vad_filter=False)
        words = [word for segment in segments for word in (segment.words or [])]
        cut = choose_cut(words, samples, rate, rng)
        if cut is None:
            print(f"{name}: left out ({len(words)} words, no boundary inside a clause)", file=sys.stderr)
            continue
        pause_s = round(rng.uniform(min_pause_s, max_pause_s), 2)
        noise = background_noise(samples, rate, int(pause_s * rate), rng)
        fade = rate * CROSSFADE_MS // 1000
        head = samples[: cut.cut_sample].astype(np.float64)
        tail = samples[cut.cut_sample :].astype(np.float64)
        ramp = np.linspace(0.0, 1.0, fade)
        noise[:fade] = head[-fade:] * (1.0 - ramp) + noise[:fade] * ramp
        tail[:fade] = noise[-fade:] * (1.0 - ramp) + tail[:fade] * ramp
        joined = np.concatenate([head[:-fade], noise, tail])
        audio = np.clip(np.round(joined), -32768, 32767).astype(np.int16)
        write_wav(out_dir / name, audio, rate)
        rows.append({"file": name, "reference": references[name], "normalized": normalized.get(name, ""),
                     "pause_start_s": round(cut.cut_sample / rate, 3), "pause_s": pause_s,
                     "after_word": cut.after_word, "before_word": cut.before_word})
        print(f"{name}: pause of {pause_s:.2f} s at {cut.cut_sample / rate:.2f} s, "
              f"between {cut.after_word!r} and {cut.before_word!r}", file=sys.stderr)
    (out_dir / "transcripts.tsv").write_text("".join(f"{r['file']}\t{r['reference']}\n" for r in rows), encoding="utf-8")
    if normalized:
        (out_dir / "transcripts_normalized.tsv").write_text(
            "".join(f"{r['file']}\t{r['normalized']}\n" for r in rows), encoding="utf-8")
    (out_dir / "pauses.tsv").write_text(
        "file\tpause_start_s\tpause_s\tafter_word\tbefore_word\n"
        + "".join(f"{r['file']}\t{r['pause_start_s']}\t{r['pause_s']}\t{r['after_word']}\t{r['before_word']}\n" for r in rows),
        encoding="utf-8")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pause_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_AUDIO_DIR, help="WAV files with a transcripts.tsv")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = make_corpus(args.source, args.out, seed=args.seed)
    print(f"{len(rows)} files written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
