"""The web page in Debian's headless Chromium (Playwright), talking to a real server over WebRTC on loopback.

Chromium's fake microphone says a real WAV (tests/data/speech) once; the page
must show the user's transcript and the assistant's text, receive reply audio
(``getStats()`` inbound-rtp ``totalAudioEnergy``) and report the turn's
latency. ``RP_DOCS_SCREENSHOT=1`` saves the screenshot as docs/webrtc-page.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from server_support import RunningServer

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
