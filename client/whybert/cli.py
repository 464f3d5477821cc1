"""The `whybert` command: talk to a server (predict, explain, evaluate, explain-corpus, models,
health, ui) or, with the server extra installed, run one (serve, train, export-model)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._client import Client
from ._core import DEFAULT_TARGET, DEFAULT_TIMEOUT, TLSConfig
from ._exceptions import WhybertError
from ._types import EXPLAINER_KINDS, OUTPUT_SPACES, Explanation, Prediction
from .render import (
    _wants_colour,
    prediction_terminal,
    print_terminal,
    write_html,
    write_png,
    write_prediction_png,
    write_predictions_html,
)

if TYPE_CHECKING:
    from .corpus import CorpusResult
    from .evaluation import Evaluation

SERVER_COMMANDS = ("serve", "train", "export-model")
STREAM_HELP = "one call for all the texts; print one JSON line per text (with its index) as each is ready"
PAIR_COLUMN_HELP = (
    "text-pair models: the column of each row's second text (default: pair); a single-text model's "
    "file must have none"
)
SERVER_HINT = (
    "'whybert {cmd}' needs the server parts, which are not installed here.\n"
    "Install them with:  pip install \"whybert[server]\"   (training also needs \"whybert[train]\")"
)


def _seconds(value: str) -> float:
    """A positive, finite number of seconds (a deadline of 0 or less fails every call)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: give a positive number of seconds")
    return seconds


def _client_options(parser: argparse.ArgumentParser, json_output: bool = True) -> None:
    parser.add_argument(
        "--target",
        action="append",
        default=None,
        help="server address host:port; repeat for round-robin over replicas "
        f"[env WHYBERT_TARGET, comma-separated; default {DEFAULT_TARGET}]",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT, help=f"seconds per call (default {DEFAULT_TIMEOUT:g})"
    )
    parser.add_argument("--token", default=None, help="bearer token [env WHYBERT_TOKEN]")
    parser.add_argument(
        "--tls", action="store_true", help="use TLS, trusting the system's root CAs (implied by --tls-ca)"
    )
    parser.add_argument("--tls-ca", default=None, help="PEM CA that signed the server: use TLS")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default=None, help="PEM client key (mutual TLS)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _make_client(args: argparse.Namespace) -> Client:
    targets = args.target or [
        t.strip() for t in os.environ.get("WHYBERT_TARGET", DEFAULT_TARGET).split(",") if t.strip()
    ]
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = TLSConfig(ca_cert=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key)
    return Client(targets, timeout=args.timeout, token=args.token or os.environ.get("WHYBERT_TOKEN"), tls=tls)


def _prediction_json(text: str, p: Prediction) -> dict[str, Any]:
    out: dict[str, Any] = {"text": text, "label": p.label, "scores": p.scores, "truncated": p.truncated}
    if p.entities:
        out["entities"] = [vars(e) for e in p.entities]
    return out


def _print_entities(texts: Sequence[str], predictions: Sequence[Prediction]) -> None:
    """A token model's predictions: each text with its entities marked, then one line per
    entity (span, type, score)."""
    colour = _wants_colour(sys.stdout)
    for text, p in zip(texts, predictions, strict=True):
        print(prediction_terminal(text, p, colour=colour))


def parse_entity(value: str | None) -> int | tuple[int, int] | str | None:
    """`--entity`: an index (0), a span (START:END) or `all`."""
    if value is None or value == "all":
        return value
    start, colon, end = value.partition(":")
    try:
        return (int(start), int(end)) if colon else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--entity takes an index, START:END or all, not {value!r}") from None


def _explanation_json(e: Explanation) -> dict[str, Any]:
    return {
        "text": e.text,
        "explainer": e.explainer,
        "output": e.output,
        "labels": e.labels,
        "tokens": e.tokens,
        "offsets": e.offsets,
        "special": e.special,
        "values": e.values.tolist(),
        "base_values": e.base_values.tolist(),
        "output_values": e.output_values.tolist(),
        # NaN (the attention explainer: not applicable) is not JSON: null.
        "additivity_error": None if math.isnan(e.additivity_error) else e.additivity_error,
        "prediction": _prediction_json(e.text, e.prediction),
        "model_rows": e.model_rows,
        "queue_seconds": e.queue_seconds,
        "compute_seconds": e.compute_seconds,
        "cached": e.cached,
        "convergence_delta": None if e.convergence_delta is None else e.convergence_delta.tolist(),
        "faithfulness": None if e.faithfulness is None else vars(e.faithfulness),
        **({} if e.pair is None else {"pair": e.pair, "segments": e.segments}),
        **(
            {}
            if e.entity is None
            else {"entity": vars(e.entity), "entity_index": e.entity_index, "text_index": e.text_index}
        ),
        **({} if e.explainer != "attention" else {"attention_position": e.attention_position}),
        **(
            {}
            if e.attention is None
            else {
                "attention": {
                    "layers": e.attention.layers,
                    "heads": e.attention.heads,
                    "weights": e.attention.weights.tolist(),  # [layer][head][query][key]
                }
            }
        ),
    }


