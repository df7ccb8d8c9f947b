// The talk page: OpenAI's Realtime WebRTC flow against this server (docs/webrtc.md).
// One peer connection: the microphone track out, the reply track in, events on "oai-events".
"use strict";

const $ = (id) => document.getElementById(id);
// The browser's voice-to-voice: the mic's last voiced poll to the reply's first sound (a poll every 10 ms reads
// the last 512 samples). The mic is voiced above 0.02 RMS (after the browser's gain control): measured against the
// WAVs' energy ground truth it is within 0.15 s of it on 6 clips of 8, but puts a soft last word up to 0.9 s early;
// a threshold relative to the turn's peak and floor did worse (docs/webrtc.md, "Measured").
const VOICED_RMS = 0.02;
// The server's track is digital silence between replies: any sound above -60 dBFS is the reply's first sample,
// which is where the server's in-process voice-to-voice ends too.
const REPLY_ONSET_RMS = 0.001;
const REPLY_GAP_MS = 400;     // reply silence that ends one reply's sound
const GATHER_TIMEOUT_MS = 3000;
// Epoch milliseconds (the system clock, as the server's time.time()), so a test on the same machine can line the
// page's instants up with the server's.
const clock = () => performance.timeOrigin + performance.now();

const page = {
  pc: null, channel: null, mic: null, audio: null, callUrl: null,
  lastVoicedAt: null,          // clock() of the mic's last voiced poll
  replySounding: false, replyQuietSince: 0, pendingOnset: null,
  turns: new Map(),            // response_id -> {row, browserMs, serverMs}
  items: new Map(),            // item_id -> <li>
  responses: new Map(),        // response_id -> <li>
  timers: [],
  headset: false,              // the user said a headset: the microphone opened without echo cancellation
  echoCancellation: null,      // what the browser applied (the track's settings)
  // For tests and the curious: what the page measured; with window.rpTrace set before the page loads,
  // every level poll too ([clock ms, mic RMS, reply RMS]).
  measurements: [],
  trace: [],
};
window.rp = page;

function setState(text, kind) {
  const el = $("state");
  el.textContent = text;
  el.className = `state ${kind}`;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
  if (message) setState("error", "error");
}

function describeMediaError(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was refused. Allow the microphone for this page (the lock icon in the address bar) and connect again.";
    case "NotFoundError":
      return "No microphone was found. Plug one in and connect again.";
    case "NotReadableError":
      return "The microphone is in use by another program or cannot be read.";
    default:
      return `The microphone could not be opened: ${error && error.message ? error.message : error}`;
  }
}

async function describeHttpError(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = body && body.error && body.error.message ? body.error.message : "";
  } catch (_) { /* not JSON: the status says enough */ }
  if (response.status === 401) return "Wrong API key: the server refused the call. Enter the key the server was started with (--api-key).";
  if (response.status === 501) return detail || "This server has no WebRTC support installed.";
  return `The server refused the call (HTTP ${response.status})${detail ? ": " + detail : ""}.`;
}

function addLine(role, text, cls = "") {
  const li = document.createElement("li");
  li.className = `${role} ${cls}`.trim();
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "assistant";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  $("log").append(li);
  li.scrollIntoView({ block: "nearest" });
  $("hint").hidden = true;
  return li;
}

function fmt(ms) { return ms === null || ms === undefined ? "—" : Math.round(ms).toString(); }

function turnRow(responseId) {
  let turn = page.turns.get(responseId);
  if (!turn) {
    const row = document.createElement("tr");
    row.innerHTML = `<td>${page.turns.size + 1}</td>` + "<td>—</td>".repeat(6);
    $("latency").tBodies[0].append(row);
    turn = { row, browserMs: null, server: null, startedAt: null };
    page.turns.set(responseId, turn);
  }
  return turn;
}

function renderTurn(turn) {
  const cells = turn.row.cells;
  const s = turn.server || {};
  [s.endpoint, s.asr, s.llm, s.tts, s.voice_to_voice, turn.browserMs].forEach((v, i) => { cells[i + 1].textContent = fmt(v); });
  if (turn.measurement) Object.assign(turn.measurement, { browser_ms: turn.browserMs, ...turn.instants });
}

