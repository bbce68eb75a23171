// The page: microphone -> AudioWorklet (16 kHz mono float32) -> WebSocket -> gateway -> asr_streaming;
// partial and final transcripts come back on the same socket. A file goes to POST /api/transcribe.
// Test hooks: ?max_seconds=N stops recording by itself after N seconds of audio (Chromium's fake
// microphone loops its file forever); ?resample=worklet resamples in the worklet, not the browser.
// body[data-state] tells a test where the page is: idle | connecting | recording | finishing | done |
// error; window.mambaservePartials lists the partials.
"use strict";

const RATE = 16000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const maxSeconds = Number(params.get("max_seconds")) || 0;

let rec = null; // the recording in progress: {ws, ctx, stream, node, sent, stopping}
const partials = (window.mambaservePartials = []); // every partial received (tests read it)

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $("rec-status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function loadConfig() {
  try {
    const r = await fetch("/api/config");
    const c = await r.json();
    const l = c.limits;
    const ok = c.ready.asr && c.ready.asr_streaming;
    $("server-status").textContent = ok
      ? "server ready: asr and asr_streaming"
      : "the server's models are not ready (asr: " + c.ready.asr + ", asr_streaming: " + c.ready.asr_streaming + ")";
    $("limits").textContent =
      "Limits: " + l.max_streams + " streams at once, audio no faster than " + l.max_rate + "× real time, " +
      l.max_stream_seconds + " s per stream, files up to " + l.max_upload_seconds + " s and " +
      Math.round(l.max_upload_bytes / 1048576) + " MiB.";
  } catch (e) {
    $("server-status").textContent = "cannot reach the gateway: " + e;
  }
}

function prompt() {
  const p = $("prompt").value.trim();
  return p ? p : null;
}

async function startRecording() {
  clearError();
  $("partial").textContent = "";
  $("record").disabled = true;
  setState("connecting", "opening the microphone…");
  let stream, ctx;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    setState("error", "idle");
    $("record").disabled = false;
    showError("No microphone: " + e.message + " (allow the page to use the microphone and try again)");
    return;
  }
  try {
    // The browser resamples the microphone; ?resample=worklet (tests) takes the fallback path instead.
    ctx = params.get("resample") === "worklet" ? new AudioContext() : new AudioContext({ sampleRate: RATE });
  } catch (e) {
    ctx = new AudioContext(); // this browser cannot: the worklet resamples
  }
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "capture-processor");
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(node).connect(mute).connect(ctx.destination);

  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/stream");
  ws.binaryType = "arraybuffer";
  rec = { ws, ctx, stream, node, sent: 0, taken: 0, ready: false, stopping: false, gotFinal: false, queue: [] };
  const mine = rec;
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: RATE, format: "f32", prompt: prompt() }));
  ws.onmessage = (ev) => onMessage(mine, JSON.parse(ev.data));
  ws.onclose = (ev) => {
    releaseAudio(mine);
    if (!mine.gotFinal && document.body.dataset.state !== "error") {
      setState("error", "idle");
      showError("The connection closed before a final transcript" + (ev.reason ? " (" + ev.reason + ")" : "") + ".");
    }
    $("record").disabled = false;
    $("stop").disabled = true;
    if (rec === mine) rec = null;
  };
  node.port.onmessage = (ev) => onAudio(mine, ev.data);
}

function onAudio(r, data) {
  if (r.stopping) return;
  const flushed = !(data instanceof Float32Array);
  let samples = flushed ? data.samples : data;
  const limit = Math.round(maxSeconds * RATE);
  const full = maxSeconds > 0 && r.taken + samples.length >= limit;
  if (full) samples = samples.subarray(0, Math.max(0, limit - r.taken));
  r.taken += samples.length;
  send(r, samples);
  if (flushed || full) finishRecording(r);
}

function send(r, samples) {
  if (samples.length === 0) return;
  if (!r.ready) {
    r.queue.push(samples);
    return;
  }
  r.ws.send(samples.buffer.byteLength === samples.length * 4 ? samples.buffer : samples.slice().buffer);
  r.sent += samples.length;
  $("rec-status").textContent = "recording " + (r.sent / RATE).toFixed(1) + " s";
}

function onMessage(r, m) {
  if (m.type === "ready") {
    r.ready = true;
    setState("recording", "recording");
    $("stop").disabled = false;
    for (const s of r.queue.splice(0)) send(r, s);
    if (r.stopping) r.ws.send(JSON.stringify({ type: "stop" }));
  } else if (m.type === "partial") {
    partials.push(m.text);
    $("partial").textContent = m.text;
  } else if (m.type === "final") {
    r.gotFinal = true; // the last partial stays shown above the final, for comparison
    const li = document.createElement("li");
    li.textContent = m.text || "(nothing recognised)";
    li.dataset.streamId = m.stream_id;
    li.dataset.text = m.text;
    $("finals").appendChild(li);
    setState("done", "done: " + m.audio_s.toFixed(1) + " s of audio");
  } else if (m.type === "error") {
    if (m.code !== "length" && m.code !== "idle") setState("error", "stopped");
    showError(m.message);
  }
}

function releaseAudio(r) {
  r.stopping = true;
  if (r.released) return;
  r.released = true;
  r.stream.getTracks().forEach((t) => t.stop());
  r.node.port.onmessage = null;
  if (r.ctx.state !== "closed") r.ctx.close();
}

// Stop: the worklet first hands over the audio it holds (< 100 ms), then the stream is ENDed.
function stopRecording() {
  const r = rec;
  if (!r || r.stopping || r.flushing) return;
  r.flushing = true;
  $("stop").disabled = true;
  r.node.port.postMessage("flush");
  setTimeout(() => finishRecording(r), 500); // in case the audio thread has stopped already
}

function finishRecording(r) {
  if (r.stopping) return;
  releaseAudio(r);
  $("stop").disabled = true;
  setState("finishing", "waiting for the final transcript…");
  if (r.ready && r.ws.readyState === WebSocket.OPEN) r.ws.send(JSON.stringify({ type: "stop" }));
}

async function upload() {
  clearError();
  const file = $("file").files[0];
  if (!file) {
    showError("Choose an audio file first.");
    return;
  }
  $("upload").disabled = true;
  $("upload-result").textContent = "transcribing " + file.name + "…";
  document.body.dataset.upload = "running";
  try {
    const p = prompt();
    const r = await fetch("/api/transcribe" + (p ? "?prompt=" + encodeURIComponent(p) : ""), {
      method: "POST",
      body: file,
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : "HTTP " + r.status);
    $("upload-result").textContent = body.text || "(nothing recognised)";
    $("upload-result").dataset.text = body.text;
    document.body.dataset.upload = "done";
  } catch (e) {
    $("upload-result").textContent = "";
    showError("Upload failed: " + e.message);
    document.body.dataset.upload = "error";
  } finally {
    $("upload").disabled = false;
  }
}

$("record").addEventListener("click", startRecording);
$("stop").addEventListener("click", stopRecording);
$("upload").addEventListener("click", upload);
loadConfig();
