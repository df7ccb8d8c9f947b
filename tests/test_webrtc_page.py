"""The web page in Debian's headless Chromium (Playwright), talking to a real server over WebRTC on loopback.

Chromium's fake microphone says a real WAV (tests/data/speech) once; the page
must show the user's transcript and the assistant's text, receive reply audio
(``getStats()`` inbound-rtp ``totalAudioEnergy``) and report the turn's
latency. ``RP_DOCS_SCREENSHOT=1`` saves the screenshot as docs/webrtc-page.png.
"""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path

import anyio
import numpy as np
import pytest
from conftest import SPEECH_DIR
from server_support import RunningServer

from realtime_pipeline.audio import read_wav, resample
from realtime_pipeline.server import Engines, ServerOptions, SessionOptions

pytest.importorskip("aiortc", reason="the webrtc extra (aiortc) is not installed")
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (dev extra)")

CHROMIUM = "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "webrtc-page.png"
pytestmark = [
    pytest.mark.models, pytest.mark.anyio,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)"),
]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
]


def fake_microphone_wav(path: Path, clips: list[str], *, lead_s: float = 1.0, gap_s: float = 9.0) -> Path:
    """48 kHz mono WAV: silence, then each clip followed by ``gap_s`` of silence (time for the answer)."""
    parts = [np.zeros(int(48_000 * lead_s), dtype=np.int16)]
    for name in clips:
        samples, rate = read_wav(SPEECH_DIR / name)
        parts += [resample(samples, rate, 48_000).astype(np.int16), np.zeros(int(48_000 * gap_s), dtype=np.int16)]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(np.concatenate(parts).tobytes())
    return path


async def talk_in_chromium(port: int, wav: Path, profile: Path, turns: int, screenshot: Path | None) -> dict:
    """Open the page, connect, wait for ``turns`` answered turns; returns what the page measured."""
    async with playwright_api.async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
            ignore_default_args=["--mute-audio"],
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.fill("#key", "local")
            await page.click("#connect")
            await page.wait_for_selector(".state.connected", timeout=30_000)
            try:
                await page.wait_for_function(
                    f"rp.measurements.length >= {turns} && rp.measurements.slice(0, {turns}).every(m => m.browser_ms !== null)",
                    timeout=60_000 * turns)
            except playwright_api.Error:
                state = await page.evaluate("JSON.stringify({m: rp.measurements, log: document.querySelector('#log').innerText,"
                                            " state: document.querySelector('#state').innerText, err: document.querySelector('#error').innerText})")
                raise AssertionError(f"the page did not complete {turns} turn(s): {state}") from None
            await page.wait_for_function("document.querySelectorAll('#log li.assistant').length >= 1", timeout=30_000)
            await anyio.sleep(1.0)
            stats = await page.evaluate("rp.linkStats()")
            result = {
                "user": await page.locator("#log li.user .text").all_inner_texts(),
                "assistant": await page.locator("#log li.assistant .text").all_inner_texts(),
                "measurements": await page.evaluate("rp.measurements"),
                "stats": stats,
                "error_shown": await page.locator("#error").is_visible(),
                "page_errors": errors,
            }
            if screenshot is not None:
                await page.screenshot(path=str(screenshot), full_page=True)
            await page.close()  # closing the page hangs up
        finally:
            await context.close()
    return result


@pytest.fixture(scope="module")
def server(engines: Engines):
    options = ServerOptions(api_key="local", session=SessionOptions(output_lead_ms=300))
    with RunningServer(engines, options) as running:
        yield running


async def test_page_talks_in_chromium(server, tmp_path):
    wav = fake_microphone_wav(tmp_path / "mic.wav", ["ps_librivox_0880.wav"])
    shot = DOCS_SCREENSHOT if os.environ.get("RP_DOCS_SCREENSHOT") else tmp_path / "page.png"
    result = await talk_in_chromium(server.port, wav, tmp_path / "profile", 1, shot)
    assert not result["page_errors"], result["page_errors"]
    assert not result["error_shown"]
    assert any({"young", "man"} <= set(t.lower().replace(".", "").split()) for t in result["user"]), result["user"]
    assert result["assistant"] and result["assistant"][0].strip()
    assert result["stats"]["totalAudioEnergy"] > 0.01, result["stats"]  # the reply was heard, not silence
    first = result["measurements"][0]
    assert first["server"]["voice_to_voice"] > 0 and first["browser_ms"] > 0
    assert shot.exists() and shot.stat().st_size > 10_000
    registry = server.server.config.app.state.webrtc_calls
    with anyio.fail_after(30):
        while registry.calls:  # the closed page ended the call on the server
            await anyio.sleep(0.1)
    if shot != DOCS_SCREENSHOT:
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
