"""The `whybert` command: talk to a server (predict, explain, models, health, ui) or, with the
server extra installed, run one (serve, train, export-model)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._client import Client
from ._core import DEFAULT_TARGET, DEFAULT_TIMEOUT, TLSConfig
from ._exceptions import WhybertError
from ._types import EXPLAINER_KINDS, OUTPUT_SPACES, Explanation, Prediction
from .render import print_terminal, write_html, write_png

SERVER_COMMANDS = ("serve", "train", "export-model")
SERVER_HINT = (
    "'whybert {cmd}' needs the server parts, which are not installed here.\n"
    "Install them with:  pip install \"whybert[server]\"   (training also needs \"whybert[train]\")"
)


def _client_options(parser: argparse.ArgumentParser, json_output: bool = True) -> None:
    parser.add_argument(
        "--target",
        action="append",
        default=None,
        help="server address host:port; repeat for round-robin over replicas "
        f"[env WHYBERT_TARGET, comma-separated; default {DEFAULT_TARGET}]",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per call (default {DEFAULT_TIMEOUT:g})"
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
    return {"text": text, "label": p.label, "scores": p.scores, "truncated": p.truncated}


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
        "additivity_error": e.additivity_error,
        "prediction": _prediction_json(e.text, e.prediction),
        "model_rows": e.model_rows,
        "queue_seconds": e.queue_seconds,
        "compute_seconds": e.compute_seconds,
        "cached": e.cached,
        "convergence_delta": None if e.convergence_delta is None else e.convergence_delta.tolist(),
        "faithfulness": None if e.faithfulness is None else vars(e.faithfulness),
    }


def cmd_predict(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        predictions = client.predict(args.texts, model=args.model)
    if args.json:
        print(json.dumps([_prediction_json(t, p) for t, p in zip(args.texts, predictions, strict=True)], indent=2))
        return 0
    labels = list(predictions[0].scores) if predictions else []
    width = min(max((len(t) for t in args.texts), default=4), 60)
    print(f"{'text':<{width}}  {'label':<12}" + "".join(f"{label:>10}" for label in labels))
    for text, p in zip(args.texts, predictions, strict=True):
        shown = text if len(text) <= width else text[: width - 1] + "…"
        mark = " (truncated)" if p.truncated else ""
        print(f"{shown:<{width}}  {p.label:<12}" + "".join(f"{p.scores[k]:>10.3f}" for k in labels) + mark)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    # Options left out on the command line are None (faithfulness False), which the client
    # treats exactly as absent.
    options = {
        name: getattr(args, name)
        for name in ("max_evals", "batch_size", "num_samples", "n_steps", "output", "fixed_context", "faithfulness")
    }
    targets = args.targets
    options["targets"] = targets[0] if targets in (["all"], ["predicted"]) else targets
    with _make_client(args) as client:
        explanations = client.explain(args.texts, model=args.model, explainer=args.explainer, **options)
    if args.json:
        print(json.dumps([_explanation_json(e) for e in explanations], indent=2))
    else:
        for e in explanations:
            for label in e.labels:
                print_terminal(e, sys.stdout, label)
            print()
    _write_pictures(args, explanations)
    return 0


def _write_pictures(args: argparse.Namespace, explanations: list[Explanation]) -> None:
    if args.html:
        write_html(explanations, args.html)
    if args.png:  # matplotlib is imported only here, by render, when a PNG is asked for
        write_png(explanations[0], args.png)


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the local web page; it reaches the server through this command's client."""
    from .ui import serve

    with _make_client(args) as client:
        serve(client, host=args.host, port=args.port)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whybert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="class probabilities of texts")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    _client_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="per-token attributions of texts")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--explainer", default="shap-partition",
                   choices=tuple(EXPLAINER_KINDS))
    p.add_argument("--targets", nargs="+", default=None,
                   help="'predicted' (default), 'all', or label names")
    p.add_argument("--output", choices=tuple(OUTPUT_SPACES), default=None)
    p.add_argument("--max-evals", type=int, default=None, help="shap-partition: evaluations per text")
    p.add_argument("--fixed-context", type=int, choices=(0, 1), default=None)
    p.add_argument("--batch-size", type=int, default=None, help="shap-partition: nodes per round")
    p.add_argument("--num-samples", type=int, default=None, help="lime: perturbed samples")
    p.add_argument("--n-steps", type=int, default=None, help="integrated-gradients: steps")
    p.add_argument("--faithfulness", action="store_true", help="add AOPC faithfulness figures")
    p.add_argument("--html", default=None, metavar="FILE", help="also write an HTML rendering")
    p.add_argument("--png", default=None, metavar="FILE", help="also write a PNG bar chart")
    _client_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("models", help="the models a server serves")
    _client_options(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("health", help="the server's health (exit 0 when SERVING)")
    p.add_argument("--service", default="", help="service name to check (default: overall)")
    _client_options(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("ui", help="a local web page to try explanations (type, compare, see)")
    p.add_argument("--host", default="127.0.0.1", help="the page's address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="the page's port (default 8080; 0: any)")
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
