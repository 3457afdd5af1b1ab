// MSaaS in the browser: sign in, upload, follow jobs live, listen, mix, download. Everything
// goes through the public API (/v1/...), with the key as `Authorization: Bearer`.

import { Mixer, audibleGain, clock, drawWaveform, encodeWav } from "/ui/player.js";

const KEY_STORAGE = "msaas.key";
const $ = (id) => document.getElementById(id);

/** What to do about a failure, by its stable code. */
const ADVICE = {
  unauthorized: "Check the API key (Sign out, then sign in again).",
  unsupported_media_type: "This does not look like audio: try an MP3, WAV, FLAC, Ogg or M4A file.",
  unsupported_format: "This audio format is not supported: convert it to WAV or MP3.",
  corrupt_audio: "The file could not be decoded: it may be damaged. Try re-exporting it.",
  no_audio_track: "The file has no audio track.",
  empty_input: "The file is empty.",
  too_large: "The file is larger than this service accepts.",
  payload_too_large: "The file is larger than this service accepts.",
  too_long: "The song is longer than this service accepts: cut it shorter.",
  too_short: "The song is too short to separate.",
  too_many_channels: "The file has more channels than this service accepts.",
  invalid_option: "One of the chosen options is not valid for this model.",
  unknown_model: "That model is not installed here: pick another.",
  unknown_stem: "That model has no such stem: pick others.",
  rate_limited: "Too many jobs at once for your account: wait for some to finish.",
  overloaded: "The service is busy: try again in a moment.",
  model_load_failed: "The service could not load the model: tell its operator.",
  device_unavailable: "The service cannot use its GPU right now: tell its operator.",
  device_out_of_memory: "The GPU ran out of memory: try again later.",
  attempts_exhausted: "It failed several times: try again later, or tell the operator.",
  storage_unavailable: "The service's storage did not answer: try again shortly.",
  queue_unavailable: "The service's queue did not answer: try again shortly.",
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  /** The message a person reads: what happened, and what to do. */
  words() {
    const advice = ADVICE[this.code];
    return advice ? `${this.message} — ${advice}` : this.message;
  }
}

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  models: [],
  jobs: new Map(),
  mixer: null,
  openJob: null,
};

function headers(extra = {}) {
  const h = { ...extra };
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

/** The API's `{"error":{"code","message"}}`, or the bare status when the body is not that. */
function errorFrom(status, statusText, body) {
  return new ApiError(
    status,
    body?.error?.code || `http_${status}`,
    body?.error?.message || `${status} ${statusText}`,
  );
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  return errorFrom(response.status, response.statusText, body);
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers) });
  } catch (err) {
    throw new ApiError(0, "network", `The service did not answer (${err.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

function showAlert(message) {
  const alert = $("alert");
  alert.textContent = message;
  alert.hidden = !message;
}

// ---- signing in -------------------------------------------------------------------------

async function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  try {
    await loadJobs();
    await enterApp();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showSignIn(state.key ? "The saved key was not accepted: sign in again." : "");
    } else {
      showAlert(err.words ? err.words() : String(err));
    }
  }
}

function showSignIn(message) {
  $("app").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  const error = $("sign-in-error");
  error.textContent = message;
  error.hidden = !message;
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  state.key = key;
  try {
    await loadJobs();
  } catch (err) {
    state.key = "";
    if (err instanceof ApiError && err.status === 401) {
      showSignIn("That key was not accepted (401 unauthorized): check it and try again.");
    } else {
      showSignIn(err.words ? err.words() : String(err));
    }
    return;
  }
  localStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  await enterApp();
}

function signOut() {
  localStorage.removeItem(KEY_STORAGE);
  state.key = "";
  for (const entry of state.jobs.values()) entry.follow?.abort();
  state.jobs.clear();
  $("jobs").replaceChildren();
  closePlayer();
  showSignIn("");
}

async function enterApp() {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = !state.key;
  $("who").textContent = state.key ? "Signed in" : "No key needed here";
  showAlert("");
  if (!enterApp.wired) {
    enterApp.wired = true;
    wireUpload();
    wirePlayer();
    $("refresh").addEventListener("click", () => loadJobs().catch((e) => showAlert(e.words())));
  }
  try {
    await loadModels();
  } catch (err) {
    showAlert(err.words ? err.words() : String(err));
  }
}

// ---- models and options -----------------------------------------------------------------

async function loadModels() {
  const body = await (await api("/v1/models")).json();
  state.models = body.models || [];
  const select = $("model");
  select.replaceChildren(
    ...state.models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.sources.join(", ")})`;
      option.selected = m.name === body.default;
      return option;
    }),
  );
  select.onchange = showModel;
  showModel();
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value);
}

