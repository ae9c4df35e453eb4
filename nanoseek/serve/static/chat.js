// The nanoseek chat page: streams answers from /v1/chat/completions (Server-Sent Events), shows the
// reasoning (delta.reasoning_content) in a block that is open while it streams and folds when the answer
// starts, and keeps the conversation and settings in localStorage. No build step, nothing from other hosts.
"use strict";

const STORE = "nanoseek.chat.v1";
const SETTINGS = "nanoseek.settings.v1";
const $ = (id) => document.getElementById(id);

let convo = load(STORE, {messages: []});
let settings = load(SETTINGS, {temperature: 0.7, maxTokens: 512, system: "", apiKey: ""});
let modelId = null;
let controller = null; // the AbortController of the answer being streamed
let saveTimer = null;

function load(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v && typeof v === "object" ? {...fallback, ...v} : fallback;
  } catch (e) {
    return fallback;
  }
}

function save(now) {
  clearTimeout(saveTimer);
  const write = () => {
    try { localStorage.setItem(STORE, JSON.stringify(convo)); } catch (e) { /* storage full or disabled */ }
  };
  if (now) write(); else saveTimer = setTimeout(write, 300);
}

function saveSettings() {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

function headers() {
  const h = {"Content-Type": "application/json"};
  if (settings.apiKey) h.Authorization = `Bearer ${settings.apiKey}`;
  return h;
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

// ---- rendering ------------------------------------------------------------------------------------------
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render() {
  const box = $("messages");
  box.replaceChildren();
  if (!convo.messages.length) box.append(el("p", "empty", "Ask something."));
  convo.messages.forEach((m, i) => box.append(m.role === "user" ? userView(m, i) : assistantView(m, i)));
  box.scrollTop = box.scrollHeight;
  const busy = controller !== null;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

function userView(m, i) {
  const div = el("div", "msg user");
  div.dataset.index = i;
  const role = el("div", "role", "you");
  const edit = el("button", "link edit", "edit");
  edit.type = "button";
  edit.disabled = controller !== null;
  edit.onclick = () => startEdit(div, i);
  role.append(edit);
  div.append(role, el("div", "content", m.content));
  return div;
}

function assistantView(m, i) {
  const div = el("div", "msg assistant");
  div.dataset.index = i;
  const role = el("div", "role", "nanoseek");
  const last = i === convo.messages.length - 1;
  if (last && !m.streaming) {
    const again = el("button", "link regenerate", "regenerate");
    again.type = "button";
    again.onclick = regenerate;
    role.append(again);
  }
  const details = el("details", "reasoning");
  details.append(el("summary"), el("div", "thoughts"));
  details.open = !!m.streaming && !m.content; // open while the reasoning streams, folded once the answer starts
  div.append(role, details, el("div", "content"), el("div", "stats"), el("div", "error"));
  div._folded = !details.open;
  fill(div, m);
  return div;
}

// Update an assistant message's view in place (called for every streamed delta).
function fill(div, m) {
  const details = div.querySelector("details.reasoning");
  details.hidden = !m.reasoning;
  details.querySelector(".thoughts").textContent = m.reasoning || "";
  const thinking = m.streaming && !m.content;
  details.querySelector("summary").textContent = thinking ? "Thinking…"
    : `Reasoning${m.reasoningSeconds ? ` (${m.reasoningSeconds.toFixed(1)} s)` : ""}`;
  if (m.content && !div._folded) { // the answer has started: fold the reasoning, once
    details.open = false;
    div._folded = true;
  }
  const content = div.querySelector(".content");
  if (m.content || m.streaming || m.stopped || m.error) content.innerHTML = window.renderMarkdown(m.content || "");
  else content.replaceChildren(el("p", "note", m.finish === "length"
    ? `(no answer: max tokens reached${m.reasoning ? " while reasoning" : ""}; raise Max tokens in Settings)`
    : "(the model ended without an answer)"));
  div.querySelector(".stats").textContent = m.stats || (m.streaming ? "…" : "");
  div.querySelector(".error").textContent = m.error || "";
}

function currentAssistantView() {
  const views = $("messages").querySelectorAll(".msg.assistant");
  return views[views.length - 1];
}

// ---- editing ----------------------------------------------------------------------------------------------
function startEdit(div, i) {
  if (controller) return;
  const box = el("div", "edit-box");
  const area = el("textarea");
  area.value = convo.messages[i].content;
  area.rows = Math.min(12, area.value.split("\n").length + 1);
  const row = el("div", "row");
  const ok = el("button", "save-send", "Save & send");
  const cancel = el("button", "cancel", "Cancel");
  ok.type = cancel.type = "button";
  ok.onclick = () => {
    const text = area.value.trim();
    if (!text) return;
    convo.messages = convo.messages.slice(0, i); // later turns belonged to the old message
    convo.messages.push({role: "user", content: text});
    save(true);
    answer();
  };
  cancel.onclick = render;
  row.append(ok, cancel);
  box.append(area, row);
  div.querySelector(".content").replaceWith(box);
  area.focus();
}

function regenerate() {
  if (controller) return;
  while (convo.messages.length && convo.messages[convo.messages.length - 1].role === "assistant") convo.messages.pop();
  if (convo.messages.length) answer();
}

// ---- talking to the server ----------------------------------------------------------------------------------
function requestMessages() {
  const out = [];
  if (settings.system.trim()) out.push({role: "system", content: settings.system});
  for (const m of convo.messages) {
    if (m.role === "user") out.push({role: "user", content: m.content});
    else if (!m.error || m.content) out.push({role: "assistant", content: m.content || ""}); // reasoning is not sent back
  }
  return out;
}

async function answer() {
  const m = {role: "assistant", content: "", reasoning: "", streaming: true};
  const body = {
    model: modelId || undefined, messages: requestMessages(), stream: true, stream_options: {include_usage: true},
    temperature: Number(settings.temperature), max_tokens: Number(settings.maxTokens) || undefined,
  };
  convo.messages.push(m);
  controller = new AbortController();
  render();
  const view = currentAssistantView();
  const t0 = performance.now();
  let tFirst = null, tThinkEnd = null, usage = null, pieces = 0, finish = null;
  let pending = false;
  const paint = () => { // at most once per frame, however fast tokens arrive
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; fill(view, m); $("messages").scrollTop = $("messages").scrollHeight; });
  };
  try {
    const res = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify(body),
      signal: controller.signal});
    if (!res.ok) {
      let msg = `${res.status} ${res.statusText}`;
      try { msg = (await res.json()).error.message || msg; } catch (e) { /* not JSON */ }
      if (res.status === 401) msg += " (set the API key in Settings)";
      throw new Error(msg);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder(); // one decoder with {stream: true}: a character may span two reads
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) { // an event may span reads: keep the unfinished tail
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          for (const c of chunk.choices || []) {
            const d = c.delta || {};
            if (d.reasoning_content) { m.reasoning += d.reasoning_content; pieces++; }
            if (d.content) {
              if (!m.content && m.reasoning) tThinkEnd = performance.now();
              m.content += d.content;
              pieces++;
            }
            if ((d.content || d.reasoning_content) && tFirst === null) tFirst = performance.now();
            if (c.finish_reason) finish = c.finish_reason;
          }
          paint();
          save(false);
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") m.stopped = true;
    else m.error = String(e.message || e);
  } finally {
    const t1 = performance.now();
    m.streaming = false;
    if (tThinkEnd && tFirst !== null) m.reasoningSeconds = (tThinkEnd - tFirst) / 1000;
    const tokens = usage ? usage.completion_tokens : pieces;
    const approx = usage ? "" : "~";
    const gen = tFirst === null ? 0 : (t1 - tFirst) / 1000;
    const parts = [`${approx}${tokens} tokens`];
    if (gen > 0 && tokens > 1) parts.push(`${approx}${((tokens - 1) / gen).toFixed(1)} tok/s`);
    if (tFirst !== null) parts.push(`first token ${((tFirst - t0) / 1000).toFixed(2)} s`);
    m.finish = finish;
    if (m.stopped) parts.push("stopped");
    else if (finish === "length") parts.push("max tokens reached");
    m.stats = parts.join(" · ");
    controller = null;
    save(true);
    render();
  }
}

