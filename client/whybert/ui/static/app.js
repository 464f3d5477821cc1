// The whybert page: fill the form from api/models, send texts to api/explain, show the
// highlighted explanations the server renders (the same HTML as `whybert explain --html`).
"use strict";

// The budget option of each explainer: request field, its name on the page, the default.
const BUDGETS = {
  "shap-partition": ["max_evals", "Max evals", 500],
  lime: ["num_samples", "Samples", 5000],
  "integrated-gradients": ["n_steps", "Steps", 50],
};

const $ = (id) => document.getElementById(id);
let models = [];
let inFlight = null;

function option(value, text, selected = false) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  o.selected = selected;
  return o;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModels() {
  const response = await fetch("api/models");
  const body = await response.json();
  if (!response.ok) throw new Error(describeError(body));
  models = body.models;
  $("server").textContent = `server ${body.target}`;
  $("model").replaceChildren(...models.map((m) => option(m.name, m.name, m.is_default)));
  onModelChange();
}

function currentModel() {
  return models.find((m) => m.name === $("model").value);
}

function onModelChange() {
  const model = currentModel();
  if (!model) return;
  const chosen = $("explainer").value;
  $("explainer").replaceChildren(...model.explainers.map((e) => option(e, e, e === chosen)));
  $("targets").replaceChildren(
    option("predicted", "the predicted label", true),
    option("all", "every label"),
    ...model.labels.map((label) => option(label, `label ${label}`)),
  );
  onExplainerChange();
}

function onExplainerChange() {
  const budget = BUDGETS[$("explainer").value];
  $("budget-field").hidden = !budget;
  if (budget) {
    $("budget-name").textContent = budget[1];
    $("budget").placeholder = String(budget[2]);
  }
}

function onCompareChange() {
  const two = $("compare").checked;
  $("text-b-field").hidden = !two;
  $("texts").classList.toggle("two", two);
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

function request() {
  const texts = [$("text-a").value];
  if ($("compare").checked) texts.push($("text-b").value);
  const body = {
    texts,
    model: $("model").value,
    explainer: $("explainer").value,
    targets: $("targets").value,
    output: $("output").value,
  };
  const budget = BUDGETS[body.explainer];
  if (budget && $("budget").value !== "") body[budget[0]] = Number($("budget").value);
  return body;
}

async function explain(event) {
  event.preventDefault();
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  const body = request();
  const started = performance.now();
  showError("");
  $("submit").disabled = true;
  $("status").textContent = "explaining…";
  try {
    const response = await fetch("api/explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    const data = await response.json();
    if (!response.ok) throw new Error(describeError(data));
    $("results").innerHTML = data.html;
    $("results").classList.toggle("two", body.texts.length > 1);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    $("status").textContent = `${body.texts.length} text(s) explained in ${seconds} s`;
  } catch (err) {
    if (err.name === "AbortError") return;
    $("status").textContent = "";
    showError(err.message);
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      $("submit").disabled = false;
    }
  }
}

function start() {
  $("model").addEventListener("change", onModelChange);
  $("explainer").addEventListener("change", onExplainerChange);
  $("compare").addEventListener("change", onCompareChange);
  $("explain-form").addEventListener("submit", explain);
  // Ctrl+Enter (Cmd+Enter) in a text box explains.
  for (const id of ["text-a", "text-b"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("explain-form").requestSubmit();
    });
  }
  loadModels().catch((err) => {
    $("server").textContent = "server unreachable";
    showError(err.message);
  });
}

start();
