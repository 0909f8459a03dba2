"""Screenshot of the review page (docs/review.png) on a finished run, in headless Chromium.

    defectscope score /work/shared/datasets/mvtec_bottle/test --out /tmp/x
    python bench/review_screenshot.py /tmp/x docs/review.png --decide 8

``--decide N`` records decisions for the N most and the N least suspicious parts first, taken from the MVTec
folder names (``test/good/`` -> good, any other folder -> defective): the screenshot then shows
a review in progress; these are the dataset's labels standing in for an inspector, and they are
written to the run's review.csv like any other decisions. The PNG is reduced to 256 colours to
stay small.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from defectscope.review import DecisionStore, load_run
from defectscope.review.server import bind, create_app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder of a score/evaluate/predict run")
    parser.add_argument("png", type=Path, help="screenshot to write")
    parser.add_argument("--decide", type=int, default=8, help="decide the N most and N least suspicious parts from their folder names")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    run = load_run(args.out)
    store = DecisionStore(run)
    for part in run.parts[: args.decide] + run.parts[len(run.parts) - args.decide :]:
        store.decide(part.path, "good" if Path(part.path).parent.name == "good" else "defective")
    token = "screenshot"
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(run, token), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 780})
        page.goto(url)
        page.wait_for_selector("#queue [data-path]")
        page.locator(f'#queue [data-path="{run.parts[min(args.decide, len(run.parts) - 1)].path}"]').click()
        page.wait_for_function("() => [...document.images].every((img) => img.hidden || img.complete)")
        shot = page.screenshot()
        browser.close()
    server.should_exit = True
    small = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(args.png, optimize=True)
    print(f"wrote {args.png} ({args.png.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
