"""The web page in Debian's headless Chromium (Playwright), talking to a real server over WebRTC on loopback.

Chromium's fake microphone says a real WAV (tests/data/speech) once; the page
must show the user's transcript and the assistant's text, receive reply audio
(``getStats()`` inbound-rtp ``totalAudioEnergy``) and report the turn's
latency; a second WAV talks over the reply (barge-in). ``RP_DOCS_SCREENSHOT=1``
saves the screenshot as docs/webrtc-page.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from server_support import RunningServer

from benchmarks.webrtc_barge_in import INSTRUCTIONS as LONG_STORIES
from benchmarks.webrtc_latency import CHROMIUM, fake_microphone_wav, talk_in_chromium
from realtime_pipeline.server import Engines, ServerOptions, SessionOptions

pytest.importorskip("aiortc", reason="the webrtc extra (aiortc) is not installed")
pytest.importorskip("playwright.async_api", reason="playwright is not installed (dev extra)")

DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "webrtc-page.png"
pytestmark = [
    pytest.mark.models, pytest.mark.anyio,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)"),
]


@pytest.fixture(scope="module")
def server(engines: Engines):
    options = ServerOptions(api_key="local", session=SessionOptions(output_lead_ms=300))
    with RunningServer(engines, options) as running:
        yield running


async def test_page_talks_in_chromium(server, tmp_path):
    mic = fake_microphone_wav(tmp_path / "mic.wav", ["ps_librivox_0880.wav"])
    shot = DOCS_SCREENSHOT if os.environ.get("RP_DOCS_SCREENSHOT") else tmp_path / "page.png"
    result = await talk_in_chromium(server.port, mic.path, tmp_path / "profile", 1, shot)
    assert not result["page_errors"], result["page_errors"]
    assert not result["error_shown"]
    assert any({"young", "man"} <= set(t.lower().replace(".", "").split()) for t in result["user"]), result["user"]
    assert result["assistant"] and result["assistant"][0].strip()
    assert result["stats"]["totalAudioEnergy"] > 0.01, result["stats"]  # the reply was heard, not silence
    first = result["measurements"][0]
    assert first["server"]["voice_to_voice"] is not None and first["server"]["voice_to_voice"] > 0 and first["browser_ms"] > 0, first
    assert first["reply_onset_at_ms"] - first["mic_last_voiced_at_ms"] == pytest.approx(first["browser_ms"])
    assert result["stats"]["jitterBufferMs"] is not None and result["stats"]["jitterBufferMs"] > 0
    assert shot.exists() and shot.stat().st_size > 10_000
    registry = server.server.config.app.state.webrtc_calls
    with anyio.fail_after(30):
        while registry.calls:  # the closed page ended the call on the server
            await anyio.sleep(0.1)
    assert server.server.config.app.state.admission.active == 0  # and freed its session slot
    if shot != DOCS_SCREENSHOT:
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.mark.parametrize("headset, gap_s", [(False, 11.0), (True, 3.0)], ids=["echo-cancelled", "headset"])
async def test_speaking_over_the_reply_in_chromium_interrupts_it_and_is_answered(engines: Engines, tmp_path, headset: bool,
                                                                                 gap_s: float):
    """The fake microphone asks, then talks again ``gap_s`` after its last word, over the reply,
    which starts 1.3-1.6 s after it (the page's voice-to-voice) and, asked for a long story, played
    14-29 s in the benchmark. The reply is cut (the page marks it interrupted) and the interruption
    answered.

    With the browser's echo cancellation (the page's default) the words come ~10 s into the
    reply: with no echo in its microphone (as with a headset) Chromium's echo canceller holds the
    user 30-70 dB down in much of the first reply's first ~7 s, until it has decided there is no
    echo to cancel; from ~7 s on it let every clip through (``python -m benchmarks.webrtc_barge_in``,
    docs/webrtc.md "Speaking over the first reply"; a test speaking 3 s after the question failed
    on a fresh clone's CI run). With the page's headset box ticked the microphone has no echo
    cancellation, and words ~2 s into the reply cut it."""
    options = ServerOptions(api_key="local", session=SessionOptions(output_lead_ms=300, instructions=LONG_STORIES))
    mic = fake_microphone_wav(tmp_path / "mic.wav", ["ps_librivox_0880.wav", "mfa_thoughts.wav"], gap_s=[gap_s, 9.0])
    with RunningServer(engines, options) as running:
        result = await talk_in_chromium(running.port, mic.path, tmp_path / "profile", 2, headset=headset)
        assert result["echo_cancellation"] is (not headset)  # what Chromium applied to the track
        registry = running.server.config.app.state.webrtc_calls
        with anyio.fail_after(30):
            while registry.calls:
                await anyio.sleep(0.1)
    assert not result["page_errors"], result["page_errors"]
    assert not result["error_shown"]
    responses = result["responses"]
    assert len(responses) >= 2, (result["assistant"], responses)
    (first, first_cut), (last, last_cut) = responses[0], responses[-1]
    heard_playing = {m["response_id"] for m in result["measurements"] if m["browser_ms"] is not None}
    assert first_cut and first in heard_playing, (responses, result["measurements"])  # cut while the page heard it
    assert not last_cut and last in heard_playing, (responses, result["measurements"])  # the interruption's own reply
    assert result["assistant"][-1].strip()
    heard = [set(t.lower().replace(".", "").replace(",", "").split()) for t in result["user"]]
    assert any({"young", "man"} <= words for words in heard), result["user"]
    # the interruption's words ("I have a thousand thoughts about that thing"); its first ones may be lost
    # to the barge-in ("I never thought about that thing."), its last are not
    assert any(len({"about", "that", "thing"} & words) >= 2 for words in heard[1:]), result["user"]
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
