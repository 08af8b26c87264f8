// LlamaVoice web page: speak through the OpenAI-style API, clone voices. No framework, no build.
// Playback starts while the audio streams: MP3 bytes go into a MediaSource as they arrive (when the
// browser cannot, the page waits for the whole file). `document.body.dataset.state` says what the
// page is doing ("ready", "speaking", "done", "error"); the browser test waits on it.
"use strict";

const $ = (id) => document.getElementById(id);
const player = $("player");
let controller = null; // aborts the current request
let recorder = null;
let recorded = null; // Blob of the last microphone recording

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function errorMessage(res) {
  try {
    const body = await res.json();
    return body.error?.message || `HTTP ${res.status}`;
  } catch {
    return `HTTP ${res.status}`;
  }
}

// --- voices ------------------------------------------------------------------------------------
async function loadVoices(select = null) {
  const res = await fetch("/v1/audio/voices", { headers: headers() });
  if (!res.ok) {
    setStatus($("status"), await errorMessage(res), true);
    return;
  }
  const { voices } = await res.json();
  const menu = $("voice");
  const keep = select || menu.value;
  menu.replaceChildren(...voices.map((v) => {
    const opt = new Option(v.source === "library" ? `${v.name} (cloned)` : v.name, v.id);
    opt.dataset.source = v.source;
    return opt;
  }));
  if (voices.some((v) => v.id === keep)) menu.value = keep;
  else if (voices.some((v) => v.id === "default")) menu.value = "default";
  updateDeleteButton();
}

function updateDeleteButton() {
  const opt = $("voice").selectedOptions[0];
  $("delete-voice").hidden = !opt || opt.dataset.source !== "library";
}

async function deleteVoice() {
  const id = $("voice").value;
  if (!id || !confirm(`Delete the voice "${id}"?`)) return;
  const res = await fetch(`/v1/audio/voices/${encodeURIComponent(id)}`, { method: "DELETE", headers: headers() });
  if (!res.ok) setStatus($("clone-status"), await errorMessage(res), true);
  await loadVoices();
}

async function toggleRecording() {
  const button = $("record");
  if (recorder) {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus($("clone-status"), `Microphone unavailable: ${err.message}`, true);
    return;
  }
  const parts = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => e.data.size && parts.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    recorded = new Blob(parts, { type: recorder.mimeType || "audio/webm" });
    recorder = null;
    button.textContent = "Record";
    button.classList.remove("recording");
    setStatus($("clone-status"), `Recorded ${(recorded.size / 1024).toFixed(0)} KiB. Name it and press Add voice.`);
  };
  recorder.start();
  button.textContent = "Stop recording";
  button.classList.add("recording");
  setStatus($("clone-status"), "Recording… read a few sentences, then stop.");
}

async function addVoice() {
  const status = $("clone-status");
  const file = $("clip").files[0];
  const clip = file || recorded;
  if (!clip) {
    setStatus(status, "Choose a clip or record one first.", true);
    return;
  }
  const name = $("voice-name").value.trim() || (file ? file.name.replace(/\.[^.]+$/, "") : "");
  if (!name) {
    setStatus(status, "Give the voice a name.", true);
    return;
  }
  const form = new FormData();
  form.append("file", clip, file ? file.name : "recording.webm");
  form.append("name", name);
  setStatus(status, "Encoding the voice…");
  const res = await fetch("/v1/audio/voices", { method: "POST", headers: headers(), body: form });
  if (!res.ok) {
    setStatus(status, await errorMessage(res), true);
    return;
  }
  const voice = await res.json();
  setStatus(status, `Added "${voice.name}".`);
  $("clip").value = "";
  recorded = null;
  await loadVoices(voice.id);
}

// --- speech --------------------------------------------------------------------------------------
function appendTo(buffer, bytes) {
  return new Promise((resolve, reject) => {
    buffer.addEventListener("updateend", resolve, { once: true });
    buffer.addEventListener("error", reject, { once: true });
    buffer.appendBuffer(bytes);
  });
}

