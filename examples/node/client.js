#!/usr/bin/env node
// Calling whybert from Node.js: Predict and Explain, straight from the .proto file.
//
//   npm ci
//   node client.js --target localhost:50051 "the food was great" "the service was slow"
//   node client.js --json --explainer lime "the food was great"
//
// No generated code: @grpc/proto-loader reads protos/whybert/v1/explainer.proto at start-up,
// so this file keeps working as fields are added to the contract.
"use strict";

const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const PROTO_FILE = "whybert/v1/explainer.proto";
const EXPLAINERS = {
  "shap-partition": "EXPLAINER_KIND_SHAP_PARTITION",
  lime: "EXPLAINER_KIND_LIME",
  "integrated-gradients": "EXPLAINER_KIND_INTEGRATED_GRADIENTS",
};
const USAGE = `usage: node client.js [--target HOST:PORT] [--model NAME] [--explainer NAME]
                      [--max-evals N] [--timeout SECONDS] [--json] TEXT...`;

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: "string", default: process.env.WHYBERT_TARGET || "localhost:50051" },
      model: { type: "string", default: "" },
      explainer: { type: "string", default: "shap-partition" },
      "max-evals": { type: "string" },
      timeout: { type: "string", default: "120" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!(values.explainer in EXPLAINERS)) {
    throw new Error(`--explainer must be one of ${Object.keys(EXPLAINERS).join(", ")}`);
  }
  const texts = positionals.length ? positionals : ["the food was great", "the service was slow"];
  return { ...values, texts };
}

// The Explainer service's client class, built from the .proto at run time.
function loadExplainer() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto: base_values, not baseValues
    longs: Number, // uint64 model_rows as a number
    enums: String, // enum values by name: "EXPLAINER_KIND_LIME"
    defaults: true, // unset fields with their proto3 defaults
  });
  return grpc.loadPackageDefinition(definition).whybert.v1.Explainer;
}

// One unary call as a promise, with a deadline like every whybert client sets.
function call(client, method, request, timeoutSeconds) {
  const deadline = new Date(Date.now() + timeoutSeconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// TextExplanation.values is row-major (tokens × labels); give each token its row.
function tokenRows(explanation) {
  const width = Math.max(explanation.labels.length, 1);
  return explanation.tokens.map((token, i) => ({
    text: token.text,
    start: token.start,
    end: token.end,
    special: token.special,
    values: explanation.values.slice(i * width, (i + 1) * width),
  }));
}

function summarise(text, explanation) {
  const tokens = tokenRows(explanation).filter((t) => !t.special);
  const top = [...tokens].sort((a, b) => Math.abs(b.values[0]) - Math.abs(a.values[0])).slice(0, 5);
  return {
    text,
    label: explanation.prediction.label,
    labels: explanation.labels,
    base_values: explanation.base_values,
    output_values: explanation.output_values,
    tokens: tokenRows(explanation),
    top: top.map((t) => ({ token: t.text.trim(), value: t.values[0] })),
    model_rows: explanation.model_rows,
  };
}

function printHuman(predictResponse, explainResponse, texts) {
  console.log(`model: ${predictResponse.model}`);
  predictResponse.predictions.forEach((p, i) => {
    const scores = p.scores.map((s) => `${s.label} ${s.probability.toFixed(3)}`).join(", ");
    console.log(`predict  ${JSON.stringify(texts[i])}: ${p.label} (${scores})`);
  });
  explainResponse.explanations.forEach((e, i) => {
    const s = summarise(texts[i], e);
    const top = s.top.map((t) => `${t.token} ${t.value >= 0 ? "+" : ""}${t.value.toFixed(4)}`);
    console.log(`explain  ${JSON.stringify(texts[i])}: why ${s.labels[0]}: ${top.join(", ")}`);
  });
}

async function main() {
  const options = parseCommandLine(process.argv.slice(2));
  const Explainer = loadExplainer();
  const client = new Explainer(options.target, grpc.credentials.createInsecure());
  const timeout = Number(options.timeout);
  try {
    const predicted = await call(client, "Predict", { model: options.model, texts: options.texts }, timeout);
    const request = { model: options.model, texts: options.texts, explainer: EXPLAINERS[options.explainer] };
    if (options["max-evals"] !== undefined) request.shap = { max_evals: Number(options["max-evals"]) };
    const explained = await call(client, "Explain", request, timeout);
    if (options.json) {
      const out = {
        model: predicted.model,
        predictions: predicted.predictions.map((p, i) => ({
          text: options.texts[i],
          label: p.label,
          scores: Object.fromEntries(p.scores.map((s) => [s.label, s.probability])),
        })),
        explanations: explained.explanations.map((e, i) => summarise(options.texts[i], e)),
      };
      console.log(JSON.stringify(out, null, 2));
    } else {
      printHuman(predicted, explained, options.texts);
    }
  } finally {
    client.close();
  }
}

main().catch((err) => {
  // gRPC errors carry a status code and the server's message.
  const code = err.code !== undefined ? `${grpc.status[err.code]}: ` : "";
  console.error(`error: ${code}${err.details || err.message}`);
  process.exit(1);
});