function showModel() {
  const model = currentModel();
  $("model-about").textContent = model ? model.description || `${model.family} model` : "";
  const picks = $("stem-picks");
  picks.replaceChildren(
    ...(model ? model.sources : []).map((source) => {
      const label = document.createElement("label");
      label.className = "inline";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "stem";
      box.value = source;
      box.checked = true;
      box.addEventListener("change", () => {
        document.querySelector('input[name="mode"][value="pick"]').checked = true;
      });
      label.append(box, ` ${source}`);
      return label;
    }),
  );
  const karaoke = document.querySelector('input[name="mode"][value="karaoke"]');
  karaoke.disabled = !(model && model.sources.includes("vocals") && model.sources.length > 2);
  if (karaoke.disabled && karaoke.checked) {
    document.querySelector('input[name="mode"][value="all"]').checked = true;
  }
}

function uploadQuery(file) {
  const query = new URLSearchParams();
  const model = $("model").value;
  if (model) query.set("model", model);
  query.set("filename", file.name);
  const format = $("format").value;
  query.set("format", format);
  if (format === "mp3") query.set("bitrate", $("bitrate").value);
  const mode = document.querySelector('input[name="mode"]:checked').value;
  if (mode === "karaoke") query.set("two_stems", "vocals");
  if (mode === "pick") {
    const stems = [...document.querySelectorAll('input[name="stem"]:checked')].map((b) => b.value);
    if (stems.length === 0) throw new ApiError(0, "invalid_option", "Pick at least one stem.");
    query.set("stems", stems.join(","));
  }
  return query;
}

// ---- uploads ----------------------------------------------------------------------------

function wireUpload() {
  const drop = $("drop");
  const input = $("files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    uploadAll([...e.dataTransfer.files]);
  });
  input.addEventListener("change", () => {
    uploadAll([...input.files]);
    input.value = "";
  });
  $("format").addEventListener("change", () => {
    $("bitrate-field").hidden = $("format").value !== "mp3";
  });
}

function uploadAll(files) {
  for (const file of files) upload(file);
}

function upload(file) {
  const row = document.createElement("li");
  const name = document.createElement("span");
  name.textContent = file.name;
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", `Upload of ${file.name}`);
  const status = document.createElement("span");
  status.className = "status hint";
  status.textContent = "Uploading…";
  row.append(name, bar, status);
  $("uploads").prepend(row);

  let query;
  try {
    query = uploadQuery(file);
  } catch (err) {
    status.textContent = err.words();
    status.className = "status error";
    return;
  }
  const request = new XMLHttpRequest();
  request.open("POST", `/v1/jobs?${query}`);
  for (const [k, v] of Object.entries(headers())) request.setRequestHeader(k, v);
  request.setRequestHeader("Content-Type", file.type || "application/octet-stream");
  request.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = e.loaded / e.total;
  };
  request.onerror = () => {
    status.textContent = "The upload did not reach the service (network error).";
    status.className = "status error";
  };
  request.onload = () => {
    let body = null;
    try {
      body = JSON.parse(request.responseText);
    } catch {
      // Not JSON: handled below.
    }
    if (request.status === 200 || request.status === 202) {
      bar.value = 1;
      status.textContent = request.status === 200 ? "Already uploaded: the earlier job." : "Uploaded: queued.";
      trackJob(body);
      setTimeout(() => row.remove(), 4000);
    } else {
      const err = errorFrom(request.status, request.statusText, body);
      status.textContent = `Not accepted: ${err.words()}`;
      status.className = "status error";
      if (err.status === 401) showSignIn("Your key is no longer accepted: sign in again.");
    }
  };
  request.send(file);
}

// ---- jobs -------------------------------------------------------------------------------

async function loadJobs() {
  const body = await (await api("/v1/jobs?limit=50")).json();
  for (const job of (body.jobs || []).reverse()) trackJob(job);
}

const TERMINAL = new Set(["done", "failed", "cancelled"]);

function trackJob(job) {
  let entry = state.jobs.get(job.id);
  if (!entry) {
    entry = { job, el: jobElement(job), progress: null, follow: null };
    state.jobs.set(job.id, entry);
    $("jobs").prepend(entry.el.root);
  }
  entry.job = job;
  renderJob(entry);
  if (!TERMINAL.has(job.state) && !entry.follow) follow(entry);
}