// -- server events -------------------------------------------------------------------
function onEvent(event) {
  switch (event.type) {
    case "input_audio_buffer.speech_started": {
      const li = addLine("user", "…", "pending");
      page.items.set(event.item_id, li);
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const li = page.items.get(event.item_id);
      if (li) {
        if (event.transcript) { li.querySelector(".text").textContent = event.transcript; li.classList.remove("pending"); }
        else li.remove();
      } else if (event.transcript) addLine("user", event.transcript);
      break;
    }
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
    case "response.audio_transcript.delta":
    case "response.text.delta": {
      let li = page.responses.get(event.response_id);
      if (!li) { li = addLine("assistant", ""); page.responses.set(event.response_id, li); }
      li.querySelector(".text").textContent += event.delta;
      break;
    }
    case "response.done": {
      const r = event.response;
      const li = page.responses.get(r.id);
      if (li && r.status === "cancelled") {
        li.classList.add("interrupted");
        const heard = r.output && r.output[0] && r.output[0].content && r.output[0].content[0];
        if (heard && typeof heard.transcript === "string") li.querySelector(".text").textContent = heard.transcript;
      }
      break;
    }
    case "output_audio_buffer.started": {
      const turn = turnRow(event.response_id);
      turn.startedAt = clock();
      if (page.pendingOnset && turn.startedAt - page.pendingOnset.at < 1500) {
        turn.browserMs = page.pendingOnset.ms;
        turn.instants = page.pendingOnset.instants;
        page.pendingOnset = null;
        renderTurn(turn);
      }
      page.current = event.response_id;
      break;
    }
    case "output_audio_buffer.cleared":
    case "output_audio_buffer.stopped":
      if (page.current === event.response_id) page.current = null;
      break;
    case "realtime_pipeline.turn_latency": {
      const turn = turnRow(event.response_id);
      turn.server = event.latency_ms;
      turn.measurement = { response_id: event.response_id, server: event.latency_ms, browser_ms: turn.browserMs, ...turn.instants };
      page.measurements.push(turn.measurement);
      renderTurn(turn);
      break;
    }
    case "error":
      showError(`Server error: ${event.error.message}`);
      break;
    default:
      break;
  }
}

// -- levels: the mic meter, and the browser-side voice-to-voice ------------------------
function analyser(context, stream) {
  const node = context.createAnalyser();
  node.fftSize = 512;
  context.createMediaStreamSource(stream).connect(node);
  const buffer = new Float32Array(node.fftSize);
  return () => {
    node.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (const x of buffer) sum += x * x;
    return Math.sqrt(sum / buffer.length);
  };
}

function watchLevels(micLevel, replyLevel) {
  page.timers.push(setInterval(() => {
    const now = clock();
    const mic = micLevel();
    $("level").style.width = `${Math.min(100, Math.sqrt(mic) * 220)}%`;
    if (mic > VOICED_RMS) page.lastVoicedAt = now;
    const reply = replyLevel ? replyLevel() : 0;
    if (window.rpTrace) page.trace.push([now, mic, reply]);
    if (!replyLevel) return;
    if (reply > REPLY_ONSET_RMS) {
      if (!page.replySounding && page.lastVoicedAt !== null) {
        // first reply sound after the user's last voiced sample: this browser's voice-to-voice
        const instants = { mic_last_voiced_at_ms: page.lastVoicedAt, reply_onset_at_ms: now };
        const onset = { at: now, ms: now - page.lastVoicedAt, instants };
        const turn = page.current && page.turns.get(page.current);
        if (turn && turn.browserMs === null) { turn.browserMs = onset.ms; turn.instants = instants; renderTurn(turn); }
        else page.pendingOnset = onset;
      }
      page.replySounding = true;
      page.replyQuietSince = now;
    } else if (page.replySounding && now - page.replyQuietSince > REPLY_GAP_MS) {
      page.replySounding = false;
    }
  }, 10));
}

async function linkStats() {
  if (!page.pc) return null;
  const stats = await page.pc.getStats();
  let inbound = null, pair = null, playout = null;
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
    if (s.type === "media-playout") playout = s;
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  const out = {
    totalAudioEnergy: inbound ? inbound.totalAudioEnergy || 0 : 0,
    jitterBufferMs: inbound && inbound.jitterBufferEmittedCount ? 1000 * inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount : null,
    jitterBufferTargetMs: inbound && inbound.jitterBufferEmittedCount ? 1000 * inbound.jitterBufferTargetDelay / inbound.jitterBufferEmittedCount : null,
    playoutDelayMs: playout && playout.totalSamplesCount ? 1000 * playout.totalPlayoutDelay / playout.totalSamplesCount : null,
    audioContextLatencyMs: page.audio ? 1000 * ((page.audio.baseLatency || 0) + (page.audio.outputLatency || 0)) : null,
    packetsLost: inbound ? inbound.packetsLost : null,
    rtpJitterMs: inbound && inbound.jitter !== undefined ? 1000 * inbound.jitter : null,
    rttMs: pair && pair.currentRoundTripTime !== undefined ? 1000 * pair.currentRoundTripTime : null,
  };
  $("link").textContent = `connection: jitter buffer ${fmt(out.jitterBufferMs)} ms · round trip ${fmt(out.rttMs)} ms · packets lost ${out.packetsLost ?? "—"}`;
  return out;
}
page.linkStats = linkStats;

