"""Screenshot of a report's first screen (docs/report.png) in headless Chromium.

    defectscope score /work/shared/datasets/mvtec_bottle/test --out /tmp/x
    python bench/report_screenshot.py /tmp/x/report.html docs/report.png

The report is opened from disk (it is self-contained: no server, no script) at a 1280 x 900
window; the PNG is reduced to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.html")
    parser.add_argument("png", type=Path, help="screenshot to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
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
