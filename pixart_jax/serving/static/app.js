// The pixart-jax page: reads the server's /v1/config, builds the form from it, and POSTs generations with
// "stream": true, reading the server-sent events with fetch (EventSource cannot POST) to drive the progress bar.
"use strict";

const KEY_STORAGE = "pixart-jax-api-key";  // sessionStorage: the key lives as long as the tab, never on disk
const RETRY_MS = 2000;  // how often the page asks a server that is still loading for its config
const $ = (id) => document.getElementById(id);
let config = null;
let running = null;     // the AbortController of the generation in flight
let objectUrls = [];    // blob URLs of the shown results, revoked when replaced

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? {Authorization: `Bearer ${key}`} : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// The server's OpenAI-shaped error message, or what went wrong with the HTTP answer.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: fall through */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function fillSelect(select, values, selected, label = (v) => v) {
  select.replaceChildren(...values.map((value) => {
    const option = new Option(label(value), value);
    option.selected = value === selected;
    return option;
  }));
}

function askForKey(message) {
  $("api-key-row").hidden = false;
  $("api-key").focus();
  showError(message);
}

async function loadConfig() {
  const response = await fetch("/v1/config", {headers: authHeaders()});
  if (response.status === 401) {
    askForKey(await errorMessage(response));
    return;
  }
  if (response.status === 503) {  // loading or warming up: the form waits for it
    $("server-info").textContent = `${await errorMessage(response)}; trying again…`;
    setTimeout(() => loadConfig().catch(showConfigError), RETRY_MS);
    return;
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  config = await response.json();
  applyConfig(config);
  showError("");
}

function applyConfig(cfg) {
  $("server-info").textContent = `Model ${cfg.model} on the ${cfg.backend} backend`;
  if (cfg.api_key_required) $("api-key-row").hidden = false;
  const sizes = cfg.sizes.map(([w, h]) => `${w}x${h}`);
  fillSelect($("size"), sizes, cfg.defaults.size, (s) => s.replace("x", " × "));
  fillSelect($("sampler"), cfg.samplers, cfg.defaults.scheduler);
  $("steps").value = cfg.defaults.num_inference_steps;
  $("steps").max = cfg.limits.max_steps;
  $("guidance").value = cfg.defaults.guidance_scale;
  $("num-images").max = cfg.limits.max_images;
  $("prompt").maxLength = cfg.limits.max_prompt_chars;
  $("negative-prompt").maxLength = cfg.limits.max_prompt_chars;
  $("control-section").hidden = !cfg.controlnet;
  fillSelect($("control-mode"), cfg.control_modes, cfg.control_modes[0]);
  buildLoraInputs(cfg.lora);
  $("generate").disabled = false;
}

function buildLoraInputs(adapters) {
  $("lora-section").hidden = adapters.length === 0;
  $("lora-scales").replaceChildren(...adapters.map((adapter, i) => {
    const field = document.createElement("div");
    field.className = "field";
    const label = document.createElement("label");
    label.htmlFor = `lora-scale-${i}`;
    label.textContent = `Scale of ${adapter.name}`;
    const input = document.createElement("input");
    Object.assign(input, {id: `lora-scale-${i}`, type: "number", step: "0.05", value: adapter.scale});
    input.dataset.adapter = adapter.name;
    field.append(label, input);
    return field;
  }));
}

function readFileAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function integerField(id, what) {
  const value = Number($(id).value);
  if (!Number.isInteger(value)) throw new Error(`${what} must be a whole number, got "${$(id).value}"`);
  return value;
}

// The request body of the form's settings; an Error naming the bad field before anything is sent.
async function requestBody() {
  const prompt = $("prompt").value.trim();
  if (!prompt) throw new Error("Enter a prompt");
  const body = {
    prompt,
    negative_prompt: $("negative-prompt").value,
    size: $("size").value,
    n: integerField("num-images", "Number of images"),
    num_inference_steps: integerField("steps", "Steps"),
    guidance_scale: Number($("guidance").value),
    scheduler: $("sampler").value,
    seed: $("random-seed").checked ? null : integerField("seed", "Seed"),
    response_format: "b64_json",
    stream: true,
  };
  if (config.lora.length) body.lora_scales = loraScales();
  if (config.controlnet) Object.assign(body, await controlFields());
  return body;
}

function loraScales() {
  const scales = {};
  for (const input of $("lora-scales").querySelectorAll("input")) scales[input.dataset.adapter] = Number(input.value);
  return scales;
}

async function controlFields() {
  const file = $("control-image").files[0];
  if (!file) return {};
  if (file.size > config.limits.max_upload_bytes) {
    throw new Error(`Control image ${file.name} is ${file.size} bytes; the server takes at most ` +
                    `${config.limits.max_upload_bytes}`);
  }
  return {control_image: await readFileAsDataUrl(file), control: $("control-mode").value};
}

// Server-sent events from a fetch body: calls onEvent(name, data) per event, blank-line separated.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), {stream: !done});
    // A "\r" at a chunk's end may be the first half of "\r\n": keep it until the next chunk says.
    const held = !done && buffer.endsWith("\r") ? "\r" : "";
    buffer = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      parseEvent(buffer.slice(0, end), onEvent);
      buffer = buffer.slice(end + 2);
    }
    buffer += held;
    if (done) break;
  }
  if (buffer.trim()) parseEvent(buffer, onEvent);
}