def _print_line(item: dict[str, Any]) -> None:
    """One JSON line, flushed: a reader of the pipe sees each result as it arrives."""
    print(json.dumps(item), flush=True)


def _shown_texts(args: argparse.Namespace) -> list[str]:
    """The inputs as the tables show them: a pair's two texts joined by ` ‖ `."""
    pairs = getattr(args, "pair", None)
    if not pairs:
        return list(args.texts)
    return [f"{t} ‖ {p}" for t, p in zip(args.texts, pairs, strict=False)]


def cmd_predict(args: argparse.Namespace) -> int:
    _check_outputs(args.html, args.png)
    pairs = getattr(args, "pair", None)
    if args.stream:
        if args.html or args.png:
            raise ValueError("--stream prints one JSON line per text; the pictures need the whole batch")
        with _make_client(args) as client:
            for index, p in client.predict_stream(args.texts, model=args.model, pairs=pairs):
                item = _prediction_json(args.texts[index], p)
                _print_line({"index": index, **item, **({"pair": pairs[index]} if pairs else {})})
        return 0
    with _make_client(args) as client:
        predictions = client.predict(args.texts, model=args.model, pairs=pairs)
    if args.json:
        items = [_prediction_json(t, p) for t, p in zip(args.texts, predictions, strict=True)]
        for i, item in enumerate(items):
            if pairs:
                item["pair"] = pairs[i]
        print(json.dumps(items, indent=2))
    elif any(p.entities for p in predictions) or all(not p.scores for p in predictions):  # a token model
        _print_entities(args.texts, predictions)
    else:
        _print_table(args, predictions)
    if args.html:  # entities marked and typed, a pair's two texts in two rows
        write_predictions_html(args.texts, predictions, args.html, pairs=pairs)
    if args.png:  # matplotlib is imported only here, by render
        write_prediction_png(args.texts, predictions, args.png, pairs=pairs)
    return 0


def _print_table(args: argparse.Namespace, predictions: Sequence[Prediction]) -> None:
    """A sequence or pair model's predictions: one row per text, a column per label."""
    labels = list(predictions[0].scores) if predictions else []
    shown_texts = _shown_texts(args)
    width = min(max((len(t) for t in shown_texts), default=4), 60)
    named = max([len("label"), *(len(label) for label in labels)])  # the label column holds any label
    cells = [max(len(label), 6) for label in labels]  # a score column: its label, or "0.123"
    print(f"{'text':<{width}}  {'label':<{named}}" + "".join(f"  {k:>{c}}" for k, c in zip(labels, cells, strict=True)))
    for text, p in zip(shown_texts, predictions, strict=True):
        shown = text if len(text) <= width else text[: width - 1] + "…"
        mark = " (truncated)" if p.truncated else ""
        scores = "".join(f"  {p.scores[k]:>{c}.3f}" for k, c in zip(labels, cells, strict=True))
        print(f"{shown:<{width}}  {p.label:<{named}}" + scores + mark)


def _explain_options(args: argparse.Namespace) -> dict[str, Any]:
    """The explain options of `_add_explain_options`, for `Client.explain`. Those left out on
    the command line are None (faithfulness False), which the client treats exactly as absent."""
    options = {
        name: getattr(args, name)
        for name in ("max_evals", "batch_size", "num_samples", "n_steps", "output", "fixed_context", "faithfulness")
    }
    targets = args.targets
    options["targets"] = targets[0] if targets in (["all"], ["predicted"]) else targets
    options["entity"] = getattr(args, "entity", None)
    options["pairs"] = getattr(args, "pair", None)  # text-pair models
    # The attention explainer's raw maps: only when asked for (other explainers ignore them).
    layers, heads = getattr(args, "attention_layers", None), getattr(args, "attention_heads", None)
    if getattr(args, "raw_attention", False) or layers or heads or getattr(args, "attention_png", None):
        options.update(raw_attention=True, attention_layers=layers, attention_heads=heads)
    return options


