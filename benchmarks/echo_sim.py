"""Barge-in in the echo room, offline: the echo stage on real replies and real speech, in seconds.

``python -m benchmarks.barge_in --echo-delay-ms 100`` runs the whole pipeline in real
time: 12 interruptions take 80 s, and when and what the replies play changes from
run to run, so a rare failure (a reply paused on its own echo in 1 of 6 runs) takes
an hour to see and cannot be replayed. This runs only what decides a barge-in under
echo, causally in 20 ms steps: the room (:class:`~realtime_pipeline.io.echo_room.EchoRoomSettings`),
the echo stage (the real AEC3 through ``EchoCancellation.process``), the VAD's rule
(webrtcvad, its level floor, 3 of 5 frames voiced to start) and the reply stopping
after the step in which the user has the conversation's barge-in threshold of voiced audio
(``min_interruption_while_speaking_ms`` while the stage says the echo may reach the VAD: the gate,
or AEC3 before it has heard the room without the start sound; else ``min_interruption_ms``). The replies are
Piper's (synthesized once), the users the bundled speech files; the same seed gives the
same session. As live, a session starts with the double-talk path's start sound
(``--no-echo-calibration``: without it) and its first reply 0.5 s after it. As in the live
benchmark most users start 400 ms into a reply; every
third one starts 2.5-8 s in (long stretches of echo alone, replies ending); ``--long-every 0``
starts every one 400 ms in, as the live benchmark does (the double-talk filter then has ~0.5 s
of echo alone per reply to learn from).

Per mode:

* ``barge_in_ms``: the user's onset (``barge_in.speech_onset_sample``) → the end of the step
  in which the reply stops (the live benchmark adds the output's block and scheduling);
* ``missed``: the reply played on through the user's words;
* ``before_onset``: the reply stopped on the user's own sound before the words' onset (a breath,
  a soft first consonant: ``barge_in.speech_onset_sample`` starts at the first loud 10 ms), as the
  live benchmark's ``vad_before_onset``: heard, but no latency. Until 2026-12-05 these counted as
  missed (with the start sound the filter hears such sounds under the echo: 5 of 14 sessions of
  ``tests/test_echo_real.py``'s had one, none without the sound);
* ``self_interruptions``: the reply stopped where the user's own audio would not have
  started the VAD (under 2 voiced frames of it in the last 300 ms): the echo did;
* ``barge_in_p50_ms_first_two`` / ``_later``: the median of each session's first two
  interruptions (the room and the detector's line still being learnt) and of the rest;
  ``--oracle-filter`` starts the double-talk filter as the room's true echo path, to see
  what its learning costs;
* ``wer`` (``--wer``): each user's words transcribed (Whisper, whole utterance at once) from what
  the echo stage gives the ASR, from the VAD's start less its prefix padding (the ASR's window).

    python -m benchmarks.echo_sim --sessions 8 --modes aec,double-talk
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webrtcvad

from realtime_pipeline.audio import INPUT_SAMPLE_RATE_HZ, read_wav, resample
from realtime_pipeline.cancellation import CancelToken
from realtime_pipeline.double_talk import AEC_FLOOR_MARGIN_DB
from realtime_pipeline.echo_cancel import EchoCancellation, EchoCanceller, EchoGate
from realtime_pipeline.interruption import InterruptionSettings
from realtime_pipeline.io.echo_room import EchoRoomSettings
from realtime_pipeline.io.outputs import MemoryOutput
from realtime_pipeline.stages.vad import VADSettings

from .barge_in import SPEECH_DIR, speech_onset_sample
from .measure import word_error_rate
from .turns import last_voiced_sample, read_tsv

RATE = INPUT_SAMPLE_RATE_HZ


class _AudibleReply:
    """Stands for a reply while it plays, for ``InterruptionSettings.threshold_ms``."""

    played_ms = 1.0
    paused = False


AUDIBLE_REPLY: Any = _AudibleReply()
STEP = RATE // 50  # 20 ms, the VAD's frame
MODES = ("aec", "double-talk", "gate")
#: The rooms a session cycles through unless one is given: the issue's default (100 ms, 0 dB) and
#: the two other rooms the live runs used.
ROOMS = (EchoRoomSettings(), EchoRoomSettings(delay_ms=50, rt60_ms=500, seed=3),
         EchoRoomSettings(delay_ms=180, gain_db=-6.0, seed=5))
REPLY_TEXTS = (
    "Paris is the capital of France, and it sits on the river Seine in the north of the country. "
    "It is known for the Eiffel Tower, the Louvre museum and its many cafes along wide boulevards.",
    "Sure. To make a good cup of tea, boil fresh water, warm the pot, and let the leaves steep for three to five "
    "minutes. Then pour it out, add milk if you like, and enjoy it while it is hot.",
    "The weather tomorrow looks mild, with some clouds in the morning and sunshine by the afternoon. Highs will "
    "be around eighteen degrees, and there is a small chance of rain late in the evening.",
    "Photosynthesis is how plants turn light into food. They take in carbon dioxide and water, and using the "
    "energy of sunlight, they make sugar and release oxygen into the air we breathe.",
    "Here is a short story. Once upon a time, a small fox lived at the edge of a great forest. Every night she "
    "watched the stars and wondered what lay beyond the hills. One morning, she decided to find out.",
    "Good question! The fastest way to learn a language is to use it every day. Speak with native speakers, "
    "listen to podcasts, read simple books, and do not be afraid of making mistakes along the way.",
    "Your meeting is at three o'clock. I have added a reminder fifteen minutes before. Would you like me to send "
    "the agenda to the other people as well, or keep it just for you?",
    "Mount Everest is the highest mountain on Earth, at almost nine thousand metres. It lies in the Himalayas, "
    "on the border between Nepal and China, and thousands of climbers try to reach its summit.",
)


def set_true_echo_path(stage: Any, room: EchoRoomSettings) -> None:
    """The double-talk path's linear filter set to the room's own echo path (its delay, gain and
    impulse response, cut to the filter's tail) before the session: an oracle, to see what a
    filter that has nothing left to learn would change."""
    linear = stage.linear
    if linear is None:
        raise ValueError("the oracle filter needs the double-talk mode")
    taps = np.zeros(linear.partitions * linear.block)
    response = room.response() * 10 ** (room.gain_db / 20)
    delay = room.delay_ms * RATE // 1000
    count = max(0, min(len(response), len(taps) - delay))
    taps[delay : delay + count] = response[:count]
    linear.set_taps(taps)


def synthesize_replies(tts: Any, texts: Sequence[str] = REPLY_TEXTS) -> list[np.ndarray]:
    """Each text as Piper says it, at 16 kHz (what the loopback reference is)."""
    replies = []
    for text in texts:
        audio = tts.synthesize(text, CancelToken())
        replies.append(np.round(resample(audio.astype(np.float32) / 32768, tts.output_sample_rate_hz, RATE) * 32767))
    return replies


def stage_for(mode: str, *, aec_floor_margin_db: float | None = AEC_FLOOR_MARGIN_DB, residual_for_asr: bool = True,
              echo_path_fit: bool = False, high_band: bool = True) -> Any:
    """A fresh echo stage (offline: its ``process`` is called directly); ``aec_floor_margin_db``
    is the double-talk detectors' (None: no AEC3 floor veto, as before 2026-12-04),
    ``residual_for_asr``, ``echo_path_fit`` and ``high_band`` the stage's (False: the ASR hears what the VAD
    hears; True: least-squares fits of the echo path beside the NLMS filter, opt-in; False: the
    speech band's detector alone, as before 2026-12-05)."""
    output = MemoryOutput(RATE)
    if mode == "aec":
        return EchoCancellation(output, canceller=EchoCanceller(), double_talk=False)
    if mode == "double-talk":
        stage = EchoCancellation(output, canceller=EchoCanceller(), double_talk=True, residual_for_asr=residual_for_asr,
                                 echo_path_fit=echo_path_fit, high_band=high_band)
        assert stage.near_end is not None
        for detector in (stage.near_end, stage.near_end_high):
            if detector is not None:
                detector.aec_floor_margin_db = aec_floor_margin_db
        return stage
    if mode == "gate":
        return EchoGate(output)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class VadRule:
    """The VAD stage's start rule on 20 ms frames: webrtcvad and the level floor, a start at
    ``threshold`` of the last ``min_speech_ms`` voiced, then the voiced audio counted; the turn
    ends after 500 ms unvoiced (the live end of turn is the semantic detector's)."""

    def __init__(self, settings: VADSettings | None = None) -> None:
        self.settings = settings or VADSettings()
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._recent: deque[bool] = deque(maxlen=max(1, self.settings.min_speech_ms // self.settings.frame_ms))
        self.in_speech = False
        self.voiced_ms = 0
        self._unvoiced = 0
        self._position = 0
        self._first_voiced: deque[int] = deque(maxlen=self._recent.maxlen)
        #: Sample where the current (or last) turn's first voiced frame began.
        self.started_at: int | None = None

    def voiced(self, frame: np.ndarray) -> bool:
        level_dbfs = 10 * np.log10(np.mean(np.square(frame.astype(np.float64))) / 32768.0**2 + 1e-12)
        return self._vad.is_speech(frame.tobytes(), RATE) and level_dbfs >= self.settings.min_level_dbfs

    def step(self, frame: np.ndarray) -> None:
        voiced = self.voiced(frame)
        self._recent.append(voiced)
        self._first_voiced.append(self._position)
        self._position += len(frame)
        if not self.in_speech:
            full = len(self._recent) == self._recent.maxlen
            if voiced and full and sum(self._recent) / len(self._recent) >= self.settings.threshold:
                self.in_speech, self.voiced_ms, self._unvoiced = True, self.settings.frame_ms * sum(self._recent), 0
                self.started_at = next(p for v, p in zip(self._recent, self._first_voiced) if v)
            return
        if voiced:
            self.voiced_ms += self.settings.frame_ms
            self._unvoiced = 0
        else:
            self._unvoiced += 1
            if self._unvoiced * self.settings.frame_ms >= 500:
                self.in_speech = False
                self._recent.clear()


@dataclass(frozen=True)
class User:
    name: str
    samples: np.ndarray  # float64, from 200 ms before the onset
    onset: int
    end: int


def load_user(path: Path) -> User:
    samples, rate = read_wav(path)
    samples = resample(samples, rate, RATE)
    start = max(0, speech_onset_sample(samples) - 200 * RATE // 1000)
    samples = samples[start:].astype(np.float64)
    return User(path.name, samples, speech_onset_sample(samples), last_voiced_sample(samples, RATE))


@dataclass(frozen=True)
class Outcome:
    user: str
    long: bool  # the user started 2.5-8 s into the reply
    playing: bool  # the reply was playing at the user's onset (else it had ended: nothing to interrupt)
    barge_in_ms: float | None  # None: not stopped by the user while it played
    self_interruptions: int
    heard: str | None = None  # what the ASR made of the user's words (with ``transcribe``)
    index: int = 0  # the attempt's place in its session (0: the session's first reply)
    before_onset: bool = False  # stopped by the user's own sound before the words' onset (no latency)


def simulate_session(make_stage: Callable[[], Any], replies: Sequence[np.ndarray], users: Sequence[User],
                     room: EchoRoomSettings, *, seed: int = 0, long_every: int = 3, noise_dbfs: float | None = None,
                     interruptions: InterruptionSettings | None = None,
                     transcribe: Callable[[np.ndarray], str] | None = None,
                     prefix_padding_ms: int = VADSettings().prefix_padding_ms, calibrate: bool = True) -> list[Outcome]:
    """One session: reply, a user interrupting it, 1.2 s after their last sample the next reply.

    With ``calibrate`` a stage that calibrates (``EchoCancellation.calibrate``: the double-talk
    path) first plays its start sound, as it does live, and the first reply starts 0.5 s after it.
    With ``transcribe``, each user's words are transcribed from what the echo stage gives the
    ASR, from ``prefix_padding_ms`` before the VAD's start (as the ASR's window) to 300 ms after
    their end."""
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng(seed + 1)
    interruptions = interruptions or InterruptionSettings()
    response = room.response() * 10 ** (room.gain_db / 20)
    delay = room.delay_ms * RATE // 1000
    stage, vad = make_stage(), VadRule()
    sound = (stage.start_calibration(RATE).astype(np.float64) if calibrate and getattr(stage, "calibrate", False)
             else np.zeros(0))
    plan, reply_start = [], len(sound) + RATE // 2
    for index, user in enumerate(users):
        reply = replies[int(rng.integers(len(replies)))]
        long = bool(long_every) and index % long_every == long_every - 1
        user_start = reply_start + int((rng.uniform(2.5, 8.0) if long else 0.4) * RATE)
        plan.append((reply_start, reply, user_start, user, long))
        reply_start = user_start + len(user.samples) + int(1.2 * RATE)
    length = reply_start
    mic_user = np.zeros(length)
    for _, _, user_start, user, _ in plan:
        mic_user[user_start : user_start + len(user.samples)] += user.samples
    ends = [min(start + len(reply), nxt[0]) for (start, reply, *_), nxt in zip(plan, [*plan[1:], (length,)])]
    clean = VadRule()  # the user's own audio: would it have started the VAD?
    clean_voiced = [clean.voiced(np.clip(np.round(mic_user[i : i + STEP]), -32768, 32767).astype(np.int16))
                    for i in range(0, length - STEP, STEP)]
    echo = np.zeros(length + len(response) + delay + STEP)
    for_asr = np.zeros(length, dtype=np.int16)
    vad_starts: list[int] = []
    stopped: dict[int, int] = {}  # plan index -> sample where its reply stopped
    current = 0
    for position in range(0, length - STEP, STEP):
        while current + 1 < len(plan) and position >= plan[current + 1][0]:
            current += 1
        start, reply, *_ = plan[current]
        playing = start <= position < ends[current] and current not in stopped
        far = np.zeros(STEP)
        piece = (reply[position - start : position - start + STEP] if playing
                 else sound[position : position + STEP])  # the start sound (empty after it)
        if len(piece):
            far[: len(piece)] = piece
            echo[position + delay : position + delay + len(piece) + len(response) - 1] += np.convolve(piece, response)
        mic = mic_user[position : position + STEP] + echo[position : position + STEP]
        if noise_dbfs is not None:
            mic = mic + noise_rng.normal(0.0, 32768.0 * 10 ** (noise_dbfs / 20), STEP)
        capture = np.clip(np.round(mic), -32768, 32767).astype(np.int16)
        out = stage.process(position, capture, far.astype(np.int16))
        heard = getattr(stage, "for_asr", None)
        for_asr[position : position + STEP] = out if heard is None else heard
        was_speaking = vad.in_speech
        vad.step(out)
        if vad.in_speech and not was_speaking and vad.started_at is not None:
            vad_starts.append(vad.started_at)
        # the conversation's threshold: longer while the stage says the echo may reach the VAD
        threshold_ms = interruptions.threshold_ms(AUDIBLE_REPLY, echo_unprotected=stage.echo_unprotected())
        if playing and vad.in_speech and vad.voiced_ms >= threshold_ms:
            stopped[current] = position + STEP
    outcomes = []
    for index, (start, reply, user_start, user, long) in enumerate(plan):
        at, onset = stopped.get(index), user_start + user.onset
        by_echo = at is not None and sum(clean_voiced[max(0, at // STEP - 15) : at // STEP]) < 2
        by_user = at is not None and not by_echo and onset - RATE // 100 <= at <= user_start + user.end + RATE * 3 // 10
        before_onset = at is not None and not by_echo and user_start <= at < onset - RATE // 100
        playing_at_onset = start <= onset < ends[index]
        words = None
        if transcribe is not None:  # from the VAD's first start for this user, less the prefix padding
            starts = [v for v in vad_starts if user_start - RATE * 3 // 10 <= v <= user_start + user.end]
            begin = (starts[0] if starts else onset) - prefix_padding_ms * RATE // 1000
            words = transcribe(for_asr[max(0, begin) : user_start + user.end + RATE * 3 // 10])
        outcomes.append(Outcome(user.name, long, playing_at_onset,
                                1000.0 * (at - onset) / RATE if by_user and playing_at_onset else None, int(by_echo),
                                words, index, before_onset))
    return outcomes


def summary(outcomes: Sequence[Outcome], references: dict[str, str] | None = None) -> dict[str, Any]:
    """Percentiles and counts; with ``references`` (file name → words) the corpus WER of what the
    ASR heard from the users whose reply was playing."""
    latencies = [o.barge_in_ms for o in outcomes if o.barge_in_ms is not None]
    percentile = (lambda q: round(float(np.percentile(latencies, q)), 1)) if latencies else (lambda q: None)
    first = [o.barge_in_ms for o in outcomes if o.barge_in_ms is not None and o.index < 2]
    later = [o.barge_in_ms for o in outcomes if o.barge_in_ms is not None and o.index >= 2]
    missed = sum(1 for o in outcomes
                 if o.playing and o.barge_in_ms is None and not o.self_interruptions and not o.before_onset)
    return {"attempts": len(outcomes), "measured": len(latencies), "missed": missed,
            "before_onset": sum(1 for o in outcomes if o.before_onset),
            "not_playing": sum(1 for o in outcomes if not o.playing),
            "barge_in_ms": {"p50": percentile(50), "p95": percentile(95), "max": percentile(100)},
            # a session's first two replies (the echo path and the detector still being learnt) and the rest
            "barge_in_p50_ms_first_two": round(float(np.median(first)), 1) if first else None,
            "barge_in_p50_ms_later": round(float(np.median(later)), 1) if later else None,
            "self_interruptions": sum(o.self_interruptions for o in outcomes),
            "wer": None if references is None else word_error_rate(
                [references[o.user] for o in outcomes if o.playing], [o.heard or "" for o in outcomes if o.playing])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="aec,double-talk", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--sessions", type=int, default=8, help="sessions per mode (seeds 0..N-1; rooms cycle)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--attempts", type=int, default=12, help="interruptions per session")
    parser.add_argument("--long-every", type=int, default=3,
                        help="every Nth user starts 2.5-8 s into the reply, the others 400 ms in (0: all 400 ms in, as the live benchmark)")
    parser.add_argument("--noise-dbfs", type=float, default=None, help="white noise at the microphone")
    parser.add_argument("--echo-delay-ms", type=int, default=None, help="one room for every session (else the three of ROOMS)")
    parser.add_argument("--echo-gain-db", type=float, default=0.0)
    parser.add_argument("--echo-rt60-ms", type=float, default=300.0)
    parser.add_argument("--aec-floor-margin-db", default=str(AEC_FLOOR_MARGIN_DB),
                        help="double talk: the AEC3-floor veto's margin (default %(default)s; 'off': no veto)")
    parser.add_argument("--wer", action="store_true", help="transcribe each user from what the ASR gets (Whisper) and report the WER")
    parser.add_argument("--prefix-padding-ms", type=int, default=VADSettings().prefix_padding_ms,
                        help="--wer: the ASR's window starts this long before the VAD's start (default %(default)s)")
    parser.add_argument("--echo-path-fit", action="store_true",
                        help="double talk: least-squares fits of the echo path beside the NLMS filter (EchoCancellation(echo_path_fit=True), opt-in)")
    parser.add_argument("--echo-calibration", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old commands
    parser.add_argument("--no-echo-calibration", action="store_true",
                        help="double talk: no start sound (EchoCancellation(calibrate=False)); the filter learns from the replies only")
    parser.add_argument("--min-interruption-while-speaking-ms", type=int,
                        default=InterruptionSettings().min_interruption_while_speaking_ms,
                        help="voiced audio a barge-in needs over the reply while the echo may reach the VAD: the gate (the "
                        "fallback) always, AEC3 before it has heard the room without the start sound (default %(default)s)")
    parser.add_argument("--gated-asr", action="store_true", help="double talk: the ASR hears what the VAD hears (no residual)")
    parser.add_argument("--no-high-band", action="store_true",
                        help="double talk: the speech band's detector alone, no 2-4 kHz one (EchoCancellation(high_band=False))")
    parser.add_argument("--oracle-filter", action="store_true",
                        help="double talk: its linear filter starts as the room's true echo path (what convergence is worth)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write per-attempt outcomes and summaries as JSON")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode {', '.join(unknown)}: use {', '.join(MODES)}")
    if args.long_every < 0:
        parser.error(f"--long-every must be 0 or more, got {args.long_every}")
    if args.min_interruption_while_speaking_ms < 20:
        parser.error(f"--min-interruption-while-speaking-ms must be at least 20 (one VAD frame), got {args.min_interruption_while_speaking_ms}")
    if args.oracle_filter and modes != ["double-talk"]:
        parser.error("--oracle-filter goes with --modes double-talk")
    try:
        margin_db = None if args.aec_floor_margin_db == "off" else float(args.aec_floor_margin_db)
    except ValueError:
        parser.error(f"--aec-floor-margin-db takes dB or 'off', got {args.aec_floor_margin_db!r}")
    interruptions = InterruptionSettings(min_interruption_while_speaking_ms=args.min_interruption_while_speaking_ms)
    from realtime_pipeline import PiperTTS
    from realtime_pipeline.conversation import Conversation
    from realtime_pipeline.stage import StageContext
    from realtime_pipeline.tracing import Tracer
    import anyio

    tts = PiperTTS()
    anyio.run(tts.setup, StageContext(Conversation(), Tracer()))
    transcribe, references = None, None
    if args.wer:
        from realtime_pipeline import WhisperASR

        asr = WhisperASR()
        anyio.run(asr.setup, StageContext(Conversation(), Tracer()))
        transcribe, references = asr.transcribe, read_tsv(SPEECH_DIR / "transcripts_normalized.tsv")
    replies = synthesize_replies(tts)
    files = sorted(SPEECH_DIR.glob("*.wav"))
    users = {path.name: load_user(path) for path in files}
    result: dict[str, Any] = {}
    for mode in modes:
        outcomes, started = [], time.perf_counter()
        for seed in range(args.first_seed, args.first_seed + args.sessions):
            room = (ROOMS[seed % len(ROOMS)] if args.echo_delay_ms is None else
                    EchoRoomSettings(delay_ms=args.echo_delay_ms, gain_db=args.echo_gain_db, rt60_ms=args.echo_rt60_ms, seed=seed))
            order = np.random.default_rng(seed).permutation(len(files))[: args.attempts]
            def make_stage(mode: str = mode, room: EchoRoomSettings = room) -> Any:
                stage = stage_for(mode, aec_floor_margin_db=margin_db, residual_for_asr=not args.gated_asr, high_band=not args.no_high_band,
                                  echo_path_fit=args.echo_path_fit)
                if args.oracle_filter:
                    set_true_echo_path(stage, room)
                return stage

            outcomes += simulate_session(
                make_stage, replies,
                [users[files[i].name] for i in order], room, seed=seed, noise_dbfs=args.noise_dbfs,
                transcribe=transcribe, prefix_padding_ms=args.prefix_padding_ms, long_every=args.long_every,
                calibrate=not args.no_echo_calibration, interruptions=interruptions)
        result[mode] = {"summary": summary(outcomes, references), "outcomes": [o.__dict__ for o in outcomes]}
        print(f"{mode}: {json.dumps(result[mode]['summary'])} ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
