"""The review page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Skipped with the reason when Playwright or the browser is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import csv
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from defectscope.review import load_run
from defectscope.review.server import bind, create_app
from review_helpers import make_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
TOKEN = "browser-test-token"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e '.[review]')")
if not CHROMIUM.is_file():
    pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@contextmanager
def serving(out: Path) -> Iterator[str]:
    """The review server for ``out`` on a free local port, in a thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(load_run(out), TOKEN), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def decisions_on_disk(out: Path) -> dict[str, str]:
    if not (out / "review.csv").exists():
        return {}
    with open(out / "review.csv", newline="") as handle:
        return {row["path"]: row["decision"] for row in csv.DictReader(handle)}


def part(page, path: str):
    return page.locator(f'#queue [data-path="{path}"]')


def test_keys_record_decisions_in_review_csv(browser, tmp_path: Path) -> None:
    out, paths = make_run(tmp_path)
    by_score = [paths[i] for i in (1, 5, 4, 3, 2, 0)]
    expect = sync_api.expect
    with serving(out) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{url}/?token={TOKEN}")
        expect(page.locator("#queue [data-path]")).to_have_count(6)
        expect(page.locator("#view")).to_have_attribute("data-current-path", by_score[0])
        expect(page.locator("#histogram line.threshold")).to_have_count(1)
        page.keyboard.press("d")
        expect(part(page, by_score[0])).to_have_attribute("data-decision", "defective")
        page.keyboard.press("g")
        expect(part(page, by_score[1])).to_have_attribute("data-decision", "good")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("s")
        expect(part(page, by_score[3])).to_have_attribute("data-decision", "skip")
        page.click('#actions [data-action="good"]')
        expect(part(page, by_score[4])).to_have_attribute("data-decision", "good")
        for _ in range(3):
            page.keyboard.press("ArrowUp")
        expect(page.locator("#view")).to_have_attribute("data-current-path", by_score[2])
        page.keyboard.press("x")
        expect(part(page, by_score[2])).to_have_attribute("data-decision", "defective-mask-rejected")
        expect(page.locator("#progress")).to_have_text("4 of 6 reviewed (1 skipped)")
        expect(page.locator("#overturned")).to_have_text("overturned: 1 false alarm(s), 1 miss(es)")
        assert decisions_on_disk(out) == {
            by_score[0]: "defective", by_score[1]: "good", by_score[3]: "skip", by_score[4]: "good", by_score[2]: "defective-mask-rejected"}

        page.select_option("#filter-state", "undecided")
        expect(page.locator("#queue [data-path]:visible")).to_have_count(1)
        expect(page.locator("#view")).to_have_attribute("data-current-path", by_score[5])

        other = context.new_page()
        other.goto(url)
        expect(part(other, by_score[1])).to_have_attribute("data-decision", "good")
        other.click(f'#queue [data-path="{by_score[1]}"]')
        other.keyboard.press("u")
        expect(part(other, by_score[1])).to_have_attribute("data-decision", "")
        page.keyboard.press("g")
        expect(part(page, by_score[5])).to_have_attribute("data-decision", "good")
        expect(part(page, by_score[1])).to_have_attribute("data-decision", "")
        expect(page.locator("#view")).to_have_attribute("data-current-path", by_score[1])
        page.keyboard.press("g")
        expect(page.locator("#view")).to_have_attribute("data-current-path", "")
        expect(page.locator("#progress")).to_have_text("5 of 6 reviewed (1 skipped)")
        assert decisions_on_disk(out)[by_score[1]] == "good" and decisions_on_disk(out)[by_score[5]] == "good"
        context.close()

        reopened = browser.new_context().new_page()
        reopened.goto(f"{url}/?token={TOKEN}")
        expect(part(reopened, by_score[0])).to_have_attribute("data-decision", "defective")
        expect(part(reopened, by_score[5])).to_have_attribute("data-decision", "good")
        reopened.context.close()


