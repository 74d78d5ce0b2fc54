// The voicebot web page: record or upload audio (or type), send it, show the streamed reply.
// Talks only to this server (see adapters/web.py for the API); no library, no build step.

const $ = (id) => document.getElementById(id);

const STAGES = {
  transcribing: "Transcribing…",
  thinking: "Thinking…",
  speaking: "Speaking…",
  uploading_voice: "Sending the voice note…",
  rendering_video: "Rendering the avatar…",
};
// What MediaRecorder should produce, best first: Opus in WebM or OGG; Safari only does MP4.
const RECORDING_TYPES = [
  ["audio/webm;codecs=opus", "webm"],
  ["audio/ogg;codecs=opus", "ogg"],
  ["audio/webm", "webm"],
  ["audio/mp4", "m4a"],
];

const page = {
  config: null, // /api/state
  pending: null, // {blob, name} waiting for "Process Audio"
  recording: null, // {recorder, stream, started, timer}
  busy: false,
};

// --- small view pieces ---------------------------------------------------------------------

function say(text, kind = "info") {
  const status = $("status");
  status.textContent = text;
  status.dataset.kind = kind;
  clearTimeout(say.timer);
  if (text) say.timer = setTimeout(() => { status.textContent = ""; }, 8000);
}

function scrollDown() {
  const main = $("conversation");
  main.scrollTop = main.scrollHeight;
}

/** A message bubble; returns handles to fill it in as the turn goes on. */
function bubble(role, text = "") {
  $("empty").hidden = true;
  const item = document.createElement("article");
  item.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const stage = document.createElement("div");
  stage.className = "stage";
  item.append(body, stage);
  $("conversation").append(item);
  scrollDown();
  return {
    item,
    setText(value) { body.textContent = value; scrollDown(); },
    setStage(value) { stage.textContent = value || ""; },
    setKind(kind) { item.classList.toggle("notice", kind === "notice"); },
    attach(element) { item.insertBefore(element, stage); scrollDown(); return element; },
  };
}

/** An audio or video element; an autoplaying one first pauses whatever else was playing. */
function player(tag, src, { autoplay = false } = {}) {
  if (autoplay) document.querySelectorAll("audio, video").forEach((other) => other.pause());
  const media = document.createElement(tag);
  media.controls = true;
  media.preload = "auto";
  media.autoplay = autoplay;
  media.playsInline = true;
  media.src = src;
  return media;
}

function setBusy(busy) {
  page.busy = busy;
  $("process").disabled = busy || !page.pending;
  $("send").disabled = busy;
  $("clear").disabled = busy;
}

function setPending(blob, name) {
  const limit = page.config?.max_audio_bytes ?? Infinity;
  if (blob && blob.size > limit) {
    say(`That file is too large (${(blob.size / 1e6).toFixed(1)} MB). The limit is ${Math.round(limit / 1e6)} MB.`, "error");
    return;
  }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  page.pending = blob ? { blob, name } : null;
  preview.hidden = !blob;
  preview.src = blob ? URL.createObjectURL(blob) : "";
  setBusy(page.busy);
}

// --- talking to the server -----------------------------------------------------------------

async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `The server answered ${response.status}.`);
  return data;
}

/** Read an NDJSON body, calling onEvent for each line's object. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = buffered.split("\n");
    buffered = lines.pop();
    for (const line of lines) if (line.trim()) onEvent(JSON.parse(line));
    if (done) return;
  }
}

async function waitForClip(url, view) {
  view.setStage(STAGES.rendering_video);
  try {
    const response = await fetch(url);
    if (response.status === 200) {
      const { url: clip } = await response.json();
      view.attach(player("video", clip, { autoplay: true })).className = "clip";
    }
  } finally {
    view.setStage("");
  }
}

/** Send one turn (a FormData with `audio` or `text`) and stream the reply into the page. */
async function sendTurn(form, userText, recording) {
  setBusy(true);
  const user = bubble("user", userText);
  if (recording) user.attach(player("audio", URL.createObjectURL(recording))).className = "mine";
  const bot = bubble("bot");
  bot.setStage("Sending…");
  let replied = false;
  try {
    const response = await fetch("/api/turns", { method: "POST", body: form });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `The server answered ${response.status}.`);
    }
    await readEvents(response, (event) => {
      if (event.type === "stage") bot.setStage(STAGES[event.stage] || "");
      else if (event.type === "delta") bot.setText(event.text);
      else if (event.type === "reply") {
        replied = true;
        bot.setStage("");
        bot.setText(event.text);
        bot.setKind(event.kind);
        if (event.transcript) user.setText(event.transcript);
        if (event.audio) bot.attach(player("audio", event.audio, { autoplay: true })).className = "reply-audio";
        if (event.clip) waitForClip(event.clip, bot);
      }
    });
    if (!replied) bot.item.remove(); // the core chose not to answer (e.g. nothing to say)
  } catch (error) {
    bot.setStage("");
    bot.setKind("notice");
    bot.setText(error.message || "The connection to the bot was lost.");
  } finally {
    setBusy(false);
  }
}