function send() {
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  convo.messages.push({role: "user", content: text});
  save(true);
  answer();
}

// ---- wiring -------------------------------------------------------------------------------------------------
function bindSettings() {
  const bind = (id, key, parse) => {
    const input = $(id);
    input.value = settings[key];
    input.addEventListener("change", () => { settings[key] = parse(input.value); saveSettings(); });
  };
  bind("temperature", "temperature", (v) => Math.min(2, Math.max(0, Number(v) || 0)));
  bind("max-tokens", "maxTokens", (v) => Math.max(1, Math.floor(Number(v)) || 512));
  bind("system", "system", String);
  bind("api-key", "apiKey", (v) => v.trim());
  $("api-key").addEventListener("change", fetchModel);
  $("settings-toggle").onclick = () => {
    const open = $("settings").hidden;
    $("settings").hidden = !open;
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  };
}

async function fetchModel() {
  try {
    const res = await fetch("/v1/models", {headers: headers()});
    if (res.status === 401) { notice("This server needs an API key: set it in Settings."); return; }
    const data = await res.json();
    modelId = data.data[0].id;
    $("model").textContent = modelId;
    notice("");
  } catch (e) {
    notice("The server does not answer.");
  }
}

function start() {
  for (const m of convo.messages) { // reloaded while an answer was streaming: it ended there
    if (m.streaming) { m.streaming = false; m.stopped = true; m.stats = m.stats || "interrupted"; }
  }
  bindSettings();
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").onclick = () => { if (controller) controller.abort(); };
  $("clear").onclick = () => {
    if (controller) controller.abort();
    convo = {messages: []};
    save(true);
    render();
  };
  render();
  fetchModel();
}

document.addEventListener("DOMContentLoaded", start);