def _check_outputs(*paths: str | None) -> None:
    """Refuse, before any work, a picture or page to be written where it cannot be."""
    for path in filter(None, paths):
        folder = Path(path).resolve().parent
        if not folder.is_dir():
            raise ValueError(f"{path}: no such directory {str(folder)!r}")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"{path}: directory {str(folder)!r} is not writable")


def cmd_explain(args: argparse.Namespace) -> int:
    _check_outputs(args.html, args.png, args.bar_png, args.hist_png, getattr(args, "attention_png", None))
    options = _explain_options(args)
    if args.stream:
        if args.html or args.png or args.bar_png or args.hist_png or args.attention_png:
            raise ValueError("--stream prints one JSON line per text; the pictures need the whole batch")
        with _make_client(args) as client:
            stream = client.explain_stream(args.texts, model=args.model, explainer=args.explainer, **options)
            for index, e in stream:
                _print_line({"index": index, **_explanation_json(e)})
        return 0
    with _make_client(args) as client:
        explanations = client.explain(args.texts, model=args.model, explainer=args.explainer, **options)
    if args.json:
        print(json.dumps([_explanation_json(e) for e in explanations], indent=2))
    else:
        if not explanations:  # an entity model's texts without an entity to explain
            print("no entity to explain in the text(s)", file=sys.stderr)
        for e in explanations:
            if e.entity is not None and len(args.texts) > 1:  # whose entity: several texts give several
                print(f"text {e.text_index}:")
            for label in e.labels:
                print_terminal(e, sys.stdout, label)
            print()
    _write_pictures(args, explanations)
    return 0