async function speak() {
  const status = $("status");
  const text = $("text").value;
  if (!text.trim()) {
    setStatus(status, "Type something to say.", true);
    return;
  }
  const request = {
    model: "llamavoice",
    input: text,
    voice: $("voice").value || "default",
    response_format: "mp3",
    speed: Number($("speed").value),
    temperature: Number($("temperature").value),
  };
  if ($("seed").value !== "") request.seed = Number($("seed").value);

  controller = new AbortController();
  $("speak").disabled = true;
  $("stop").disabled = false;
  $("download").hidden = true;
  document.body.dataset.state = "speaking";
  setStatus(status, "Generating…");
  const t0 = performance.now();
  const chunks = [];
  try {
    const res = await fetch("/v1/audio/speech", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!res.ok) throw new Error(await errorMessage(res));
    const reader = res.body.getReader();
    let firstAudio = null;
    if (window.MediaSource && MediaSource.isTypeSupported("audio/mpeg")) {
      const source = new MediaSource();
      player.src = URL.createObjectURL(source);
      await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
      const buffer = source.addSourceBuffer("audio/mpeg");
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        await appendTo(buffer, value);
        if (firstAudio === null) {
          firstAudio = performance.now() - t0;
          setStatus(status, `Playing (first audio after ${firstAudio.toFixed(0)} ms)…`);
          player.play().catch(() => {}); // autoplay may be refused; the controls still work
        }
      }
      source.endOfStream();
    } else {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (firstAudio === null) firstAudio = performance.now() - t0;
        chunks.push(value);
      }
      player.src = URL.createObjectURL(new Blob(chunks, { type: "audio/mpeg" }));
      player.play().catch(() => {});
    }
    const blob = new Blob(chunks, { type: "audio/mpeg" });
    const link = $("download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.download = "llamavoice.mp3";
    link.hidden = false;
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    setStatus(status, `Done: ${(blob.size / 1024).toFixed(0)} KiB in ${seconds} s, first audio after ` +
      `${firstAudio.toFixed(0)} ms.`);
    document.body.dataset.state = "done";
  } catch (err) {
    const aborted = err.name === "AbortError";
    setStatus(status, aborted ? "Stopped." : err.message, !aborted);
    document.body.dataset.state = aborted ? "ready" : "error";
  } finally {
    controller = null;
    $("speak").disabled = false;
    $("stop").disabled = true;
  }
}

// --- wiring ----------------------------------------------------------------------------------------
function bindRange(id, digits) {
  const show = () => { $(`${id}-value`).textContent = Number($(id).value).toFixed(digits); };
  $(id).addEventListener("input", show);
  show();
}

async function init() {
  $("api-key").value = localStorage.getItem("llamavoice-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("llamavoice-api-key", $("api-key").value.trim());
    loadVoices();
  });
  bindRange("speed", 2);
  bindRange("temperature", 2);
  $("speak").addEventListener("click", speak);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("voice").addEventListener("change", updateDeleteButton);
  $("delete-voice").addEventListener("click", deleteVoice);
  $("record").addEventListener("click", toggleRecording);
  $("add-voice").addEventListener("click", addVoice);
  $("record").disabled = !(navigator.mediaDevices && window.MediaRecorder);
  try {
    const health = await (await fetch("/health")).json();
    setStatus($("health"), `${health.model} on ${health.device}, ${health.sample_rate} Hz, ` +
      `${health.batching ? "continuous batching" : "one request at a time"}` +
      `${health.auth ? ", API key required" : ""}.`);
    if (health.auth && !$("api-key").value) $("api-key").closest("details").open = true;
    await loadVoices();
    document.body.dataset.state = "ready";
  } catch (err) {
    setStatus($("status"), `Server unreachable: ${err.message}`, true);
    document.body.dataset.state = "error";
  }
}

init();