function parseEvent(block, onEvent) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;  // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) onEvent(name, JSON.parse(data.join("\n")));
}

function showProgress(step, steps) {
  $("progress").max = steps;
  $("progress").value = step;
  $("progress-text").textContent = `Step ${step} of ${steps}`;
}

function showPreview(b64) {
  $("preview").src = `data:image/png;base64,${b64}`;
  $("preview").hidden = false;
}

function pngUrl(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], {type: "image/png"}));
  objectUrls.push(url);
  return url;
}

function settingsList(settings) {
  const list = document.createElement("dl");
  list.className = "settings";
  for (const [key, value] of Object.entries(settings)) {
    if (key === "control_image" || value === null || value === undefined) continue;
    const term = document.createElement("dt");
    term.textContent = key;
    const detail = document.createElement("dd");
    detail.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    list.append(term, detail);
  }
  return list;
}

function resultFigure(item, index, answer) {
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.id = `result-${index}`;
  const url = pngUrl(item.b64_json);
  const image = document.createElement("img");
  Object.assign(image, {src: url, alt: `Generated image ${index + 1}, seed ${item.seed}`});
  image.className = "result-image";
  const caption = document.createElement("figcaption");
  const seed = document.createElement("p");
  seed.className = "result-seed";
  seed.textContent = `Seed ${item.seed}`;
  const link = document.createElement("a");
  // n images of one request share its seed: the index tells them apart
  const suffix = answer.data.length > 1 ? `-${index + 1}` : "";
  Object.assign(link, {href: url, download: `pixart-seed-${item.seed}${suffix}.png`, textContent: "Download PNG"});
  link.className = "download";
  caption.append(seed, link, settingsList(answer.settings));
  figure.append(image, caption);
  return figure;
}

function showResult(answer) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  $("results").replaceChildren(...answer.data.map((item, i) => resultFigure(item, i, answer)));
  $("progress").value = $("progress").max;
  $("progress-text").textContent = `Done: ${answer.data.length} image(s)`;
  $("preview").hidden = true;
}

async function streamGeneration(body, signal) {
  const response = await fetch("/v1/images/generations", {
    method: "POST",
    headers: {"Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders()},
    body: JSON.stringify(body),
    signal,
  });
  if (response.status === 401) return askForKey(await errorMessage(response));
  if (!response.ok) return showError(await errorMessage(response));
  let finished = false;
  await readEvents(response, (name, data) => {
    if (name === "progress") {
      showProgress(data.step, data.steps);
      if (data.preview) showPreview(data.preview);
    } else if (name === "result") {
      finished = true;
      showResult(data);
    } else if (name === "error") {
      finished = true;
      showError((data.error && data.error.message) || "The server reported an error");
    }
  });
  if (!finished) showError("The server closed the stream before sending a result");
}

function setRunning(controller) {
  running = controller;
  $("generate").disabled = Boolean(controller);
  $("cancel").hidden = !controller;
}

async function generate(event) {
  event.preventDefault();
  if (running || !config) return;
  showError("");
  const controller = new AbortController();
  setRunning(controller);
  showProgress(0, 1);
  $("progress-text").textContent = "Waiting for the server…";
  try {
    await streamGeneration(await requestBody(), controller.signal);
  } catch (error) {
    showError(error.name === "AbortError" ? "Cancelled" : error.message);
  } finally {
    setRunning(null);
  }
}

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadConfig().catch(showConfigError);
  });
  $("random-seed").addEventListener("change", () => { $("seed").disabled = $("random-seed").checked; });
  $("generate-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => running && running.abort());
  loadConfig().catch(showConfigError);
}

function showConfigError(error) {
  showError(`Could not read the server's configuration: ${error.message}`);
}

document.addEventListener("DOMContentLoaded", init);