def _write_pictures(args: argparse.Namespace, explanations: list[Explanation]) -> None:
    pictures = (args.png, args.bar_png, args.hist_png, getattr(args, "attention_png", None))
    if not explanations and any(pictures):
        raise ValueError("no explanation to draw: the texts have no entity to explain")
    if getattr(args, "attention_png", None):
        from . import charts

        first = explanations[0]
        if first.attention is None:
            raise ValueError("--attention-png needs --explainer attention (its raw maps)")
        charts.save_png(charts.attention_grid(first), args.attention_png)
    if args.html:
        write_html(explanations, args.html)
    if args.png:  # matplotlib is imported only here, by render, when a PNG is asked for
        write_png(explanations[0], args.png)
    if args.bar_png or args.hist_png:
        from . import charts

        if args.bar_png:  # one text: its tokens; several: their words pooled (whybert.aggregate)
            if len(explanations) == 1:
                figure = charts.token_bars(explanations[0])
            else:
                from .aggregate import aggregate

                figure = charts.aggregate_bars(aggregate(explanations, lowercase=True))
            charts.save_png(figure, args.bar_png)
        if args.hist_png:
            charts.save_png(charts.value_histogram(explanations), args.hist_png)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Check the whole CSV first (columns, labels, and the row count for the ETA), then
    stream it through the server, writing the CSVs as batches are answered."""
    from .evaluation import EvalCSV, OutputFiles, evaluate_rows, model_info

    chart = bool(args.out) and _can_draw("confusion_matrix.png")
    with _make_client(args) as client:
        info = model_info(client, args.model)
        if info.kind == "token":  # an entity model: --data is a CoNLL-style file
            if args.pair_column:
                raise ValueError(f"--pair-column: model {info.name!r} tags entities in single texts, not text pairs")
            return _evaluate_entities(args, client, info.name)
        data = EvalCSV.check(args.data, args.text_column, args.label_column, info, args.pair_column)
        files = OutputFiles(args.out, info.labels, pairs=data.pair_column is not None) if args.out else None
        try:
            result = evaluate_rows(
                client, info, data, batch_size=args.batch_size, concurrency=args.concurrency,
                progress=not args.json and sys.stderr.isatty(), total=data.rows,
                on_batch=files.batch if files else None,
            )
        finally:
            if files:
                files.close()
    written = files.finish(result, chart=chart) if files else []
    if args.json:
        print(result.to_json())
        return 0
    print(_report_table(result))
    for path in written:
        print(f"wrote {path}")
    return 0


def _evaluate_entities(args: argparse.Namespace, client: Client, model: str) -> int:
    """seqeval's entity figures of a token model on a CoNLL-style file (one token and its
    tag a line, blank lines between sentences)."""
    from .entity_evaluation import EntityEvaluation

    evaluation = EntityEvaluation.run(client, args.data, model, batch_size=args.batch_size or 1000)
    result = evaluation.result
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "entity_metrics.json").write_text(json.dumps(result, indent=2))
        evaluation.write_conll(out / "predictions.conll")
        if not args.json:
            print(f"wrote {out / 'entity_metrics.json'} and {out / 'predictions.conll'} (token, gold, predicted)")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'type':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, row in result["report"].items():
        print(
            f"{name:<14}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1-score']:>10.4f}"
            f"{int(row['support']):>10}"
        )
    print(f"{result['sentences']} sentences")
    return 0


def cmd_explain_corpus(args: argparse.Namespace) -> int:
    """Check the whole CSV first, then explain it into --out a chunk at a time (resuming what
    is there), then write the report."""
    from .corpus import CorpusCSV, explain_corpus_rows
    from .evaluation import model_info

    compare = [x.strip() for x in args.compare_explainers.split(",") if x.strip()] if args.compare_explainers else None
    charts = _can_draw("every chart of the report")
    with _make_client(args) as client:
        info = model_info(client, args.model)
        data = CorpusCSV.check(args.data, args.text_column, args.label_column, info, args.pair_column)
        source = {"data": args.data, "text_column": args.text_column, "label_column": args.label_column,
                  "pair_column": data.pair_column}
        try:
            result = explain_corpus_rows(
                client, info, data, out_dir=args.out, explainer=args.explainer, compare_explainers=compare,
                restart=args.restart, chunk_size=args.chunk_size, report_rows=args.report_rows, charts=charts,
                progress=not args.json and sys.stderr.isatty(), total=data.rows, source=source,
                pair_column=data.pair_column, **_explain_options(args),
            )
        except (WhybertError, KeyboardInterrupt):
            print(f"the explanations received so far are kept in {args.out}: the same command again resumes",
                  file=sys.stderr)
            raise
    if args.json:
        print(result.to_json())
        return 0
    print(_corpus_summary(result))
    return 0


def _corpus_summary(result: CorpusResult) -> str:
    """What a person reads after a run: the counts, each label's top words, the ranking."""
    lines = [
        f"model {result.model}: {result.rows} rows, {result.explained} explanations made in {result.seconds:.1f} s"
        + (f", {result.resumed} kept from before" if result.resumed else "")
        + (f"; accuracy {result.accuracy:.4f}" if result.accuracy is not None else ""),
    ]
    for label in result.words.labels:
        top = ", ".join(f"{w.word} {w.mean:+.3f}" for w in result.words.top(label, "mean_abs", 8))
        lines.append(f"  {label} ({result.words.explanations[label]} rows): {top}")
    if result.ranking is not None:
        lines += ["", f"{'explainer':<22}{'comprehensiveness':>18}{'sufficiency':>13}{'Spearman':>10}"
                  f"{'top-' + str(result.ranking['k']):>8}"]
        for item in result.ranking["explainers"]:
            cells = [item[m] for m in ("comprehensiveness", "sufficiency", "spearman", "top_k_overlap")]
            shown = [("" if v is None else f"{v:.4f}") for v in cells]
            lines.append(f"{item['explainer']:<22}{shown[0]:>18}{shown[1]:>13}{shown[2]:>10}{shown[3]:>8}")
    if result.skipped_rows:
        rows = ", ".join(map(str, result.skipped_rows[:10])) + (", …" if len(result.skipped_rows) > 10 else "")
        lines.append(f"{len(result.skipped_rows)} rows have no entity at the index asked for, left out: rows {rows}")
    lines.append("")
    lines += [f"wrote {path}" for path in result.files]
    if result.shown_rows < result.rows:
        lines.append(f"(report.html shows the explanations of the first {result.shown_rows} rows)")
    return "\n".join(lines)