// -- connect / hang up --------------------------------------------------------------
function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS); // send what we have: the server also learns peer-reflexive addresses
  });
}

async function connect() {
  showError("");
  $("connect").disabled = true;
  setState("opening the microphone…", "connecting");
  const key = $("key").value.trim();
  localStorage.setItem("rp-key", key);
  // a headset has no echo to cancel, and Chromium's echo canceller then holds the user down for the
  // first ~7 s of a call's first reply (docs/webrtc.md, "Speaking over the first reply")
  page.headset = $("headset").checked;
  $("headset").disabled = true;  // it takes effect when the microphone opens
  localStorage.setItem("rp-headset", page.headset ? "1" : "");
  try {
    page.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: !page.headset, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    page.echoCancellation = page.mic.getAudioTracks()[0].getSettings().echoCancellation ?? null;
    page.micOpenedAt = clock();
  } catch (error) {
    showError(describeMediaError(error));
    $("connect").disabled = false;
    $("headset").disabled = false;
    return;
  }
  setState("connecting…", "connecting");
  const pc = new RTCPeerConnection({ iceServers: [] });
  page.pc = pc;
  page.audio = new AudioContext();
  const micLevel = analyser(page.audio, page.mic);
  watchLevels(micLevel, null);
  pc.addTrack(page.mic.getAudioTracks()[0], page.mic);
  pc.ontrack = (event) => {
    const stream = event.streams[0] || new MediaStream([event.track]);
    $("reply").srcObject = stream; // also what makes the stream flow into Web Audio in Chromium
    page.timers.forEach(clearInterval);
    page.timers = [];
    watchLevels(micLevel, analyser(page.audio, stream));
  };
  pc.onconnectionstatechange = () => {
    const s = pc.connectionState;
    if (s === "connected") { setState("connected — speak", "connected"); $("hangup").disabled = false; }
    else if (s === "failed") { showError("The connection failed (no network path to the server's media address)."); hangUp(false); }
    else if (s === "disconnected") setState("connection interrupted…", "connecting");
  };
  const channel = pc.createDataChannel("oai-events");
  page.channel = channel;
  channel.onmessage = (message) => { try { onEvent(JSON.parse(message.data)); } catch (error) { console.error(error); } };
  channel.onclose = () => { if (page.pc === pc) { setState("call ended by the server", "idle"); hangUp(false); } };

  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  let response;
  try {
    response = await fetch("/v1/realtime/calls?latency=1", {
      method: "POST",
      body: pc.localDescription.sdp,
      headers: { "Content-Type": "application/sdp", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
    });
  } catch (error) {
    showError(`The server is unreachable at ${location.origin}: is \`python -m realtime_pipeline serve\` running?`);
    hangUp(false);
    return;
  }
  if (response.status !== 201) {
    showError(await describeHttpError(response));
    hangUp(false);
    return;
  }
  page.callUrl = response.headers.get("Location");
  page.key = key;
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  page.statsTimer = setInterval(linkStats, 1000);
  $("hangup").disabled = false;
}

function hangUp(byUser = true) {
  const pc = page.pc;
  page.pc = null;
  if (page.statsTimer) clearInterval(page.statsTimer);
  page.timers.forEach(clearInterval);
  page.timers = [];
  if (byUser && page.callUrl) {
    fetch(`${page.callUrl}/hangup`, { method: "POST", headers: page.key ? { Authorization: `Bearer ${page.key}` } : {} }).catch(() => {});
  }
  page.callUrl = null;
  if (pc) pc.close();
  if (page.mic) page.mic.getTracks().forEach((t) => t.stop());
  if (page.audio) page.audio.close();
  page.mic = page.audio = page.lastVoicedAt = null;
  $("level").style.width = "0";
  $("connect").disabled = false;
  $("headset").disabled = false;
  $("hangup").disabled = true;
  if (byUser) setState("not connected", "idle");
}

$("key").value = localStorage.getItem("rp-key") || "";
$("headset").checked = localStorage.getItem("rp-headset") === "1";
$("connect").addEventListener("click", connect);
$("hangup").addEventListener("click", () => hangUp(true));
window.addEventListener("pagehide", () => { if (page.pc) hangUp(true); });
