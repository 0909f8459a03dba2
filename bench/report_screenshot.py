"""Screenshot of a report's first screen (docs/report.png) in headless Chromium.

    defectscope score /work/shared/datasets/mvtec_bottle/test --out /tmp/x
    python bench/report_screenshot.py /tmp/x/report.html docs/report.png

The report is opened from disk (it is self-contained: no server, no script) at a 1280 x 900
window; the PNG is reduced to 256 colours to stay small.

    python bench/report_screenshot.py --synthetic-band /tmp/band.html docs/report_band.png --height 440

first writes a report of 85 synthetic parts (random verdict scores, grey pictures) whose verdict
has a review band, to show how the band is drawn: no rule in the package opens one yet on the
shared data.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]


def synthetic_band_report(path: Path) -> None:
    """85 parts: 60 normal-looking verdict scores around 1.0, 25 defective around 1.6; anomalous
    above 1.35, review above 1.18."""
    import numpy as np

    from defectscope.report.html import ReportEntry, write_report

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1.0, 0.08, 60), rng.normal(1.6, 0.2, 25)])
    words = ["anomalous" if v > 1.35 else "review" if v > 1.18 else "normal" for v in values]
    grey = np.full((40, 40, 3), 128, np.uint8)
    entries = [ReportEntry(path=f"part_{i:02d}.png", score=float(v + rng.normal(0, 0.1)), rank=i + 1, thumbnail=grey, overlay=grey,
                           verdict=w, verdict_score=float(v)) for i, (v, w) in enumerate(zip(values, words))]
    settings = {"threshold": 1.35, "review_threshold": 1.18, "threshold_applies_to": "verdict_score",
                "threshold_rule": "synthetic", "false_alarm_rate": 0.05, "review_budget": 0.2, "good": None, "method": "musc"}
    write_report(path, title="synthetic scores with a review band", entries=entries, settings=settings, skipped=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.html")
    parser.add_argument("png", type=Path, help="screenshot to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--synthetic-band", action="store_true", help="write a synthetic report with a review band to REPORT first")
    args = parser.parse_args()
    if args.synthetic_band:
        synthetic_band_report(args.report)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.report.resolve().as_uri())
        page.wait_for_function("() => [...document.images].every((img) => img.complete)")
        shot = page.screenshot()
        browser.close()
    small = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.png, optimize=True)
    print(f"wrote {args.png} ({args.png.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