def _can_draw(what: str) -> bool:
    """Whether matplotlib is there; if not, say at once (before a long run) what is left out."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return True
    print(f'warning: {what} needs matplotlib, which is not installed: pip install "whybert[evaluate]"; '
          "the other files are written", file=sys.stderr)
    return False


def _report_table(result: Evaluation) -> str:
    """The report as scikit-learn prints it, then the confusion matrix."""
    report = result.report
    width = max([len(n) for n in result.labels] + [len("weighted avg")])
    lines = [
        f"model {result.model}: {len(result.true)} rows in {result.seconds:.1f} s, accuracy {result.accuracy:.4f}",
        "",
        f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>7}",
    ]
    for name in [*result.labels, "macro avg", "weighted avg"]:
        if name == "macro avg":
            lines.append("")
        r = report[name]
        lines.append(
            f"{name:<{width}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  {r['f1-score']:>9.4f}  {r['support']:>7}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max([len(n) for n in result.labels] + [len(str(result.confusion.max(initial=0)))])
    lines.append(f"{'':<{width}}  " + "  ".join(f"{n:>{cell}}" for n in result.labels))
    for name, counts in zip(result.labels, result.confusion, strict=True):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>{cell}}" for c in counts))
    return "\n".join(lines)


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the local web page; it reaches the server through this command's client."""
    from .ui import Limits, serve

    limits = Limits(
        max_dataset_bytes=args.max_dataset_bytes,
        max_dataset_rows=args.max_dataset_rows,
        max_explain_rows=args.max_explain_rows,
        max_jobs=args.max_jobs,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
    )
    with _make_client(args) as client:
        serve(client, host=args.host, port=args.port, limits=limits)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        models = client.list_models()
    if args.json:
        print(json.dumps([vars(m) for m in models], indent=2))
        return 0
    for m in models:
        star = " (default)" if m.is_default else ""
        print(f"{m.name}{star}: labels {', '.join(m.labels)}; max {m.max_tokens} tokens; "
              f"{m.device} {m.dtype}; explainers {', '.join(m.explainers)}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        status = client.health(args.service)
    print(json.dumps({"status": status}) if args.json else status)
    return 0 if status == "SERVING" else 1


def _add_explain_options(parser: argparse.ArgumentParser) -> None:
    """The explainer and its options, as `explain` and `explain-corpus` take them."""
    parser.add_argument("--explainer", default="shap-partition",
                        choices=tuple(EXPLAINER_KINDS))
    parser.add_argument("--targets", nargs="+", default=None,
                        help="'predicted' (default), 'all', or label names")
    parser.add_argument("--output", choices=tuple(OUTPUT_SPACES), default=None)
    parser.add_argument("--max-evals", type=int, default=None, help="shap-partition: evaluations per text")
    parser.add_argument("--fixed-context", type=int, choices=(0, 1), default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="shap-partition: nodes per round")
    parser.add_argument("--num-samples", type=int, default=None, help="lime: perturbed samples")
    parser.add_argument("--n-steps", type=int, default=None, help="integrated-gradients: steps")
    parser.add_argument("--faithfulness", action="store_true", help="add AOPC faithfulness figures")
    parser.add_argument("--entity", type=parse_entity, default=None, metavar="INDEX|START:END|all",
                        help="token models: the entity to explain (its index in predict's list, its span, or all)")
    parser.add_argument("--raw-attention", action="store_true",
                        help="attention: also return the raw attention maps (every layer and head unless chosen)")
    parser.add_argument("--attention-layers", type=int, nargs="+", default=None, metavar="LAYER",
                        help="attention: the layers (from 0) whose raw maps are returned")
    parser.add_argument("--attention-heads", type=int, nargs="+", default=None, metavar="HEAD",
                        help="attention: the heads (from 0) of those layers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whybert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="class probabilities of texts")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--stream", action="store_true", help=STREAM_HELP)
    p.add_argument("--pair", action="append", default=None, metavar="TEXT",
                   help="text-pair models: the second text of each TEXT, in order (give it once per TEXT)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write an HTML rendering (a token model's entities marked with their types)")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="also write a PNG of the texts (a token model's entities boxed with their types)")
    _client_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="per-token attributions of texts")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    _add_explain_options(p)
    p.add_argument("--html", default=None, metavar="FILE", help="also write an HTML rendering")
    p.add_argument("--png", default=None, metavar="FILE", help="also write a PNG bar chart")
    p.add_argument("--bar-png", default=None, metavar="FILE",
                   help="also write a PNG of the top tokens of every explained label (several texts: "
                   "their words' mean |value| over all of them)")
    p.add_argument("--hist-png", default=None, metavar="FILE",
                   help="also write a PNG histogram of the token values, per explained label")
    p.add_argument("--attention-png", default=None, metavar="FILE",
                   help="attention: also write a PNG grid (layer × head) of the first text's raw attention maps")
    p.add_argument("--stream", action="store_true", help=STREAM_HELP)
    p.add_argument("--pair", action="append", default=None, metavar="TEXT",
                   help="text-pair models: the second text of each TEXT, in order (give it once per TEXT)")
    _client_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("evaluate", help="accuracy, per-label precision/recall/F1 and the confusion matrix "
                       "of a model on a labelled CSV")
    p.add_argument("--data", required=True, metavar="FILE", help="CSV with a header row; for an entity model a "
                   "CoNLL file (a token and its tag a line, a blank line between sentences)")
    p.add_argument("--text-column", default="text", help="the texts' column (default: text)")
    p.add_argument("--label-column", default="label", help="the true labels' column (default: label)")
    p.add_argument("--pair-column", default=None, help=PAIR_COLUMN_HELP)
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--out", default=None, metavar="DIR", help="write metrics.json, confusion_matrix.png, "
                   "predictions.csv and misclassified.csv here (an entity model: entity_metrics.json and "
                   "predictions.conll)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="texts per request (default 64, or the server's lower limit; an entity model's "
                   "sentences go 1000 to a stream)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    _client_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "explain-corpus",
        help="explain every row of a CSV into a directory (resumable): word statistics, charts, an HTML report",
        description="Explain every row of a CSV through the server's ExplainStream, appending each explanation "
        "to DIR/explanations.jsonl as it arrives; the same command again resumes. Then write words.json/.csv, "
        "rows.csv, the charts and report.html (and explainers.json with --compare-explainers). --timeout is "
        "per text: a stream of k texts gets k times it.",
    )
    p.add_argument("--data", required=True, metavar="FILE.csv", help="CSV with a header row")
    p.add_argument("--text-column", default="text", help="the texts' column (default: text)")
    p.add_argument("--label-column", default=None,
                   help="the true labels' column, if any: the report says which predictions are right")
    p.add_argument("--pair-column", default=None, help=PAIR_COLUMN_HELP)
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    _add_explain_options(p)
    p.add_argument("--compare-explainers", default=None, metavar="A,B[,C]",
                   help="explain each row with each of these explainers (with faithfulness) and rank them: "
                   "e.g. shap-partition,lime,integrated-gradients")
    p.add_argument("--out", required=True, metavar="DIR", help="the run's directory (resumed when it holds one)")
    p.add_argument("--restart", action="store_true", help="discard a run in DIR made with other options")
    p.add_argument("--chunk-size", type=int, default=64, help="texts per stream (default 64)")
    p.add_argument("--report-rows", type=int, default=2000,
                   help="rows whose explanations report.html shows (default 2000; the files have all)")
    _client_options(p)
    p.set_defaults(func=cmd_explain_corpus)

    p = sub.add_parser("models", help="the models a server serves")
    _client_options(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("health", help="the server's health (exit 0 when SERVING)")
    p.add_argument("--service", default="", help="service name to check (default: overall)")
    _client_options(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("ui", help="a local web page: explain a text, compare explainers, evaluate a CSV")
    p.add_argument("--host", default="127.0.0.1", help="the page's address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="the page's port (default 8080; 0: any)")
    p.add_argument("--max-dataset-bytes", type=int, default=4 << 20,
                   help="largest CSV the dataset mode takes, in bytes (default 4 MiB)")
    p.add_argument("--max-dataset-rows", type=int, default=10_000, help="most rows of a CSV (default 10000)")
    p.add_argument("--max-explain-rows", type=int, default=500,
                   help="most rows one 'explain a sample' job explains (default 500)")
    p.add_argument("--max-jobs", type=int, default=4, help="dataset jobs running at once (default 4)")
    p.add_argument("--max-connections", type=int, default=32,
                   help="connections served at once; more are answered 503 (default 32)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a request's line and headers may take to arrive (default 10)")
    _client_options(p, json_output=False)
    p.set_defaults(func=cmd_ui)

    for name in SERVER_COMMANDS:
        sub.add_parser(name, help=f"(server) {name}; see 'whybert {name} --help'", add_help=False)
    return parser


def _server_main() -> Callable[[Sequence[str]], int] | None:
    try:
        from whybert_service.cli import main as server_main
    except ImportError:
        return None
    return server_main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVER_COMMANDS:
        server_main = _server_main()
        if server_main is None:
            print(SERVER_HINT.format(cmd=argv[0]), file=sys.stderr)
            return 2
        return server_main(argv)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # what is still buffered meets a reader who left here, not at exit
    except KeyboardInterrupt:  # Ctrl-C: closing the client's channel cancelled the calls in flight
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`whybert explain ... | head`): nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except WhybertError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        for field, description in exc.field_violations:
            print(f"  {field}: {description}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
