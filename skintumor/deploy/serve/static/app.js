// skintumor serve: the page. Plain JavaScript, no libraries, nothing from the internet.
// Every text that comes from a file or the server is put on the page with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "skintumor-token";
const PARALLEL = 2; // requests in flight at once (one file each, so results appear as they come)
const METRICS = [
  ["bal_acc", "Balanced accuracy"],
  ["auroc_macro", "AUROC (macro)"],
  ["acc", "Accuracy"],
  ["f1_macro", "F1 (macro)"],
  ["sens_macro", "Sensitivity (macro)"],
  ["spec_macro", "Specificity (macro)"],
  ["ece", "Calibration error (ECE)"],
];

const state = { model: null, classes: [], rows: [], queue: [], running: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function detailOf(body, response) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return `${response.status} ${response.statusText || "error"}`;
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message}); is skintumor serve still running?`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken(detailOf(body, response));
    throw new ApiError(401, detailOf(body, response));
  }
  return { response, body };
}

function showError(message) {
  const box = el("div", "error-line");
  box.append(el("strong", null, "Error: "), document.createTextNode(message));
  const close = el("button", "link", "dismiss");
  close.type = "button";
  close.addEventListener("click", () => box.remove());
  box.append(close);
  $("errors").append(box);
}

function askToken(message) {
  const form = $("token-form");
  form.hidden = false;
  if (message && sessionStorage.getItem(TOKEN_KEY) === null && form.dataset.asked) showError(message);
  form.dataset.asked = "1";
  $("token").focus();
}

// ------------------------------------------------------------------ the model panel

async function loadModel() {
  let reply;
  try {
    reply = await api("/api/model");
  } catch (err) {
    if (err.status !== 401) showError(err.message);
    return;
  }
  if (!reply.response.ok) {
    showError(detailOf(reply.body, reply.response));
    return;
  }
  $("token-form").hidden = true;
  state.model = reply.body;
  state.classes = reply.body.classes;
  renderModel(reply.body);
}

function renderModel(meta) {
  const members = meta.members || [];
  const size = (meta.preprocessing || {}).image_size;
  $("model-line").textContent =
    `${meta.classes.join(" · ")} — ${members.length} member${members.length === 1 ? "" : "s"}, ` +
    `input ${size} × ${size} px`;
  const limits = meta.serve || {};
  if (limits.max_upload_mb) {
    $("limits").textContent =
      `Up to ${limits.max_upload_mb} MB and ${(limits.max_pixels / 1e6).toLocaleString()} megapixels per file.`;
  }
  const software = meta.software || {};
  $("software").textContent =
    `skintumor ${software.skintumor || "?"}` + (meta.created ? ` · model exported ${meta.created.slice(0, 10)}` : "");

  const body = $("model-body");
  body.replaceChildren();
  const data = meta.training_data || {};
  body.append(el("h3", null, "Classes and training data"));
  const classes = el("table", "compact");
  const head = el("tr");
  head.append(el("th", null, "Class"), el("th", "num", "Training images"));
  classes.append(head);
  for (const name of meta.classes) {
    const row = el("tr");
    const count = (data.images_per_class || {})[name];
    row.append(el("td", null, name), el("td", "num", count ?? "—"));
    classes.append(row);
  }
  body.append(classes);
  if (data.images) {
    body.append(el("p", "muted small", `${data.images} images of ${data.patients} patients in all.`));
  }

  body.append(el("h3", null, "Cross-validation (95 % CI)"));
  body.append(cvTable(meta.cross_validation));

  body.append(el("h3", null, "Decision rule"));
  const decision = meta.decision || {};
  const rules = el("ul", "plain");
  rules.append(
    el(
      "li",
      null,
      decision.rule === "balanced"
        ? "Balanced: per-class offsets (chosen on validation data) shift the probabilities; the predicted class is the most probable after them."
        : "The most probable class is predicted.",
    ),
  );
  if (decision.tta === "hflip") rules.append(el("li", null, "Each scan is also read mirrored left–right; the two readings are averaged."));
  rules.append(
    el(
      "li",
      null,
      members.length > 1
        ? `Ensemble of ${members.length} models (${members.map((m) => m.name).join(", ")}): their probabilities are averaged; the spread is their standard deviation.`
        : "A single model: there is no ensemble spread.",
    ),
  );
  body.append(rules);

  if (meta.intended_use) {
    body.append(el("h3", null, "Intended use"));
    body.append(el("p", "small", meta.intended_use));
  }
}

function cvTable(cv) {
  if (!cv || !cv.image || !cv.image.pooled) {
    return el(
      "p",
      "muted small",
      "No cross-validation metrics in this bundle (exported from a single run, not a sweep). Check it on your own scans before relying on it.",
    );
  }
  const wrap = el("div");
  const table = el("table", "compact");
  const head = el("tr");
  head.append(el("th", null, "Metric"), el("th", "num", "Per image"), el("th", "num", "Per patient"));
  table.append(head);
  const cell = (level, key) => {
    const m = ((cv[level] || {}).pooled || {})[key];
    if (!m || m.value === null || m.value === undefined) return el("td", "num", "—");
    const td = el("td", "num", m.value.toFixed(3));
    if (m.ci_low !== null && m.ci_high !== null) td.append(el("span", "ci", ` [${m.ci_low.toFixed(2)}, ${m.ci_high.toFixed(2)}]`));
    return td;
  };
  for (const [key, label] of METRICS) {
    if (!(key in cv.image.pooled)) continue;
    const row = el("tr");
    row.append(el("td", null, label), cell("image", key), cell("patient", key));
    table.append(row);
  }
  wrap.append(table);
  const folds = (cv.folds_used || []).length;
  wrap.append(
    el("p", "muted small", `${cv.n_images} images of ${cv.n_patients} patients, ${folds} folds; patient-bootstrap intervals.`),
  );
  return wrap;
}

// ------------------------------------------------------------------ uploads

function addFiles(files) {
  for (const file of files) {
    const card = pendingCard(file.name);
    state.queue.push({ file, card });
  }
  pump();
}

function pump() {
  while (state.running < PARALLEL && state.queue.length) {
    const job = state.queue.shift();
    state.running += 1;
    predict(job).finally(() => {
      state.running -= 1;
      pump();
    });
  }
}

async function predict({ file, card }) {
  const form = new FormData();
  form.append("files", file, file.name);
  const cam = $("cam").checked;
  let reply;
  try {
    reply = await api(`/api/predict?cam=${cam}`, { method: "POST", body: form });
  } catch (err) {
    const row = { filename: file.name, status: "error", code: err.status, message: err.message };
    fillError(card, row);
    addRow(row);
    return;
  }
  const result = reply.body && reply.body.results && reply.body.results[0];
  const row = result || {
    filename: file.name,
    status: "error",
    code: reply.response.status,
    message: detailOf(reply.body, reply.response),
  };
  if (row.status === "ok") fillResult(card, row);
  else fillError(card, row);
  addRow(row);
}

// ------------------------------------------------------------------ one result

function pendingCard(name) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = name;
  card.querySelector(".pred").textContent = "Analysing…";
  card.querySelector(".pred").classList.add("pending");
  card.classList.add("is-pending");
  $("results").prepend(card);
  return card;
}

function fillError(card, row) {
  card.classList.remove("is-pending");
  card.classList.add("is-error");
  const badge = card.querySelector(".pred");
  badge.className = "badge error";
  badge.textContent = row.code ? `Not predicted (${row.code})` : "Not predicted";
  const body = card.querySelector(".result-body");
  body.replaceChildren(el("p", "error-text", row.message || "unknown error"));
}

function fillResult(card, row) {
  card.classList.remove("is-pending");
  card.dataset.pred = row.pred;
  const badge = card.querySelector(".pred");
  badge.className = "badge pred";
  badge.textContent = `Predicted: ${row.pred}`;
  if (row.sets) badge.title = `Cannot be ruled out: ${row.sets.set_90} (90 % coverage); ${row.sets.set_95} (95 %)`;

  const canvas = card.querySelector("canvas");
  const slider = card.querySelector("input[type=range]");
  const scan = new Image();
  const overlay = row.overlay ? new Image() : null;
  const draw = () => {
    if (!scan.complete || (overlay && !overlay.complete)) return;
    canvas.width = scan.naturalWidth;
    canvas.height = scan.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.drawImage(scan, 0, 0);
    if (overlay) {
      // alpha * map + (1 - alpha) * scan: overlay_image's own blend, done here so the slider is instant
      ctx.globalAlpha = Number(slider.value);
      ctx.drawImage(overlay, 0, 0);
    }
    canvas.dataset.ready = "1";
  };
  scan.onload = draw;
  scan.src = row.image;
  if (overlay) {
    slider.value = row.overlay_uniform ? 0 : row.overlay_alpha ?? 0.45;
    card.querySelector(".uniform").hidden = !row.overlay_uniform;
    overlay.onload = draw;
    overlay.src = row.overlay;
    slider.addEventListener("input", draw);
    canvas.setAttribute("aria-label", `scan ${row.filename} with its explanation map`);
  } else {
    card.querySelector("figcaption").hidden = true;
    canvas.setAttribute("aria-label", `scan ${row.filename}`);
  }

  const bars = card.querySelector(".bars");
  const members = state.model ? (state.model.members || []).length : 1;
  for (const name of state.classes.length ? state.classes : Object.keys(row.probs)) {
    const p = row.probs[name];
    const line = el("div", "bar-row" + (name === row.pred ? " is-top" : ""));
    line.dataset.class = name;
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    line.append(el("span", "class-name", name), track, el("span", "prob", p.toFixed(3)));
    if (members > 1) line.append(el("span", "sd", `± ${row.spread[name].toFixed(3)}`));
    bars.append(line);
  }
  const spread = Math.max(...Object.values(row.spread));
  card.querySelector(".agreement").textContent =
    members > 1
      ? `Agreement of the ${members} ensemble members: largest spread (SD of a class probability) ${spread.toFixed(3)}; 0 means they all give the same probabilities.`
      : "A single model: no ensemble spread to show.";
  card.querySelector(".size").textContent = `Scan ${row.width} × ${row.height} px.`;
}

// ------------------------------------------------------------------ batch table and CSV

function addRow(row) {
  state.rows.push(row);
  const section = $("batch");
  section.hidden = state.rows.length < 2;
  $("batch-count").textContent = `(${state.rows.length} files)`;
  const thead = section.querySelector("thead");
  if (!thead.firstChild) {
    const head = el("tr");
    head.append(el("th", null, "File"), el("th", null, "Predicted"));
    for (const name of state.classes) head.append(el("th", "num", `p(${name})`));
    head.append(el("th", "num", "Spread"), el("th", null, "Note"));
    thead.append(head);
  }
  const tr = el("tr", row.status === "ok" ? null : "is-error");
  tr.append(el("td", "file", row.filename), el("td", null, row.status === "ok" ? row.pred : "not predicted"));
  for (const name of state.classes) {
    tr.append(el("td", "num", row.status === "ok" ? row.probs[name].toFixed(3) : ""));
  }
  const members = state.model ? (state.model.members || []).length : 1;
  const spread = row.status === "ok" && members > 1 ? Math.max(...Object.values(row.spread)).toFixed(3) : "—";
  tr.append(el("td", "num", spread), el("td", "note", row.message || ""));
  section.querySelector("tbody").append(tr);
}

function csvCell(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`; // a spreadsheet must not run a file name as a formula
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv() {
  const classes = state.classes;
  const header = ["filename", "status", "pred", ...classes.map((c) => `p_${c}`), ...classes.map((c) => `sd_${c}`), "message"];
  const lines = [header.map(csvCell).join(",")];
  for (const row of state.rows) {
    const ok = row.status === "ok";
    const values = [
      row.filename,
      row.status,
      ok ? row.pred : "",
      ...classes.map((c) => (ok ? row.probs[c].toFixed(6) : "")),
      ...classes.map((c) => (ok ? row.spread[c].toFixed(6) : "")),
      row.message || "",
    ];
    lines.push(values.map(csvCell).join(","));
  }
  const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
  const link = el("a");
  link.href = URL.createObjectURL(blob);
  link.download = `skintumor_predictions_${new Date().toISOString().slice(0, 19).replace(/[T:]/g, "-")}.csv`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function clearAll() {
  state.rows = [];
  $("results").replaceChildren();
  $("batch").querySelector("tbody").replaceChildren();
  $("batch").hidden = true;
  $("errors").replaceChildren();
}

// ------------------------------------------------------------------ wiring

function wire() {
  const drop = $("drop");
  const input = $("files");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";
  });
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(Array.from(event.dataTransfer.files));
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  // a file dropped next to the zone must not make the browser leave the page
  for (const kind of ["dragover", "drop"]) window.addEventListener(kind, (event) => event.preventDefault());
  $("csv").addEventListener("click", downloadCsv);
  $("clear").addEventListener("click", clearAll);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    loadModel();
  });
}

wire();
loadModel();
