// The whybert page. One text: fill the form from api/models, send texts to api/explain and
// show the explanations the server renders (the same HTML as `whybert explain --html`), or
// three explainers side by side (api/compare), or a SHAP explanation refining live
// (api/explain/progressive, one JSON line per refinement). The form follows the model's
// kind: a token-classification model's entities come first (api/predict), each underlined
// with its type, and a click explains that entity; a text-pair model takes a pair text too,
// and its explanation shows one row per text. A dataset: upload a CSV (api/datasets), run it
// as a job (api/jobs, polled), then metrics, confusion matrix, rows and the words that drive
// each label. Numbers that are not finite arrive as the strings "NaN", "Infinity",
// "-Infinity" and are shown as nan, +inf, -inf. Text from the user or the server goes in as
// text (textContent, attributes), never as HTML; the one HTML inserted is the server's
// rendering, which escapes every text in it.
"use strict";

// The budget option of each explainer: request field, its name on the page, the default.
const BUDGETS = {
  "shap-partition": ["max_evals", "Max evals", 500],
  lime: ["num_samples", "Samples", 5000],
  "integrated-gradients": ["n_steps", "Steps", 50],
};
const NAMES = {
  "shap-partition": "SHAP",
  lime: "LIME",
  "integrated-gradients": "Integrated gradients",
  attention: "Attention rollout",
};
// Entity types' colours: the usual four, then others by a hash of the type's name.
const ENTITY_COLOURS = new Map([
  ["PER", "#d81b60"],
  ["ORG", "#1e88e5"],
  ["LOC", "#2e7d32"],
  ["MISC", "#8e24aa"],
]);
const MORE_COLOURS = ["#ef6c00", "#00838f", "#6d4c41", "#5e35b1", "#9e9d24", "#546e7a"];
const POLL_MS = 250;
const ROWS_SHOWN = 500; // table rows rendered at a time ("Show more" adds as many)
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let models = [];
let limits = {};
let inFlight = null;
let entityView = null; // {model, predictions}: the texts whose entities are shown

// ---- small helpers ------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function option(value, text, selected = false) {
  const o = el("option", { value, text });
  o.selected = selected;
  return o;
}

// A number from the API: plain, or one of the strings "NaN", "Infinity", "-Infinity".
function num(value) {
  return typeof value === "string" ? Number(value) : value;
}

function fmt(value, digits = 3) {
  const x = num(value);
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "+inf" : "-inf";
  return x.toFixed(digits);
}

// A figure's cell: shown rounded, its exact value in data-value (what tests and copy read).
function figure(tag, value, digits = 3) {
  return el(tag, { "data-value": String(num(value)), text: fmt(value, digits) });
}

function describeError(body) {
  const error = (body && body.error) || {};
  const lines = [`${error.code || "ERROR"}: ${error.message || "the request failed"}`];
  for (const [field, description] of error.field_violations || []) {
    const line = `${field}: ${description}`;
    if (!lines[0].includes(line)) lines.push(`  ${line}`);
  }
  return lines.join("\n");
}

function showError(id, message) {
  $(id).textContent = message;
  $(id).hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    if (response.ok) throw new Error(`${path}: the page's server answered something that is not JSON`);
  }
  if (!response.ok) throw new Error(describeError(body || { error: { message: `HTTP ${response.status}` } }));
  return body;
}

function postJSON(path, body, signal) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