function jobElement(job) {
  const root = document.createElement("li");
  root.dataset.job = job.id;
  const text = document.createElement("div");
  const name = document.createElement("div");
  name.className = "name";
  const meta = document.createElement("div");
  meta.className = "meta";
  text.append(name, meta);
  const buttons = document.createElement("div");
  buttons.className = "buttons";
  const open = document.createElement("button");
  open.type = "button";
  open.textContent = "Open";
  open.className = "open";
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "quiet remove";
  buttons.append(open, remove);
  const progress = document.createElement("progress");
  progress.className = "progress";
  progress.max = 100;
  const problem = document.createElement("p");
  problem.className = "problem";
  problem.setAttribute("role", "alert");
  root.append(text, buttons, progress, problem);
  open.addEventListener("click", () => openPlayer(job.id));
  remove.addEventListener("click", () => removeJob(job.id));
  return { root, name, meta, open, remove, progress, problem };
}

/** Overall progress: decode, then separation chunk by chunk, then encode. */
function percent(entry) {
  const { job } = entry;
  switch (job.state) {
    case "queued":
      return 0;
    case "decoding":
      return 5;
    case "separating": {
      const p = entry.progress;
      return p && p.total > 0 ? 10 + Math.round((80 * p.done) / p.total) : 10;
    }
    case "encoding":
      return 92;
    default:
      return 100;
  }
}

function elapsed(job) {
  const finished = TERMINAL.has(job.state);
  const seconds = ((finished ? job.updated_ms : Date.now()) - job.created_ms) / 1000;
  return finished ? `took ${clock(seconds)}` : `${clock(seconds)} so far`;
}

function renderJob(entry) {
  const { job, el } = entry;
  el.name.textContent = job.source_name || job.id;
  const badge = document.createElement("span");
  badge.className = `state ${job.state}`;
  badge.textContent = job.state;
  const parts = [job.model];
  if (job.state === "separating") parts.push(`${percent(entry)} %`);
  parts.push(elapsed(job));
  if (job.source?.duration_secs) parts.push(`${clock(job.source.duration_secs)} of audio`);
  el.meta.replaceChildren(badge, ` · ${parts.filter(Boolean).join(" · ")}`);
  el.progress.value = percent(entry);
  el.progress.hidden = TERMINAL.has(job.state);
  el.progress.setAttribute("aria-label", `${job.source_name}: ${percent(entry)} %`);
  el.open.hidden = job.state !== "done";
  el.remove.textContent = TERMINAL.has(job.state) ? "Delete" : "Cancel";
  if (job.error) {
    const err = new ApiError(0, job.error.code, job.error.message);
    el.problem.textContent = `Failed (${job.error.code}): ${err.words()}`;
    el.problem.hidden = false;
  } else {
    el.problem.textContent = "";
    el.problem.hidden = true;
  }
  $("jobs-empty").hidden = state.jobs.size > 0;
}

/** Server-sent events over fetch (EventSource cannot send an Authorization header). */
async function follow(entry) {
  const controller = new AbortController();
  entry.follow = controller;
  const id = entry.job.id;
  let backoff = 1000;
  while (!controller.signal.aborted && !TERMINAL.has(entry.job.state)) {
    try {
      const response = await api(`/v1/jobs/${id}/events`, { signal: controller.signal });
      backoff = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handleEvent(entry, buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) {
        removeEntry(id);
        return;
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 15000);
    }
  }
  entry.follow = null;
}

function handleEvent(entry, block) {
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("data:")) data += line.slice(5).trimStart();
  }
  if (!data) return;
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return;
  }
  if (event.kind === "progress" && event.progress) entry.progress = event.progress;
  if (event.job) entry.job = event.job;
  if (event.kind === "deleted") {
    removeEntry(entry.job.id);
    return;
  }
  renderJob(entry);
}

function removeEntry(id) {
  const entry = state.jobs.get(id);
  if (!entry) return;
  entry.follow?.abort();
  entry.el.root.remove();
  state.jobs.delete(id);
  $("jobs-empty").hidden = state.jobs.size > 0;
  if (state.openJob === id) closePlayer();
}

async function removeJob(id) {
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
    removeEntry(id);
  } catch (err) {
    if (err.status === 404) removeEntry(id);
    else showAlert(`Could not delete the job: ${err.words()}`);
  }
}

// ---- the player -------------------------------------------------------------------------

function wirePlayer() {
  $("play").addEventListener("click", togglePlay);
  $("player-close").addEventListener("click", closePlayer);
  $("seek").addEventListener("input", () => state.mixer?.seek(Number($("seek").value)));
  $("download-all").addEventListener("click", () => {
    for (const a of document.querySelectorAll("#tracks a.download")) a.click();
  });
  $("export").addEventListener("click", exportMix);
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(e.target.tagName);
    if (e.key === " " && state.mixer && !$("player").hidden && !typing) {
      e.preventDefault();
      togglePlay();
    }
  });
  setInterval(tick, 100);
}

function filenameOf(response, fallback) {
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  return match ? match[1] : fallback;
}

