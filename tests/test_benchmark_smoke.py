"""``python -m benchmarks.latency --limit 2`` end to end on the real models, and the benchmark's helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest

from benchmarks import latency, tracer_overhead
from realtime_pipeline.echo_cancel import aec_available
from benchmarks.measure import word_error_rate
from benchmarks.turns import load_turns, last_voiced_sample, normalize_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "audio"
STAGES = ("endpoint", "asr", "llm", "tts", "playback")


def _get(report: dict, dotted: str) -> object:
    value: object = report
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"missing key {dotted}"
        value = value[key]
    return value


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "turns"
    directory.mkdir()
    for name in ("question.wav", "follow_up.wav"):
        shutil.copy(EXAMPLES / name, directory / name)
    (directory / "transcripts.tsv").write_text(
        "question.wav\tWhat is the capital of France?\nfollow_up.wav\tAnd what is it famous for?\n", encoding="utf-8")
    return directory


@pytest.mark.models
def test_latency_benchmark_writes_every_required_key(audio_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    chart = tmp_path / "chart.png"
    trace = tmp_path / "trace.json"
    command = [sys.executable, "-m", "benchmarks.latency", "--audio-dir", str(audio_dir), "--limit", "2",
               "--baseline", "--json", str(out), "--chart", str(chart), "--trace", str(trace), "--quiet"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "voice_to_voice" in result.stdout and "sequential baseline" in result.stdout
    report = json.loads(out.read_text(encoding="utf-8"))

    for key in ("summary.voice_to_voice_ms", "summary.after_endpoint_ms", "summary.baseline.time_to_first_audio_ms"):
        p50, p95 = _get(report, key + ".p50"), _get(report, key + ".p95")
        assert isinstance(p50, float) and p50 > 0 and p95 >= p50, key
    stages = _get(report, "summary.stages")
    assert set(STAGES) <= set(stages)
    for name in STAGES:
        assert stages[name]["p50"] >= 0 and stages[name]["p95"] >= stages[name]["p50"], name
    assert stages["endpoint"]["p50"] > 0
    assert set(STAGES) <= set(_get(report, "summary.spans_ms"))  # raw spans: the LLM may start ahead (< 0)
    assert _get(report, "summary.baseline.ratio") > 0
    assert 0 <= _get(report, "summary.wer") <= 1.0  # clear synthesized speech: Whisper gets most of it
    assert _get(report, "summary.cold_start_s") > 0
    assert _get(report, "summary.peak_rss_mb") > 50
    assert _get(report, "summary.cpu_s_per_min") > 0
    assert all(_get(report, f"summary.rtf.{m}") > 0 for m in ("asr", "llm", "tts"))

    thirds = _get(report, "summary.by_conversation_third.thirds")
    assert [t["turns"] for t in thirds] == [[1, 1], [2, 1], [2, 2]]  # 2 turns: the middle third is empty
    assert thirds[0]["voice_to_voice_p50_ms"] > 0 and thirds[2]["prompt_tokens_evaluated_p50"] > 0
    assert list(_get(report, "summary.peak_rss_mb_by_turn")) == ["2"]  # turn 10 never came
    worst = _get(report, "summary.worst_turns")
    assert set(STAGES) <= set(worst) and worst["after_endpoint"]["turn"] in (1, 2) and worst["llm"]["cause"]

    turns = _get(report, "turns")
    assert [t["file"] for t in turns] == ["question.wav", "follow_up.wav"]
    # the second turn's prompt starts with all of the first turn's, read from the KV cache
    first, second = turns[0]["counts"], turns[1]["counts"]
    assert second["prompt_tokens_cached"] >= first["prompt_tokens"] - 1
    assert second["prompt_tokens_cached"] + second["prompt_tokens_evaluated"] == second["prompt_tokens"]
    for turn in turns:
        assert turn["answered"] and turn["transcript"] and turn["reply"] and turn["reference"]
        stamps = turn["stamps_ms"]
        assert stamps["user_speech_end"] == 0.0
        assert 0 < stamps["turn_committed"] <= stamps["first_sample_played"] <= stamps["response_done"]
        assert turn["spans_ms"]["voice_to_voice"] == pytest.approx(stamps["first_sample_played"], abs=0.2)
        assert sum(turn["critical_path_ms"].values()) == pytest.approx(turn["spans_ms"]["voice_to_voice"], abs=1.0)
    assert len(report["baseline_turns"]) == 2

    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = json.loads(trace.read_text(encoding="utf-8"))["traceEvents"]
    assert sum(1 for e in events if e["ph"] == "X" and e["cat"] == "llm") == 2


def test_barge_in_flag_reports_a_missing_module_cleanly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "benchmarks.barge_in", None)  # as if benchmarks/barge_in.py were absent
    assert latency.main(["--barge-in", "--limit", "1"]) == 2
    assert "barge_in.py" in capsys.readouterr().err


def test_bad_audio_dir_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert latency.main(["--audio-dir", str(tmp_path), "--quiet"]) == 2
    assert "transcripts.tsv" in capsys.readouterr().err


def test_last_voiced_sample_finds_the_end_of_a_tone_in_noise() -> None:
    rate = 16_000
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 30, rate * 2)  # -60 dBFS noise floor
    t = np.arange(int(rate * 0.8)) / rate
    audio[rate // 5 : rate // 5 + len(t)] += 8000 * np.sin(2 * np.pi * 220 * t)  # speech from 0.2 s to 1.0 s
    audio[int(rate * 1.5)] = 20000  # a click later must not count
    end = last_voiced_sample(audio.astype(np.int16), rate)
    assert abs(end - rate) <= rate // 100  # within one 10 ms frame of 1.0 s


def test_speech_onset_is_where_the_voice_rises_out_of_the_recordings_noise() -> None:
    from benchmarks.barge_in import SPEECH_DIR, speech_onset_sample
    from realtime_pipeline.audio import read_wav

    rate = 16_000
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 150, rate * 2)  # a room's noise at -47 dBFS
    audio[0] = 20000  # a click at the start must not count
    t = np.arange(rate) / rate
    audio[rate * 3 // 10 : rate * 13 // 10] += 6000 * np.sin(2 * np.pi * 220 * t)  # a voice from 0.3 s
    assert abs(speech_onset_sample(audio.astype(np.int16), rate) - rate * 3 // 10) <= rate // 100
    quiet = rng.normal(0, 3, rate * 2)  # a studio's floor (-80 dBFS): the first soft sound counts
    quiet[rate * 3 // 10 : rate * 13 // 10] += 6000 * np.sin(2 * np.pi * 220 * t)
    quiet[rate // 5 : rate * 3 // 10] += 300 * np.sin(2 * np.pi * 220 * t[: rate // 10])  # a soft start at -44 dBFS
    assert abs(speech_onset_sample(quiet.astype(np.int16), rate) - rate // 5) <= rate // 100
    # a real recording with 330 ms of room noise before its first word: the 300 ms after the
    # onset are far louder than the 300 ms before it
    samples, file_rate = read_wav(SPEECH_DIR / "ps_librivox_0920.wav")
    assert file_rate == rate
    onset = speech_onset_sample(samples, rate)
    before, after = samples[max(0, onset - rate * 3 // 10) : onset], samples[onset : onset + rate * 3 // 10]
    assert len(before) and 10 * np.log10(np.mean(np.square(after.astype(np.float64))) / np.mean(np.square(before.astype(np.float64)))) > 15


def test_load_turns_subset_is_seeded_and_in_file_order() -> None:
    first = load_turns(limit=3, seed=1)
    again = load_turns(limit=3, seed=1)
    assert [t.name for t in first] == [t.name for t in again]
    listed = [line.split("\t")[0] for line in (ROOT / "tests/data/speech/transcripts.tsv").read_text().splitlines() if line]
    assert [t.name for t in first] == sorted((t.name for t in first), key=listed.index)
    assert all(0 < t.speech_end_sample <= len(t.samples) and t.reference for t in first)
    assert len(load_turns()) == len(listed)


def test_word_error_rate_normalizes_both_sides() -> None:
    assert normalize_text("Ten of Clubs!") == normalize_text("10 of clubs") == "ten of clubs"
    assert word_error_rate(["ten of clubs"], ["10 of clubs."]) == 0.0
    assert word_error_rate(["a b c d"], ["a b"]) == pytest.approx(0.5)


def test_tracer_overhead_runs_both_ways() -> None:
    result = anyio.run(tracer_overhead.measure, 500, 1)
    assert result.traced_fps > 0 and result.untraced_fps > 0 and result.ratio > 0


@pytest.mark.models
@pytest.mark.skipif(not aec_available(), reason="the [aec] extra is not installed")
def test_latency_benchmark_in_the_echo_room_does_not_interrupt_itself(audio_dir: Path, tmp_path: Path) -> None:
    """A scripted two-turn conversation through the whole pipeline, the speaker's echo at 0 dB in
    the microphone: every turn is answered and no reply is paused by its own echo."""
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "benchmarks.latency", "--audio-dir", str(audio_dir), "--limit", "2",
               "--echo-delay-ms", "100", "--echo-gain-db", "0", "--json", str(out), "--quiet"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    echo = _get(json.loads(out.read_text(encoding="utf-8")), "summary.echo.double-talk")  # the default mode
    assert echo["stage"]["mode"] == "aec" and echo["stage"]["double_talk_frames"] is not None
    assert echo["stage"]["echo_path_fits"] is None  # the least-squares fits are opt-in (EchoCancellation(echo_path_fit=True))
    # the start sound played through the room, and a fit on it taught the double-talk filter the room
    assert echo["stage"]["calibration"] == {"played": True, "fit_installed": True}
    # AEC3 heard the room in the start sound: barge-in needs the usual voiced audio from the first reply
    assert echo["interruptions"]["echo_unprotected"] is False
    assert echo["turns_answered"] == 2
    assert echo["self_interruptions"] == 0  # the target; VAD turns on echo alone are reported, not asserted
    assert echo["erle_db"] is not None and echo["erle_db"] >= 25.0


@pytest.mark.parametrize("argv, message", [(["--echo-path-fit"], "need --echo-delay-ms"),
                                           (["--echo-delay-ms", "100", "--no-aec", "--echo-path-fit"], "not with echo mode 'gate'")])
def test_barge_in_rejects_echo_path_fits_outside_the_double_talk_path(argv: list[str], message: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import barge_in

    assert barge_in.main(argv) == 2
    assert message in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("module, argv, message", [("echo_sim", ["--modes", "aec,nope"], "unknown mode nope"),
                                                   ("echo_sim", ["--aec-floor-margin-db", "loud"], "takes dB or 'off'"),
                                                   ("echo_sim", ["--oracle-filter"], "goes with --modes double-talk"),
                                                   ("echo_sim", ["--long-every", "-1"], "--long-every must be 0 or more"),
                                                   ("first_reply", ["--rooms", "7"], "--rooms takes indexes"),
                                                   ("first_reply", ["--replies", "0"], "--replies must be at least 1"),
                                                   ("first_reply", ["--user", "nobody.wav"], "no such recording"),
                                                   ("webrtc_barge_in", ["--delays-s", "1,soon"], "--delays-s takes seconds"),
                                                   ("webrtc_latency", ["--calls", "0"], "--calls must be at least 1")])
def test_echo_benchmarks_reject_bad_options_before_loading_anything(module: str, argv: list[str], message: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"benchmarks.{module}").main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_webrtc_benchmarks_pacing_view_weighs_half_seconds_as_neteq_does() -> None:
    """NetEq keeps the worst delay per 500 ms against the least delayed packet of the last 2 s."""
    from benchmarks.webrtc_latency import neteq_pacing_view

    on_time = np.arange(1000) * 10.0  # 10 s of 10 ms packets, each on schedule
    assert neteq_pacing_view(on_time, 10) == {"p50_ms": 0.0, "p95_ms": 0.0, "share_over_20_ms": 0.0}
    shifted = on_time.copy()
    shifted[500:] += 25.0  # a 25 ms stall at 5 s, never caught up: late against the 2 s before it only
    view = neteq_pacing_view(shifted, 10)
    assert view["share_over_20_ms"] == pytest.approx(0.2) and view["p95_ms"] == pytest.approx(25.0)
    spiky = on_time.copy()
    spiky[::60] += 22.0  # one packet 22 ms late every 0.6 s: most half seconds hold one
    assert neteq_pacing_view(spiky, 10)["share_over_20_ms"] > 0.5


def test_the_webrtc_benchmark_pools_its_calls_over_their_turns() -> None:
    """Several calls give one figure per hop over all their turns (a call's own median moves a lot), and each call's median."""
    from benchmarks.webrtc_latency import HOPS, Probe, pooled

    def call(shares: list[float], jitter_buffer_ms: float) -> dict:
        rows = [{hop: float("nan") for hop in HOPS} | {"webrtc_added": share, "track_wait": 5.0} for share in shares]
        return {"rows": rows, "stats": {"jitterBufferMs": jitter_buffer_ms, "jitterBufferTargetMs": 20.0}}

    pool = pooled([call([40.0, 50.0, 90.0], 30.0), call([60.0, 70.0, float("nan")], 50.0)])
    assert pool["hops"]["webrtc_added"] == {"p25": 50.0, "p50": 60.0, "p75": 70.0, "turns": 5}
    assert pool["hops"]["track_wait"]["turns"] == 6 and "input_path" not in pool["hops"]  # no turn measured it
    assert pool["webrtc_added_per_call"] == [50.0, 65.0] and pool["jitter_buffer_ms_per_call"] == [30.0, 50.0]
    probe = Probe(sessions=["a call"], frames=[(0.0, None, 0.0)], inputs={"s": []})
    probe.reset()
    assert not probe.sessions and not probe.frames and not probe.inputs


def test_the_barge_in_benchmark_can_shuffle_its_speakers() -> None:
    """--shuffle: the seed's same recordings, in an order drawn with the seed (by name the MFA ones come first)."""
    from benchmarks.barge_in import default_files

    by_name = default_files(12, 4)
    assert by_name == sorted(by_name) and by_name[0].name.startswith("mfa_")
    shuffled = default_files(12, 4, shuffle=True)
    assert sorted(shuffled) == by_name and shuffled != by_name
    assert default_files(12, 4, shuffle=True) == shuffled  # the seed decides


def test_the_fake_microphone_places_each_clip_after_its_own_gap(tmp_path) -> None:
    """webrtc_barge_in's microphone: a short gap after the question puts the next clip over the reply."""
    from benchmarks.webrtc_barge_in import level_dbfs
    from benchmarks.webrtc_latency import MIC_RATE_HZ, fake_microphone_wav
    from realtime_pipeline.audio import read_wav

    clips = ["ps_cards_003.wav", "mfa_um.wav"]
    mic = fake_microphone_wav(tmp_path / "mic.wav", clips, lead_s=0.5, gap_s=[2.0, 1.0])
    first, rate = read_wav(Path("tests/data/speech") / clips[0])
    assert mic.clip_start_s[0] == pytest.approx(0.5)
    assert mic.clip_start_s[1] == pytest.approx(0.5 + len(first) / rate + 2.0, abs=1e-3)
    assert mic.clip_start_s[0] < mic.speech_end_s[0] < mic.clip_start_s[1] < mic.speech_end_s[1]
    second, second_rate = read_wav(Path("tests/data/speech") / clips[1])
    assert len(mic.samples) / MIC_RATE_HZ == pytest.approx(mic.clip_start_s[1] + len(second) / second_rate + 1.0, abs=0.01)
    with pytest.raises(ValueError, match="one gap per clip"):
        fake_microphone_wav(tmp_path / "bad.wav", clips, gap_s=[2.0])
    tone = (3276.8 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.int16)  # 0.1 full scale
    assert level_dbfs(tone) == pytest.approx(-23.0, abs=0.1)  # its RMS: -20 dB - 3 dB
    assert level_dbfs(np.zeros(100, dtype=np.int16)) == -120.0  # shorter than a window


def test_the_oracle_filter_is_the_rooms_own_echo_path() -> None:
    """echo_sim --oracle-filter: the linear filter, set to the room's path, cancels its echo from the first block."""
    from types import SimpleNamespace

    from benchmarks.echo_sim import set_true_echo_path
    from realtime_pipeline.double_talk import LinearEchoFilter
    from realtime_pipeline.io.echo_room import EchoRoomSettings

    room = EchoRoomSettings(delay_ms=60, gain_db=-6.0, rt60_ms=150.0, seed=2)  # its 400 ms response fits the tail
    stage = SimpleNamespace(linear=LinearEchoFilter(tail_ms=500))
    set_true_echo_path(stage, room)
    far = np.random.default_rng(0).normal(0.0, 3000.0, 16_000)
    echo = 10 ** (room.gain_db / 20) * np.convolve(np.concatenate([np.zeros(960), far]), room.response())[: len(far)]
    residual = np.concatenate([stage.linear.process(echo[i : i + 160], far[i : i + 160], adapt=False)
                               for i in range(0, len(far), 160)])
    assert 10 * np.log10(np.mean(echo**2) / np.mean(residual**2)) > 60.0
    with pytest.raises(ValueError, match="double-talk"):
        set_true_echo_path(SimpleNamespace(linear=None), room)
    with pytest.raises(ValueError, match="8000 taps, got 10"):
        stage.linear.set_taps(np.zeros(10))


def test_echo_convergence_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import echo_convergence

    with pytest.raises(SystemExit) as exit_info:
        echo_convergence.main(["--times-s", "0.5,soon"])
    assert exit_info.value.code == 2 and "comma-separated numbers" in capsys.readouterr().err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_webrtc_benchmark_keeps_the_browser_on_one_core(tmp_path: Path) -> None:
    """--pin-browser: its own chrom* child processes on the last CPU, nobody else's; this process left alone."""
    import time

    from benchmarks.webrtc_latency import CorePinning

    stand_in = tmp_path / "chromium-stand-in"  # a process's name is its program's (as Chromium's are)
    stand_in.symlink_to(shutil.which("sleep"))
    before = os.sched_getaffinity(0)
    browser = subprocess.Popen([str(stand_in), "30"])
    # another user's browser: not a child of this process (the shell that started it has exited)
    stranger = int(subprocess.run(f"{stand_in} 30 > /dev/null 2>&1 & echo $!", shell=True,
                                  capture_output=True, text=True, check=True).stdout)
    try:
        with CorePinning() as pinning:
            deadline = time.monotonic() + 10
            while pinning.browser_tasks == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert os.sched_getaffinity(browser.pid) == pinning.browser_cpus == {max(before)}
            assert os.sched_getaffinity(0) == before
            assert os.sched_getaffinity(stranger) == before
    finally:
        browser.kill()
        browser.wait()
        os.kill(stranger, 9)


@pytest.mark.models
@pytest.mark.skipif(not aec_available(), reason="the [aec] extra is not installed")
def test_first_reply_benchmark_counts_both_ways_in_a_room(tmp_path: Path) -> None:
    from benchmarks import first_reply

    out = tmp_path / "first_reply.json"
    assert first_reply.main(["--replies", "1", "--rooms", "1", "--json", str(out)]) == 0
    [row] = json.loads(out.read_text(encoding="utf-8"))
    assert row["room"]["rt60_ms"] == 500 and row["user"] is None
    for variant in ("no_start_sound", "start_sound"):
        assert row[variant]["replies"] == 1
        assert row[variant]["self_interruptions"] == len(row[variant]["at_s"])
        assert all(0 < t <= first_reply.REPLY_S for t in row[variant]["at_s"])
    # the property itself (none with the start sound here) is test_echo_real's, on the same stage


def test_the_echo_simulator_counts_a_stop_before_the_words_onset_as_heard_early_not_missed() -> None:
    """echo_sim: with no echo and nothing in the way, mfa_falsetto's soft "this" stops the reply before
    the onset the benchmark measures from (its first loud 10 ms); that user was heard, early (the
    live benchmark's ``vad_before_onset``), and used to count as missed. ps_librivox_0870's room noise
    before its first word does the same; mfa_longstop is measured."""
    from benchmarks import echo_sim
    from realtime_pipeline.io.echo_room import EchoRoomSettings

    class PassThrough:  # no echo stage: the VAD hears the microphone
        for_asr = None

        def process(self, start: int, capture: np.ndarray, reference: np.ndarray) -> np.ndarray:
            return capture

        def echo_unprotected(self) -> bool:
            return False

    reply = np.random.default_rng(0).normal(0.0, 3000.0, 10 * 16_000)
    speech = Path(__file__).parent / "data" / "speech"
    outcomes = [echo_sim.simulate_session(PassThrough, [reply], [echo_sim.load_user(speech / name)],
                                          EchoRoomSettings(delay_ms=100, gain_db=-60.0), long_every=0, calibrate=False)[0]
                for name in ("mfa_falsetto.wav", "ps_librivox_0870.wav", "mfa_longstop.wav")]
    assert [(o.before_onset, o.barge_in_ms is None) for o in outcomes] == [(True, True), (True, True), (False, False)]
    summary = echo_sim.summary(outcomes)
    assert summary["missed"] == 0 and summary["before_onset"] == 2 and summary["measured"] == 1