function wait(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function size(bytes) {
  if (bytes < 1e3) return `${bytes} bytes`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

// ---- the model and explainer controls ----------------------------------------------------

async function loadModels() {
  const body = await api("api/models");
  models = body.models;
  limits = body.limits || {};
  $("server").textContent = `server ${body.target}`;
  $("model").replaceChildren(...models.map((m) => option(m.name, m.name, m.is_default)));
  // The dataset mode scores one label per text (or pair): not for entity models.
  const labelled = models.filter((m) => kindOf(m) !== "token");
  $("dataset-model").replaceChildren(...labelled.map((m) => option(m.name, m.name, m.is_default)));
  $("live-field").hidden = !limits.progressive;
  onModelChange();
  onDatasetModelChange();
}

function modelNamed(name) {
  return models.find((m) => m.name === name);
}

// "sequence", "token" (entities) or "text-pair"; a server older than model kinds: sequence.
function kindOf(model) {
  return (model && model.kind) || "sequence";
}

function chosenKind() {
  return kindOf(modelNamed($("model").value));
}

function onModelChange() {
  const model = modelNamed($("model").value);
  if (!model) return;
  const kind = kindOf(model);
  const chosen = $("explainer").value;
  $("explainer").replaceChildren(...model.explainers.map((e) => option(e, e, e === chosen)));
  if (kind === "token") {
    // An entity's explanation explains its type, nothing else: no choice to offer.
    $("targets").replaceChildren(option("predicted", "the entity's type", true));
  } else {
    $("targets").replaceChildren(
      option("predicted", "the predicted label", true),
      option("all", "every label"),
      ...model.labels.map((label) => option(label, `label ${label}`)),
    );
  }
  $("targets-field").hidden = kind === "token";
  $("pair-field").hidden = kind !== "text-pair";
  // Two pairs would need four boxes: comparing is for single texts and entity models.
  $("compare-field").hidden = kind === "text-pair";
  if (kind === "text-pair") $("compare").checked = false;
  $("submit").textContent = kind === "token" ? "Find entities" : "Explain";
  clearEntities();
  onModeChange();
}

function onExplainerChange() {
  const budget = BUDGETS[$("explainer").value];
  const side = $("side-by-side").checked;
  $("budget-field").hidden = !budget || side;
  $("explainer-field").hidden = side;
  $("side-budgets").hidden = !side;
  $("interval-field").hidden = !$("live").checked;
  if (budget) {
    $("budget-name").textContent = budget[1];
    $("budget").placeholder = String(budget[2]);
  }
  if ($("live").checked && $("explainer").value !== "shap-partition") $("explainer").value = "shap-partition";
}

// The three ways of explaining one text are exclusive: checking one unchecks the others.
function onModeChange(event) {
  if (event && event.target.checked) {
    for (const box of document.querySelectorAll("input.mode")) if (box !== event.target) box.checked = false;
  }
  const two = $("compare").checked;
  $("text-b-field").hidden = !two;
  $("texts").classList.toggle("two", two || !$("pair-field").hidden);
  if ($("live").checked) $("explainer").value = "shap-partition";
  onExplainerChange();
}

function onTab(event) {
  const dataset = event.target.id === "tab-dataset";
  $("text-mode").hidden = dataset;
  $("dataset-mode").hidden = !dataset;
  $("tab-text").setAttribute("aria-selected", String(!dataset));
  $("tab-dataset").setAttribute("aria-selected", String(dataset));
}

function budgetValue(input) {
  return input.value === "" ? undefined : Number(input.value);
}

// ---- one text ----------------------------------------------------------------------------

// The explainer, labels, output space and budget chosen in the form.
function explainOptions() {
  const body = { explainer: $("explainer").value, targets: $("targets").value, output: $("output").value };
  const budget = BUDGETS[body.explainer];
  if (budget && $("budget").value !== "") body[budget[0]] = Number($("budget").value);
  return body;
}

// The pair text of a text-pair model, as one text's request field; nothing for other models.
function pairOf(field = "pair") {
  return chosenKind() === "text-pair" ? { [field]: $("text-pair").value } : {};
}

function formTexts() {
  const texts = [$("text-a").value];
  if ($("compare").checked) texts.push($("text-b").value);
  return texts;
}

function request() {
  const texts = formTexts();
  const body = { texts, model: $("model").value, ...explainOptions() };
  if (chosenKind() === "text-pair") body.pairs = texts.map(() => $("text-pair").value);
  return body;
}

// The results cleared; `heading` ({text, entity, textIndex}) names the entity explained next.
function clearResults(heading = null) {
  $("results").replaceChildren();
  delete $("results").dataset.final;
  delete $("results").dataset.evals;
  $("side").hidden = true;
  $("panels").replaceChildren();
  $("agreement").tBodies[0].replaceChildren();
  const title = $("entity-title");
  title.textContent = heading ? heading.text : "";
  title.hidden = !heading;
  if (heading) {
    title.dataset.entity = String(heading.entity);
    title.dataset.text = String(heading.textIndex);
  } else {
    delete title.dataset.entity;
    delete title.dataset.text;
  }
}

// A text pair's explanation, as the server renders it (the text, a separator, the pair text
// in one paragraph), is shown as two rows, one per text, each marked with its segment (0: the
// text, 1: the pair text): the rendering's own rows where it has them (.wb-segment), else its
// nodes moved into two (never re-parsed).
function pairRows(container) {
  for (const paragraph of container.querySelectorAll(".wb-text")) {
    const separator = paragraph.querySelector(":scope > .wb-pair-sep");
    if (!separator) continue;
    const own = paragraph.querySelectorAll(":scope > .wb-segment[data-segment]");
    if (own.length === 2) {
      for (const row of own) row.classList.add("wb-pair-row");
      continue;
    }
    const rows = ["0", "1"].map((segment) => el("span", { class: "wb-pair-row", "data-segment": segment }));
    let row = rows[0];
    for (const node of [...paragraph.childNodes]) {
      if (node === separator) row = rows[1];
      else row.append(node);
    }
    paragraph.replaceChildren(...rows);
  }
}

// Show the server's rendering (its texts escaped by whybert.render) in `node`.
function showHTML(node, html) {
  node.innerHTML = html;
  pairRows(node);
}

// Run one request of the one-text form: a request still going is aborted; errors shown.
async function run(statusText, task) {
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  const started = performance.now();
  const seconds = () => ((performance.now() - started) / 1000).toFixed(1);
  showError("error", "");
  $("submit").disabled = true;
  $("status").textContent = statusText;
  try {
    await task(controller.signal, seconds);
  } catch (err) {
    if (err.name === "AbortError") return;
    $("status").textContent = "";
    showError("error", err.message);
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      $("submit").disabled = false;
    }
  }
}

function explain(event) {
  event.preventDefault();
  if (chosenKind() === "token") return run("finding entities…", findEntities);
  clearEntities();
  return run("explaining…", async (signal, seconds) => {
    const one = { text: $("text-a").value, ...pairOf() };
    if ($("side-by-side").checked) await sideBySide(signal, seconds, one);
    else if ($("live").checked) await refineLive(signal, seconds, one);
    else {
      const body = request();
      await plainExplain(signal, body);
      $("status").textContent = `${body.texts.length} text(s) explained in ${seconds()} s`;
    }
  });
}

async function plainExplain(signal, body, heading = null) {
  const data = await postJSON("api/explain", body, signal);
  clearResults(heading);
  showHTML($("results"), data.html);
  $("results").classList.toggle("two", body.texts.length > 1);
  return data;
}

// ---- entities (token-classification models) ----------------------------------------------

function entityColour(label) {
  if (ENTITY_COLOURS.has(label)) return ENTITY_COLOURS.get(label);
  let hash = 0;
  for (const c of label) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return MORE_COLOURS[hash % MORE_COLOURS.length];
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function clearEntities() {
  entityView = null;
  $("entities").replaceChildren();
  $("entities").hidden = true;
}

async function findEntities(signal, seconds) {
  const texts = formTexts();
  const model = $("model").value;
  const data = await postJSON("api/predict", { texts, model }, signal);
  clearResults();
  entityView = { model, predictions: data.predictions };
  $("entities").replaceChildren(...data.predictions.map((p, t) => entityText(p, t, texts.length)));
  $("entities").hidden = false;
  const found = data.predictions.reduce((n, p) => n + p.entities.length, 0);
  $("status").textContent = found
    ? `${plural(found, "entity", "entities")} found in ${seconds()} s: click one to see why the model found it`
    : `no entities found (${seconds()} s)`;
}

// One text with each entity underlined in its type's colour, its type after it, its type
// and score in its title; a button that explains it. Offsets count code points.
function entityText(prediction, t, count) {
  const chars = Array.from(prediction.text);
  const line = el("p", { class: "entity-text" });
  let cursor = 0;
  prediction.entities.forEach((entity, i) => {
    if (entity.start < cursor || entity.end <= entity.start || entity.end > chars.length) return;
    line.append(chars.slice(cursor, entity.start).join(""));
    const button = el(
      "button",
      {
        type: "button",
        class: "entity",
        "data-index": String(i),
        "data-label": entity.label,
        "data-start": String(entity.start),
        "data-end": String(entity.end),
        "data-score": String(num(entity.score)),
        "aria-pressed": "false",
        title: `${entity.label} · score ${fmt(entity.score)} · click to see why`,
      },
      el("span", { class: "entity-span", text: chars.slice(entity.start, entity.end).join("") }),
      el("span", { class: "entity-type", text: entity.label }),
    );
    button.style.setProperty("--entity", entityColour(entity.label));
    button.addEventListener("click", () => explainEntity(t, i));
    line.append(button);
    cursor = entity.end;
  });
  line.append(chars.slice(cursor).join(""));
  const types = new Map();
  for (const entity of prediction.entities) types.set(entity.label, (types.get(entity.label) || 0) + 1);
  const which = count > 1 ? `Text ${t + 1}: ` : "";
  const found = prediction.entities.length;
  const caption = found
    ? `${which}${plural(found, "entity", "entities")} (` +
      [...types].map(([label, n]) => `${label} ${n}`).join(", ") +
      ") · click one to see why the model found it"
    : `${which}no entities found`;
  const section = el(
    "section",
    { class: "entity-view", "data-text": String(t) },
    el("p", { class: "entity-caption muted", text: caption }),
    line,
  );
  if (prediction.truncated) {
    section.append(
      el("p", {
        class: "muted",
        text: `the text is longer than the model reads: it read the first ${prediction.token_count} tokens; no entity is found after them`,
      }),
    );
  }
  return section;
}

// Explain entity i of text t, in the way the form says (one explainer, side by side, live).
function explainEntity(t, i) {
  if (!entityView) return;
  const { model, predictions } = entityView;
  const prediction = predictions[t];
  const entity = prediction.entities[i];
  for (const button of document.querySelectorAll("#entities button.entity")) {
    const on = button.closest(".entity-view").dataset.text === String(t) && button.dataset.index === String(i);
    button.classList.toggle("selected", on);
    button.setAttribute("aria-pressed", String(on));
  }
  const way = $("side-by-side").checked
    ? "explainers side by side"
    : $("live").checked
      ? "SHAP, refining live"
      : NAMES[$("explainer").value] || $("explainer").value;
  const where = predictions.length > 1 ? ` in text ${t + 1}` : "";
  const heading = {
    text:
      `Why “${entity.text}” is ${entity.label}: entity ${i + 1} of ${prediction.entities.length}${where}, ` +
      `score ${fmt(entity.score)} · ${way}`,
    entity: i,
    textIndex: t,
  };
  const one = { text: prediction.text, entity: i };
  return run(`explaining “${entity.text}”…`, async (signal, seconds) => {
    if ($("side-by-side").checked) await sideBySide(signal, seconds, one, model, heading);
    else if ($("live").checked) await refineLive(signal, seconds, one, model, heading);
    else {
      await plainExplain(signal, { texts: [prediction.text], model, entity: i, ...explainOptions() }, heading);
      $("status").textContent = `entity explained in ${seconds()} s`;
    }
  });
}

// `one`: {text} and a pair model's {pair}, or a token model's {entity}.
async function sideBySide(signal, seconds, one, model = $("model").value, heading = null) {
  const body = {
    ...one,
    model,
    targets: $("targets").value,
    output: $("output").value,
    max_evals: budgetValue($("sbs-max-evals")),
    num_samples: budgetValue($("sbs-num-samples")),
    n_steps: budgetValue($("sbs-n-steps")),
  };
  const data = await postJSON("api/compare", body, signal);
  clearResults(heading);
  $("results").classList.remove("two");
  $("agreement-caption").textContent =
    `How alike the explainers rank the text's words for “${data.label}”: Spearman's rank correlation ` +
    `of the word values, and the share of the top ${data.k} words (by |value|) they have in common.`;
  $("overlap-head").textContent = `top-${data.k} overlap`;
  $("agreement").tBodies[0].replaceChildren(
    ...data.agreement.map((pair) =>
      el(
        "tr",
        { "data-a": pair.a, "data-b": pair.b },
        el("th", { text: `${NAMES[pair.a] || pair.a} · ${NAMES[pair.b] || pair.b}` }),
        figure("td", pair.spearman),
        figure("td", pair.top_k_overlap, 2),
      ),
    ),
  );
  $("panels").replaceChildren(
    ...data.panels.map((panel) => {
      const section = el("section", { class: "panel", "data-explainer": panel.explainer });
      section.append(el("h3", { text: NAMES[panel.explainer] || panel.explainer }));
      section.insertAdjacentHTML("beforeend", panel.html);
      pairRows(section);
      return section;
    }),
  );
  $("side").hidden = false;
  $("status").textContent = `${data.panels.length} explainers in ${seconds()} s`;
}

// Read a response of JSON lines, calling `onLine` with each as it arrives.
async function readLines(response, onLine) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, end).trim();
      buffered = buffered.slice(end + 1);
      if (line) onLine(JSON.parse(line));
    }
    if (done) return;
  }
}

