"""Explain texts with a running whybert server and save the pictures people look at.

    python examples/render_explanation.py --target localhost:50051 \\
        --html explanation.html --png top-tokens.png --screenshot explanation.png \\
        "The food was great, but the service was painfully slow."

`--html` writes the self-contained page (`whybert.render.write_html`), `--png` the bar
chart of the top tokens (`whybert.render.write_png`, needs `whybert[plot]`), and
`--screenshot` a PNG of the page as headless Chromium draws it, cropped to the content
(needs the `chromium` command and `whybert[plot]`). The README's picture is made this way.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import whybert
from whybert import render

BACKGROUND = (246, 246, 248)  # the page's background, #f6f6f8


def screenshot(html_path: Path, out: Path, width: int = 1000, height: int = 2400) -> None:
    """Headless Chromium draws the page; the empty background around it is cropped off."""
    from matplotlib import image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--screenshot needs Chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        raw = Path(profile) / "raw.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--force-color-profile=srgb", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={raw}",
             html_path.resolve().as_uri()],
            check=True, capture_output=True, timeout=60,
        )
        pixels = image.imread(raw)[..., :3]
    content = np.any(np.abs(pixels * 255 - np.array(BACKGROUND)) > 2, axis=-1)
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    top, bottom = max(rows[0] - 8, 0), min(rows[-1] + 9, pixels.shape[0])
    left, right = max(cols[0] - 8, 0), min(cols[-1] + 9, pixels.shape[1])
    image.imsave(out, pixels[top:bottom, left:right])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--model", default=None)
    parser.add_argument("--explainer", default="shap-partition")
    parser.add_argument("--targets", default="predicted", help="predicted, all, or one label")
    parser.add_argument("--max-evals", type=int, default=None, help="SHAP's budget per text")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the call")
    parser.add_argument("--html", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()

    options = {} if args.max_evals is None else {"max_evals": args.max_evals}
    with whybert.Client(args.target, timeout=args.timeout) as client:
        explanations = client.explain(args.texts, model=args.model, explainer=args.explainer,
                                      targets=args.targets, **options)
    for e in explanations:
        print(render.terminal(e, colour=False))
    if args.html:
        render.write_html(explanations, args.html)
    if args.png:
        render.write_png(explanations[0], args.png)
    if args.screenshot:
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "explanation.html"
            render.write_html(explanations, page)
            screenshot(page, args.screenshot)


if __name__ == "__main__":
    main()