def test_page_without_token_is_forbidden_and_loads_no_outside_resources(browser, tmp_path: Path) -> None:
    out, _ = make_run(tmp_path, verdicts=False, masks=False)
    with serving(out) as url:
        context = browser.new_context()
        page = context.new_page()
        assert page.goto(url).status == 403
        outside: list[str] = []
        page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(url) else None)
        page.goto(f"{url}/?token={TOKEN}")
        sync_api.expect(page.locator("#queue [data-path]")).to_have_count(6)
        sync_api.expect(page.locator("#overturned")).to_have_text("no verdicts in this run")
        sync_api.expect(page.locator("#no-mask")).to_be_visible()
        assert page.locator("#histogram line.threshold").count() == 0
        assert outside == []
        context.close()


def test_histogram_and_large_view_use_the_verdict_score(browser, tmp_path: Path) -> None:
    out, paths = make_run(tmp_path, verdict_scores=np.array([1.00, 1.20, 1.50, 0.90, 1.30, 1.10]), threshold=1.25)
    expect = sync_api.expect
    with serving(out) as url:
        page = browser.new_context().new_page()
        page.goto(f"{url}/?token={TOKEN}")
        expect(page.locator("#view")).to_have_attribute("data-current-path", paths[1])
        expect(page.locator("#meta-figures")).to_contain_text("verdict score 1.2")
        expect(page.locator("#histogram")).to_contain_text("verdict score (grey")
        # The axis runs from the lowest to the highest verdict score (0.9 to 1.5), the threshold inside it.
        expect(page.locator("#histogram")).to_contain_text("threshold 1.25")
        line = page.locator("#histogram line.threshold")
        x = float(line.get_attribute("x1"))
        assert 40 + (1.25 - 0.9) / 0.6 * 590 == pytest.approx(x, abs=0.5)


def test_review_verdicts_have_a_filter_a_badge_a_count_and_a_band(browser, tmp_path: Path) -> None:
    # Verdict scores 1.00 1.20 1.50 0.90 1.30 1.10: above 1.25 anomalous, (1.05, 1.25] review.
    out, paths = make_run(tmp_path, verdict_scores=np.array([1.00, 1.20, 1.50, 0.90, 1.30, 1.10]), threshold=1.25, review_from=1.05)
    expect = sync_api.expect
    with serving(out) as url:
        page = browser.new_context().new_page()
        page.goto(f"{url}/?token={TOKEN}")
        expect(page.locator("#queue [data-path]")).to_have_count(6)
        expect(page.locator("#verdict-counts")).to_have_text("2 anomalous · 2 review · 2 normal")
        expect(page.locator("#queue .badge.review")).to_have_count(2)
        page.select_option("#filter-verdict", "review")
        expect(page.locator("#queue [data-path]:visible")).to_have_count(2)
        visible = {page.locator("#queue [data-path]:visible").nth(i).get_attribute("data-path") for i in range(2)}
        assert visible == {paths[1], paths[5]}
        expect(page.locator("#view")).to_have_attribute("data-current-path", paths[1])
        page.keyboard.press("d")
        expect(page.locator("#overturned")).to_contain_text("review settled: 0 good, 1 defective")
        expect(page.locator("#histogram line.review-edge")).to_have_count(1)
        expect(page.locator("#histogram rect.review-band")).to_have_count(1)
        edge = float(page.locator("#histogram line.review-edge").get_attribute("x1"))
        cut = float(page.locator("#histogram line.threshold").get_attribute("x1"))
        # The axis runs from 0.9 to 1.5 over x = 40..630.
        assert edge == pytest.approx(40 + (1.05 - 0.9) / 0.6 * 590, abs=0.5) and edge < cut
        page.select_option("#filter-verdict", "normal")
        expect(page.locator("#queue [data-path]:visible")).to_have_count(2)
        page.context.close()