async function refineLive(signal, seconds, one, model = $("model").value, heading = null) {
  const body = {
    ...one,
    model,
    targets: $("targets").value,
    output: $("output").value,
    max_evals: budgetValue($("budget")),
    interval: budgetValue($("interval")),
  };
  const response = await fetch("api/explain/progressive", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw new Error(describeError(await response.json().catch(() => null)));
  clearResults(heading);
  $("results").classList.remove("two");
  let failure = null;
  await readLines(response, (message) => {
    if (message.error) {
      failure = describeError(message);
      return;
    }
    const results = $("results");
    results.dataset.evals = String(message.evals);
    results.dataset.final = String(message.final);
    showHTML(results, message.html);
    $("status").textContent = message.final
      ? `final: ${message.evals} model evaluations, ${seconds()} s`
      : `refining… ${message.evals} model evaluations so far`;
  });
  if (failure) throw new Error(failure);
}

// ---- a dataset ---------------------------------------------------------------------------

const dataset = {
  info: null, // the uploaded file: {id, name, columns, rows, preview}
  job: null, // the predict job running or shown
  corpusJob: null,
  result: null, // the predict job's result
  pairs: null, // a pair model's pair texts, one per row
  rows: [], // [{row, text, pair, label, predicted, correct, confidence}]
  sort: { key: "row", descending: false },
  cell: null, // {truth, predicted}: the confusion-matrix cell the table is filtered to
  shown: ROWS_SHOWN,
};
const runningJobs = new Set();

function guessColumn(columns, names, fallback) {
  const lower = columns.map((c) => c.toLowerCase());
  for (const name of names) {
    const i = lower.indexOf(name);
    if (i >= 0) return columns[i];
  }
  return columns[Math.min(fallback, columns.length - 1)];
}

async function onFile() {
  const file = $("dataset-file").files[0];
  showError("dataset-error", "");
  $("columns").hidden = true;
  $("dataset-info").textContent = "";
  if (!file) return;
  const most = limits.max_dataset_bytes;
  if (most && file.size > most) {
    showError(
      "dataset-error",
      `${file.name} is ${size(file.size)}: this page takes files of at most ${size(most)} ` +
        "(start it with a larger --max-dataset-bytes, or split the file)",
    );
    return;
  }
  $("dataset-info").textContent = `reading ${file.name}…`;
  try {
    const info = await api(`api/datasets?name=${encodeURIComponent(file.name)}`, {
      method: "POST",
      headers: { "Content-Type": "text/csv" },
      body: file,
    });
    dataset.info = info;
    $("dataset-info").textContent =
      `${info.name}: ${info.rows} rows, ${size(info.bytes)}; columns ${info.columns.join(", ")}`;
    const text = guessColumn(info.columns, ["text", "sentence", "review", "content", "tweet"], 0);
    const label = guessColumn(info.columns, ["label", "labels", "class", "target", "sentiment"], 1);
    const pair = guessColumn(
      info.columns,
      ["pair", "pair_text", "text_pair", "text_b", "sentence2", "hypothesis", "question2"],
      2,
    );
    $("text-column").replaceChildren(...info.columns.map((c) => option(c, c, c === text)));
    $("label-column").replaceChildren(...info.columns.map((c) => option(c, c, c === label)));
    $("pair-column").replaceChildren(...info.columns.map((c) => option(c, c, c === pair)));
    $("columns").hidden = false;
  } catch (err) {
    $("dataset-info").textContent = "";
    showError("dataset-error", err.message);
  }
}

function onDatasetModelChange() {
  const model = modelNamed($("dataset-model").value);
  if (!model) return;
  $("pair-column-field").hidden = kindOf(model) !== "text-pair";
  const chosen = $("corpus-explainer").value || "shap-partition";
  $("corpus-explainer").replaceChildren(...model.explainers.map((e) => option(e, e, e === chosen)));
  onCorpusExplainerChange();
}

function onCorpusExplainerChange() {
  const budget = BUDGETS[$("corpus-explainer").value];
  if (!budget) return;
  $("corpus-budget-name").textContent = budget[1];
  $("corpus-budget").placeholder = String(budget[2]);
}

function corpusOptions() {
  const explainer = $("corpus-explainer").value;
  const options = { explainer };
  const budget = BUDGETS[explainer];
  if (budget && $("corpus-budget").value !== "") options[budget[0]] = Number($("corpus-budget").value);
  return options;
}

// Poll a job until it ends, calling `onStatus` with each status; the final status back.
async function follow(status, onStatus) {
  runningJobs.add(status.id);
  try {
    onStatus(status);
    while (status.state === "running") {
      await wait(POLL_MS);
      status = await api(`api/jobs/${status.id}`);
      onStatus(status);
    }
    return status;
  } finally {
    runningJobs.delete(status.id);
  }
}

function cancelJob(job) {
  if (job) fetch(`api/jobs/${job}`, { method: "DELETE" }).catch(() => {});
}

function progressText(status, what) {
  const parts = [`${status.done} of ${status.total} ${what}`, `${status.seconds.toFixed(1)} s`];
  if (status.kind === "predict" && status.done) {
    parts.push(`accuracy so far ${fmt(status.detail.correct / status.done)}`);
  }
  if (status.state !== "running") parts.unshift(status.state);
  return parts.join(" · ");
}

async function runDataset() {
  showError("dataset-error", "");
  cancelJob(dataset.job);
  cancelJob(dataset.corpusJob);
  dataset.corpusJob = null;
  $("dataset-results").hidden = true;
  $("run-dataset").disabled = true;
  try {
    const body = {
      kind: "predict",
      dataset: dataset.info && dataset.info.id,
      text_column: $("text-column").value,
      label_column: $("label-column").value,
      model: $("dataset-model").value,
    };
    // A pair model reads each row's text with its pair text; other models take none.
    if (kindOf(modelNamed(body.model)) === "text-pair") body.pair_column = $("pair-column").value;
    const started = await postJSON("api/jobs", body);
    dataset.job = started.id;
    $("job").hidden = false;
    $("cancel-job").hidden = false;
    const status = await follow(started, (s) => {
      if (dataset.job !== s.id) return;
      $("job-progress").max = Math.max(s.total, 1);
      $("job-progress").value = s.done;
      $("job-status").textContent = progressText(s, "rows");
    });
    if (dataset.job !== status.id) return;
    if (status.state === "failed") throw new Error(describeError(status));
    if (status.state === "done") {
      const { result } = await api(`api/jobs/${status.id}/result`);
      if (dataset.job === status.id) showDataset(result);
    }
  } catch (err) {
    showError("dataset-error", err.message);
  } finally {
    $("run-dataset").disabled = false;
    $("cancel-job").hidden = true;
  }
}

function showDataset(result) {
  dataset.result = result;
  dataset.pairs = result.pairs || null;
  dataset.rows = result.rows.map(([text, label, predicted, confidence], i) => ({
    row: i + 1,
    text,
    pair: dataset.pairs ? dataset.pairs[i] : null,
    label,
    predicted,
    correct: label === predicted,
    confidence: num(confidence),
  }));
  dataset.cell = null;
  dataset.shown = ROWS_SHOWN;
  showMetrics(result.metrics);
  showConfusion(result.metrics);
  $("corpus-charts").replaceChildren();
  $("corpus-job").hidden = true;
  $("row-explanation-section").hidden = true;
  $("sample-size").max = String(limits.max_explain_rows || 500);
  $("pair-head").hidden = !dataset.pairs;
  $("dataset-results").hidden = false;
  renderRows();
}

function showMetrics(metrics) {
  $("accuracy").replaceChildren(figure("span", metrics.accuracy));
  $("accuracy").dataset.value = String(num(metrics.accuracy));
  $("metrics-note").textContent =
    `${metrics.rows} rows, ${metrics.misclassified} wrong` +
    (metrics.truncated ? `, ${metrics.truncated} longer than the model reads` : "");
  const names = [...metrics.labels, "macro avg", "weighted avg"];
  $("report").tBodies[0].replaceChildren(
    ...names.map((name) => {
      const r = metrics.report[name];
      return el(
        "tr",
        { "data-label": name, class: name.endsWith(" avg") ? "average" : "" },
        el("th", { text: name }),
        figure("td", r.precision),
        figure("td", r.recall),
        figure("td", r["f1-score"]),
        el("td", { "data-value": String(r.support), text: String(r.support) }),
      );
    }),
  );
}

function showConfusion(metrics) {
  const labels = metrics.labels;
  const matrix = metrics.confusion_matrix;
  const head = el("tr", {}, el("th", { class: "corner", text: "true \\ predicted" }));
  for (const label of labels) head.append(el("th", { text: label }));
  const body = labels.map((truth, i) => {
    const most = Math.max(1, ...matrix[i]);
    const tr = el("tr", {}, el("th", { text: truth }));
    labels.forEach((predicted, j) => {
      const count = matrix[i][j];
      const button = el("button", {
        type: "button",
        class: `cell${i === j ? " diagonal" : ""}`,
        "data-true": truth,
        "data-predicted": predicted,
        "data-value": String(count),
        title: `${count} row(s) of true label ${truth} predicted ${predicted}`,
        text: String(count),
      });
      const strength = count / most;
      const colour = i === j ? "46, 125, 50" : "198, 40, 40";
      button.style.background = `rgba(${colour}, ${(0.08 + 0.5 * strength).toFixed(3)})`;
      button.addEventListener("click", () => filterToCell(truth, predicted));
      tr.append(el("td", {}, button));
    });
    return tr;
  });
  $("confusion").replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function filterToCell(truth, predicted) {
  dataset.cell = { truth, predicted };
  dataset.shown = ROWS_SHOWN;
  $("correct-filter").value = "all";
  for (const b of document.querySelectorAll("#confusion button.cell")) {
    b.classList.toggle("selected", b.dataset.true === truth && b.dataset.predicted === predicted);
  }
  renderRows();
}

function clearCell() {
  dataset.cell = null;
  for (const b of document.querySelectorAll("#confusion button.cell.selected")) b.classList.remove("selected");
  renderRows();
}

function filteredRows() {
  const needle = $("row-filter").value.trim().toLowerCase();
  const which = $("correct-filter").value;
  const cell = dataset.cell;
  const rows = dataset.rows.filter(
    (r) =>
      (!needle || r.text.toLowerCase().includes(needle) || (r.pair || "").toLowerCase().includes(needle)) &&
      (which === "all" || (which === "correct") === r.correct) &&
      (!cell || (r.label === cell.truth && r.predicted === cell.predicted)),
  );
  const { key, descending } = dataset.sort;
  const sign = descending ? -1 : 1;
  const value = (r) => (key === "correct" ? Number(r.correct) : r[key]);
  rows.sort((a, b) => {
    const x = value(a);
    const y = value(b);
    // NaN sorts last whichever the direction.
    if (typeof x === "number" && typeof y === "number" && (Number.isNaN(x) || Number.isNaN(y))) {
      return Number.isNaN(x) - Number.isNaN(y) || a.row - b.row;
    }
    if (x < y) return -sign;
    if (x > y) return sign;
    return a.row - b.row;
  });
  return rows;
}

function renderRows() {
  const rows = filteredRows();
  const shown = rows.slice(0, dataset.shown);
  $("rows").tBodies[0].replaceChildren(
    ...shown.map((r) => {
      const tr = el(
        "tr",
        { "data-row": String(r.row), class: r.correct ? "correct" : "wrong" },
        el("td", { class: "num", text: String(r.row) }),
        el("td", { class: "text", text: r.text, title: r.text }),
        ...(dataset.pairs ? [el("td", { class: "text pair", text: r.pair, title: r.pair })] : []),
        el("td", { text: r.label }),
        el("td", { text: r.predicted }),
        el("td", { class: "mark", text: r.correct ? "✓" : "✗" }),
        figure("td", r.confidence),
      );
      tr.addEventListener("click", () => explainRow(r, tr));
      return tr;
    }),
  );
  const cell = dataset.cell;
  $("cell-filter").hidden = !cell;
  if (cell) $("cell-filter-text").textContent = `true ${cell.truth} · predicted ${cell.predicted}`;
  $("row-count").textContent =
    rows.length > shown.length ? `showing ${shown.length} of ${rows.length} rows` : `${rows.length} rows`;
  $("more-rows").hidden = rows.length <= shown.length;
  for (const th of document.querySelectorAll("#rows th[data-key]")) {
    const sorted = th.dataset.key === dataset.sort.key;
    th.setAttribute("aria-sort", sorted ? (dataset.sort.descending ? "descending" : "ascending") : "none");
  }
}

function onSort(event) {
  const key = event.target.closest("th[data-key]")?.dataset.key;
  if (!key) return;
  const same = dataset.sort.key === key;
  dataset.sort = { key, descending: same ? !dataset.sort.descending : key === "confidence" };
  renderRows();
}

let rowRequest = null;

async function explainRow(row, tr) {
  for (const other of document.querySelectorAll("#rows tr.selected")) other.classList.remove("selected");
  tr.classList.add("selected");
  if (rowRequest) rowRequest.abort();
  const controller = new AbortController();
  rowRequest = controller;
  $("row-explanation-section").hidden = false;
  $("row-explanation-title").textContent = `${row.row}: true ${row.label}, predicted ${row.predicted}`;
  $("row-explanation-status").textContent = "explaining…";
  $("row-explanation").replaceChildren();
  try {
    const { explainer, ...options } = corpusOptions();
    const body = { texts: [row.text], model: dataset.result.metrics.model, explainer, targets: "predicted", ...options };
    if (row.pair !== null) body.pairs = [row.pair];
    const data = await postJSON("api/explain", body, controller.signal);
    showHTML($("row-explanation"), data.html);
    $("row-explanation").dataset.row = String(row.row);
    $("row-explanation-status").textContent = "";
  } catch (err) {
    if (err.name !== "AbortError") $("row-explanation-status").textContent = err.message;
  }
}

async function explainSample() {
  showError("corpus-error", "");
  cancelJob(dataset.corpusJob);
  $("explain-sample").disabled = true;
  try {
    const size = Number($("sample-size").value) || 50;
    const started = await postJSON("api/jobs", {
      kind: "explain",
      source: dataset.job,
      sample: Math.min(size, limits.max_explain_rows || size),
      ...corpusOptions(),
    });
    dataset.corpusJob = started.id;
    $("corpus-job").hidden = false;
    $("cancel-corpus").hidden = false;
    $("corpus-charts").replaceChildren();
    const status = await follow(started, (s) => {
      if (dataset.corpusJob !== s.id) return;
      $("corpus-progress").max = Math.max(s.total, 1);
      $("corpus-progress").value = s.done;
      $("corpus-status").textContent = progressText(s, "rows explained");
    });
    if (dataset.corpusJob !== status.id) return;
    if (status.state === "failed") throw new Error(describeError(status));
    if (status.state === "done") {
      const { result } = await api(`api/jobs/${status.id}/result`);
      if (dataset.corpusJob === status.id) showCorpus(result);
    }
  } catch (err) {
    showError("corpus-error", err.message);
  } finally {
    $("explain-sample").disabled = false;
    $("cancel-corpus").hidden = true;
  }
}

// One horizontal bar chart per label: its words by mean |value| over the explained rows,
// red where the word raises the label on average, blue where it lowers it.
function showCorpus(result) {
  const charts = result.labels.map((label) => {
    const words = result.top[label];
    const width = 380;
    const left = 120;
    const row = 22;
    const finite = words.map((w) => num(w.mean_abs)).filter(Number.isFinite);
    const most = Math.max(1e-12, ...finite);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(1, words.length) * row + 4}`);
    svg.setAttribute("width", String(width));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `the words that drive ${label}`);
    words.forEach((w, i) => {
      const value = num(w.mean_abs);
      const length = Number.isFinite(value) ? (value / most) * (width - left - 60) : width - left - 60;
      const y = i * row + 2;
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", "bar");
      g.setAttribute("data-word", w.word);
      g.setAttribute("data-value", String(value));
      const name = document.createElementNS(SVG, "text");
      name.setAttribute("x", String(left - 6));
      name.setAttribute("y", String(y + row / 2 + 4));
      name.setAttribute("text-anchor", "end");
      name.textContent = w.word;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", String(left));
      rect.setAttribute("y", String(y + 3));
      rect.setAttribute("width", String(Math.max(1, length)));
      rect.setAttribute("height", String(row - 6));
      rect.setAttribute("rx", "2");
      const mean = num(w.mean);
      rect.setAttribute("class", Number.isNaN(mean) ? "nan" : mean > 0 ? "raises" : "lowers");
      const figureText = document.createElementNS(SVG, "text");
      figureText.setAttribute("x", String(left + Math.max(1, length) + 4));
      figureText.setAttribute("y", String(y + row / 2 + 4));
      figureText.setAttribute("class", "figure");
      figureText.textContent = fmt(value, 3);
      const title = document.createElementNS(SVG, "title");
      title.textContent =
        `${w.word}: mean |value| ${fmt(value, 4)}, mean ${fmt(mean, 4)}; ` + `${w.count} times in ${w.texts} texts`;
      g.append(title, name, rect, figureText);
      svg.append(g);
    });
    const texts = result.explanations[label];
    return el(
      "figure",
      { class: "corpus-chart", "data-label": label },
      el("figcaption", { text: `${label} · ${texts} text(s), ${result.explainer}, ${result.output}` }),
      svg,
    );
  });
  $("corpus-charts").replaceChildren(...charts);
}

// ---- start -------------------------------------------------------------------------------

function start() {
  $("model").addEventListener("change", onModelChange);
  $("explainer").addEventListener("change", onExplainerChange);
  for (const box of document.querySelectorAll("input.mode")) box.addEventListener("change", onModeChange);
  $("explain-form").addEventListener("submit", explain);
  // Ctrl+Enter (Cmd+Enter) in a text box explains.
  for (const id of ["text-a", "text-b", "text-pair"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("explain-form").requestSubmit();
    });
  }
  $("tab-text").addEventListener("click", onTab);
  $("tab-dataset").addEventListener("click", onTab);
  $("dataset-file").addEventListener("change", onFile);
  $("dataset-model").addEventListener("change", onDatasetModelChange);
  $("corpus-explainer").addEventListener("change", onCorpusExplainerChange);
  $("run-dataset").addEventListener("click", runDataset);
  $("cancel-job").addEventListener("click", () => cancelJob(dataset.job));
  $("explain-sample").addEventListener("click", explainSample);
  $("cancel-corpus").addEventListener("click", () => cancelJob(dataset.corpusJob));
  $("row-filter").addEventListener("input", () => {
    dataset.shown = ROWS_SHOWN;
    renderRows();
  });
  $("correct-filter").addEventListener("change", renderRows);
  $("clear-cell").addEventListener("click", clearCell);
  $("more-rows").addEventListener("click", () => {
    dataset.shown += ROWS_SHOWN;
    renderRows();
  });
  $("rows").tHead.addEventListener("click", onSort);
  // Leaving the page cancels its jobs (the server also cancels jobs nobody polls).
  window.addEventListener("pagehide", () => {
    for (const job of runningJobs) fetch(`api/jobs/${job}`, { method: "DELETE", keepalive: true }).catch(() => {});
  });
  loadModels().catch((err) => {
    $("server").textContent = "server unreachable";
    showError("error", err.message);
  });
}

start();