// --- controls --------------------------------------------------------------------------------

async function toggleRecording() {
  if (page.recording) {
    page.recording.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    say(`No microphone: ${error.message}. You can upload a file instead.`, "error");
    return;
  }
  const [mimeType, extension] = RECORDING_TYPES.find(([type]) => MediaRecorder.isTypeSupported(type)) || ["", "webm"];
  const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
  const chunks = [];
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    clearInterval(page.recording.timer);
    page.recording = null;
    $("record").classList.remove("on");
    $("record-label").textContent = "Record";
    setPending(new Blob(chunks, { type: recorder.mimeType || mimeType }), `recording.${extension}`);
  };
  const started = Date.now();
  const timer = setInterval(() => {
    const seconds = Math.floor((Date.now() - started) / 1000);
    $("record-label").textContent = `Stop ${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }, 250);
  page.recording = { recorder, stream, timer };
  setPending(null);
  $("record").classList.add("on");
  $("record-label").textContent = "Stop 0:00";
  recorder.start(250);
}

function processAudio() {
  if (!page.pending || page.busy) return;
  const { blob, name } = page.pending;
  const form = new FormData();
  form.append("audio", blob, name);
  setPending(null);
  $("upload").value = "";
  sendTurn(form, "🎤 Voice message", blob);
}

function sendText(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || page.busy) return;
  const form = new FormData();
  form.append("text", text);
  $("text").value = "";
  sendTurn(form, text, null);
}

async function clearConversation() {
  try {
    const { cleared, text } = await postJSON("/api/clear");
    if (cleared) {
      document.querySelectorAll("#conversation .msg").forEach((item) => item.remove());
      $("empty").hidden = false;
    }
    say(text, cleared ? "info" : "error");
  } catch (error) {
    say(error.message, "error");
  }
}

async function changeSetting(body) {
  try {
    say((await postJSON("/api/settings", body)).text);
  } catch (error) {
    say(error.message, "error");
  }
}

// --- start -----------------------------------------------------------------------------------

function showState(config) {
  page.config = config;
  document.title = config.bot_name;
  $("bot-name").textContent = config.bot_name;
  $("text").maxLength = config.max_text_chars;
  const select = $("speaker");
  select.replaceChildren(...config.speakers.map((name) => new Option(name, name, false, name === config.speaker)));
  select.disabled = config.speakers.length < 2;
  $("speaker-field").hidden = !config.voice || config.speakers.length === 0;
  $("video-field").hidden = !config.avatar;
  $("video").checked = config.video;
  for (const message of config.history) {
    bubble(message.role === "user" ? "user" : "bot", message.text);
  }
}

async function start() {
  $("record").addEventListener("click", toggleRecording);
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setPending(file, file.name);
  });
  $("process").addEventListener("click", processAudio);
  $("text-form").addEventListener("submit", sendText);
  $("clear").addEventListener("click", clearConversation);
  $("speaker").addEventListener("change", (event) => changeSetting({ speaker: event.target.value }));
  $("video").addEventListener("change", (event) => changeSetting({ video: event.target.checked }));
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    $("record").disabled = true;
    $("record").title = "Recording needs https or localhost; upload a file instead.";
  }
  try {
    const response = await fetch("/api/state");
    showState(await response.json());
    document.body.dataset.ready = "true";
  } catch (error) {
    say(`Could not reach the bot: ${error.message}`, "error");
  }
}

start();