async function openPlayer(id) {
  const entry = state.jobs.get(id);
  if (!entry) return;
  closePlayer();
  const job = entry.job;
  state.openJob = id;
  $("player").hidden = false;
  $("player-title").textContent = job.source_name || "Player";
  $("player-status").textContent = "Loading the stems…";
  $("tracks").replaceChildren();
  const mixer = new Mixer(new AudioContext());
  state.mixer = mixer;
  window.msaasPlayer = mixer; // for the browser test and the curious
  mixer.onended = () => ($("play").textContent = "Play");
  try {
    // In the model's order (the record's), not the links' alphabetical one.
    const stems = job.stems && job.stems.length ? job.stems : Object.keys(job.links?.stems || {});
    for (const name of stems) {
      const response = await api(`/v1/jobs/${id}/stems/${encodeURIComponent(name)}`);
      const bytes = await response.arrayBuffer();
      const type = response.headers.get("Content-Type") || "application/octet-stream";
      const filename = filenameOf(response, `${name}.wav`);
      const buffer = await mixer.context.decodeAudioData(bytes.slice(0));
      if (state.mixer !== mixer) return;
      const track = mixer.add(name, buffer, bytes, filename, type);
      $("tracks").append(trackElement(track, mixer));
    }
    $("player-status").textContent = `${stems.length} stems, ${clock(mixer.duration)}. Space plays and pauses.`;
    $("seek").max = String(mixer.duration);
    redrawWaves(mixer);
  } catch (err) {
    $("player-status").textContent = `Could not load the stems: ${err.words ? err.words() : err}`;
  }
}

function trackElement(track, mixer) {
  const li = document.createElement("li");
  li.dataset.stem = track.name;
  const name = document.createElement("span");
  name.className = "track-name";
  name.textContent = track.name;
  const controls = document.createElement("div");
  controls.className = "controls";
  const toggle = (label, key) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `quiet ${key}`;
    b.textContent = label;
    b.setAttribute("aria-pressed", "false");
    b.setAttribute("aria-label", `${label} ${track.name}`);
    b.addEventListener("click", () => {
      track[key] = !track[key];
      b.setAttribute("aria-pressed", String(track[key]));
      mixer.applyGains();
      redrawWaves(mixer);
    });
    return b;
  };
  const volume = document.createElement("input");
  volume.type = "range";
  volume.min = "0";
  volume.max = "1.5";
  volume.step = "0.01";
  volume.value = "1";
  volume.className = "volume";
  volume.setAttribute("aria-label", `Volume of ${track.name}`);
  volume.addEventListener("input", () => {
    track.volume = Number(volume.value);
    mixer.applyGains();
  });
  const download = document.createElement("a");
  download.className = "download";
  download.textContent = "Download";
  download.download = track.filename;
  download.href = URL.createObjectURL(new Blob([track.bytes], { type: track.type }));
  download.setAttribute("aria-label", `Download ${track.name}`);
  controls.append(toggle("Solo", "solo"), toggle("Mute", "mute"), volume, download);
  const canvas = document.createElement("canvas");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `Waveform of ${track.name}`);
  track.canvas = canvas;
  li.append(name, controls, canvas);
  return li;
}

function redrawWaves(mixer) {
  const style = getComputedStyle(document.documentElement);
  for (const track of mixer.tracks) {
    const heard = audibleGain(track, mixer.tracks) > 0;
    const color = style.getPropertyValue(heard ? "--wave" : "--wave-off").trim() || "#888";
    if (track.canvas) drawWaveform(track.canvas, track.buffer, color);
  }
}

async function togglePlay() {
  const mixer = state.mixer;
  if (!mixer) return;
  if (mixer.playing) {
    mixer.pause();
    $("play").textContent = "Play";
  } else {
    await mixer.play();
    $("play").textContent = "Pause";
  }
}

function tick() {
  const mixer = state.mixer;
  if (!mixer) return;
  const at = mixer.position();
  if (document.activeElement !== $("seek")) $("seek").value = String(at);
  $("clock").textContent = `${clock(at)} / ${clock(mixer.duration)}`;
}

async function exportMix() {
  const mixer = state.mixer;
  if (!mixer || mixer.tracks.length === 0) return;
  $("player-status").textContent = "Rendering the mix…";
  const rendered = await mixer.renderMix();
  const blob = new Blob([encodeWav(rendered)], { type: "audio/wav" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${($("player-title").textContent || "mix").replace(/\.[^.]+$/, "")} - mix.wav`;
  document.body.append(a);
  a.click();
  a.remove();
  $("player-status").textContent = "Mix exported.";
}

function closePlayer() {
  if (state.mixer) state.mixer.close();
  state.mixer = null;
  state.openJob = null;
  window.msaasPlayer = null;
  $("player").hidden = true;
  $("play").textContent = "Play";
}

start();
