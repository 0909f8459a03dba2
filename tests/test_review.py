"""`defectscope review`: reading runs, review.csv, the web API and its security, and the export."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from defectscope.cli import app as cli_app
from defectscope.data.layouts import labelled_defects, training_images
from defectscope.errors import ReviewError
from defectscope.review import DecisionStore, export_review, load_run, suggest_threshold
from defectscope.review import server as server_module
from defectscope.review.server import TOKEN_HEADER, cookie_name, create_app
from image_helpers import save_images
from review_helpers import make_run

TOKEN = "test-token-123"
SECRET = "top secret outside the run"


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path)[0]


def client_for(out: Path) -> TestClient:
    client = TestClient(create_app(load_run(out), TOKEN))
    client.headers[TOKEN_HEADER] = TOKEN
    return client


def said(result) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def review_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "review.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_is_read_most_suspicious_first_with_verdicts_and_pictures(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert [Path(p.path).name for p in run.parts] == ["001.png", "005.png", "004.png", "003.png", "002.png", "000.png"]
    assert [p.verdict for p in run.parts] == ["anomalous", "anomalous", "normal", "normal", "normal", "normal"]
    assert run.threshold == 0.5 and run.threshold_rule == "test rule"
    assert all(p.verdict_score == p.score for p in run.parts)
    assert all(p.map_file is not None and p.map_file.parent.name == "maps" for p in run.parts)
    assert all(p.mask_file is not None and p.mask_file.parent.name == "masks" for p in run.parts)


RAW = np.array([1.00, 1.20, 1.50, 0.90, 1.30, 1.10])  # decided on, like MuSc's map maxima
RAW_THRESHOLD = 1.25


def test_histogram_data_and_threshold_are_in_the_same_units(tmp_path: Path) -> None:
    out, paths = make_run(tmp_path, verdict_scores=RAW, threshold=RAW_THRESHOLD)
    client = client_for(out)
    info = client.get("/api/run").json()
    assert info["threshold"] == RAW_THRESHOLD
    parts = info["parts"]
    assert {p["path"] for p in parts if p["verdict"] == "anomalous"} == {paths[2], paths[4]}
    assert all((p["verdict"] == "anomalous") == (p["verdict_score"] > info["threshold"]) for p in parts)
    assert all(p["verdict_score"] == RAW[paths.index(p["path"])] != p["score"] for p in parts)
    # The top score (image 1) is judged normal: the score column alone does not give the verdict.
    assert parts[0]["path"] == paths[1] and parts[0]["verdict"] == "normal"
    client.post("/api/decision", json={"path": paths[1], "decision": "good"})
    client.post("/api/decision", json={"path": paths[2], "decision": "defective"})
    suggested = client.get("/api/state").json()["summary"]["suggested"]
    assert suggested["threshold"] == pytest.approx((RAW[1] + RAW[2]) / 2) and suggested["wrong"] == 0


def test_review_verdicts_are_read_counted_and_settled(tmp_path: Path) -> None:
    # Verdict scores 1.00 1.20 1.50 0.90 1.30 1.10: above 1.25 anomalous, (1.05, 1.25] review.
    out, paths = make_run(tmp_path, verdict_scores=RAW, threshold=RAW_THRESHOLD, review_from=1.05)
    run = load_run(out)
    assert run.review_threshold == 1.05
    assert {p.path for p in run.parts if p.verdict == "review"} == {paths[1], paths[5]}
    assert run.verdict_counts() == {"anomalous": 2, "review": 2, "normal": 2}
    client = client_for(out)
    info = client.get("/api/run").json()
    assert info["review_threshold"] == 1.05 and info["verdict_counts"] == {"anomalous": 2, "review": 2, "normal": 2}
    client.post("/api/decision", json={"path": paths[1], "decision": "defective"})
    client.post("/api/decision", json={"path": paths[5], "decision": "good"})
    summary = client.get("/api/state").json()["summary"]
    # A review verdict confirmed either way is neither a false alarm nor a miss.
    assert summary["false_alarms"] == 0 and summary["misses"] == 0
    assert summary["review_settled"] == {"good": 1, "defective": 1}
    assert load_run(make_run(tmp_path / "plain")[0]).review_threshold is None
    assert client_for(make_run(tmp_path / "plain2")[0]).get("/api/state").json()["summary"]["review_settled"] is None


def test_older_folders_with_png_overlays_still_find_their_masks(tmp_path: Path) -> None:
    out, _ = make_run(tmp_path)
    table = out / "scores.csv"
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        old = out / row["map"]
        Image.open(old).save(old.with_suffix(".png"))
        old.unlink()
        row["map"] = str(Path(row["map"]).with_suffix(".png"))
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    run = load_run(out)
    assert all(p.map_file.suffix == ".png" and p.mask_file is not None for p in run.parts)
    assert client_for(out).get("/api/map/0").headers["content-type"] == "image/png"


def test_older_folders_decide_on_score_and_an_nfa_level_is_no_cut(tmp_path: Path) -> None:
    out, _ = make_run(tmp_path)
    table = out / "scores.csv"
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [c for c in rows[0] if c != "verdict_score"], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    settings = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "threshold_applies_to"}))
    run = load_run(out)
    assert run.threshold == 0.5 and all(p.verdict_score is None and p.decision_score == p.score for p in run.parts)
    (out / "settings.json").write_text(json.dumps({**settings, "threshold": 1.0, "threshold_applies_to": "nfa"}))
    assert load_run(out).threshold is None


def test_run_without_verdicts_masks_or_settings(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, verdicts=False, masks=False)[0])
    assert run.threshold is None and not run.has_verdicts
    assert all(p.verdict is None and p.mask_file is None for p in run.parts)
    state = client_for(run.folder).get("/api/state").json()
    assert state["summary"]["false_alarms"] is None and state["summary"]["threshold"] is None


def test_evaluate_root_needs_a_category_when_it_has_several(tmp_path: Path) -> None:
    root = tmp_path / "eval"
    root.mkdir()
    for name in ("alpha", "beta"):
        make_run(tmp_path / name)[0].rename(root / name)
    (root / "metrics.json").write_text("{}")
    with pytest.raises(ReviewError, match="choose one with --category"):
        load_run(root)
    assert load_run(root, "beta").folder == root / "beta"
    with pytest.raises(ReviewError, match="not in"):
        load_run(root, "gamma")


def test_watch_output_is_read_with_its_overlays(tmp_path: Path) -> None:
    out, paths = make_run(tmp_path)
    watch = tmp_path / "watch"
    (watch / "maps").mkdir(parents=True)
    with open(watch / "verdicts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "verdict", "seconds"])
        for index, path in enumerate(paths):
            writer.writerow([path, 0.1 * index, "normal", 0.5])
    overlay = next((out / "maps").iterdir()).read_bytes()
    for path in paths:
        (watch / "maps" / f"{Path(path).parent.name}__{Path(path).stem}.png").write_bytes(overlay)
    (watch / "maps" / "000.png").write_bytes(overlay)
    run = load_run(watch)
    assert len(run.parts) == len(paths)
    assert all(p.map_file.name == f"{Path(p.path).parent.name}__{Path(p.path).stem}.png" for p in run.parts)
    assert Path(run.parts[0].path).name == "005.png"


@pytest.mark.parametrize("route", ["/", "/api/run", "/api/state", "/api/image/0", "/api/map/0", "/api/mask/0", "/static/review.js"])
def test_requests_without_the_token_are_forbidden(run_dir: Path, route: str) -> None:
    client = TestClient(create_app(load_run(run_dir), TOKEN))
    assert client.get(route).status_code == 403
    assert client.get(route, headers={TOKEN_HEADER: "wrong"}).status_code == 403
    assert client.get(route, headers={TOKEN_HEADER: "ünïcode".encode()}).status_code == 403
    client.cookies.set(cookie_name(TOKEN), "wrong")
    assert client.get(route).status_code == 403
    assert client.post("/api/decision", json={"path": load_run(run_dir).parts[0].path, "decision": "good"}).status_code == 403
    assert not (run_dir / "review.csv").exists()


def test_token_in_the_url_becomes_a_cookie(run_dir: Path) -> None:
    client = TestClient(create_app(load_run(run_dir), TOKEN))
    first = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower() and "samesite=strict" in first.headers["set-cookie"].lower()
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/review.js"' in page.text
    assert client.get("/api/run").status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]


def raw_get(asgi_app, raw_path: str, token: str = TOKEN) -> tuple[int, bytes]:
    """Send a GET with an exact raw path (no client-side normalisation of '..' or '%2f')."""
    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": unquote(path), "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"testserver"), (TOKEN_HEADER.encode(), token.encode())], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    sent: list[dict] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asgi_app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_no_file_outside_the_run_can_be_read(tmp_path: Path) -> None:
    out, _ = make_run(tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_text(SECRET)
    os.symlink(secret, out / "maps" / "evil.png")
    os.symlink(secret, out / "masks" / "00099_linked.png")
    os.symlink(secret, out / "maps" / "00099_linked.png")
    with open(out / "scores.csv", "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for index, overlay in enumerate(["../secret.png", "maps/../../secret.png", str(secret), "maps/evil.png", "maps/00099_linked.png", "maps/%2e%2e%2f..%2fsecret.png"]):
            writer.writerow([f"tampered{index}.png", 0.01 * (index + 1), 99, "normal", 0.01 * (index + 1), overlay, "scored"])
    run = load_run(out)
    asgi_app = create_app(run, TOKEN)
    tampered = [p for p in run.parts if p.path.startswith("tampered")]
    assert len(tampered) == 6 and all(p.map_file is None and p.mask_file is None for p in tampered)
    routes = [f"/api/{kind}/{p.index}" for p in tampered for kind in ("map", "mask")]
    routes += [
        "/static/../../secret.png", "/static/..%2f..%2fsecret.png", "/static/%2e%2e%2f%2e%2e%2fsecret.png", "/static/%2e%2e/secret.png",
        f"/static/{secret}", f"/static/{str(secret).replace('/', '%2f')}", "/static/..%5c..%5csecret.png", "/static/index.html",
        "/api/map/..%2f..%2fsecret.png", "/api/map/%2e%2e", f"/api/image/{secret}", "/api/image/-1", f"/api/image/{len(run.parts)}",
        "/%2e%2e/%2e%2e/secret.png", "/../secret.png", f"/{secret}", "/api/map/0/../../../secret.png", "/maps/evil.png",
    ]
    for route in routes:
        status, body = raw_get(asgi_app, route)
        assert 400 <= status < 500, route
        assert SECRET.encode() not in body, route
    status, body = raw_get(asgi_app, "/api/map/0")
    assert status == 200 and body.startswith(b"\xff\xd8\xff")  # the overlay, a JPEG


def test_a_maps_folder_linked_elsewhere_serves_nothing(tmp_path: Path) -> None:
    out, _ = make_run(tmp_path)
    (out / "maps").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", out / "maps")
    run = load_run(out)
    assert all(p.map_file is None for p in run.parts)
    assert raw_get(create_app(run, TOKEN), "/api/map/0")[0] == 404


def test_pictures_are_served_by_row_number(run_dir: Path) -> None:
    client = client_for(run_dir)
    parts = client.get("/api/run").json()["parts"]
    assert parts[0]["map"] and parts[0]["mask"] and parts[0]["verdict"] == "anomalous"
    for kind, media in (("image", "image/png"), ("map", "image/jpeg"), ("mask", "image/png")):
        response = client.get(f"/api/{kind}/0")
        assert response.status_code == 200 and response.headers["content-type"] == media
        assert response.headers["cache-control"].startswith("private")
    assert client.get("/api/state").headers["cache-control"] == "no-store"
    image = Image.open(io.BytesIO(client.get("/api/image/0").content))
    assert image.size == (48, 48)


def test_decisions_are_written_at_once_and_restored(run_dir: Path) -> None:
    client = client_for(run_dir)
    parts = load_run(run_dir).parts
    state = client.post("/api/decision", json={"path": parts[0].path, "decision": "defective"}).json()
    assert state["decisions"][parts[0].path]["decision"] == "defective"
    assert state["summary"]["reviewed"] == 1 and state["summary"]["total"] == 6
    client.post("/api/decision", json={"path": parts[1].path, "decision": "good"})
    rows = review_rows(run_dir)
    assert list(rows[0]) == ["path", "decision", "score", "verdict", "decided_at"]
    assert [(r["path"], r["decision"], float(r["score"]), r["verdict"]) for r in rows] == [
        (parts[0].path, "defective", 0.9, "anomalous"), (parts[1].path, "good", 0.6, "anomalous")]
    assert rows[0]["decided_at"].endswith("+00:00")
    reopened = client_for(run_dir).get("/api/state").json()
    assert set(reopened["decisions"]) == {parts[0].path, parts[1].path}
    assert reopened["summary"]["false_alarms"] == 1 and reopened["summary"]["misses"] == 0
    client.post("/api/decision", json={"path": parts[1].path, "decision": None})
    assert [r["path"] for r in review_rows(run_dir)] == [parts[0].path]
    assert not list(run_dir.glob(".review.csv.*.tmp"))


@pytest.mark.parametrize("body, status", [
    ({"path": "/not/in/the/run.png", "decision": "good"}, 404),
    ({"path": "../scores.csv", "decision": "good"}, 404),
    ({"path": None, "decision": "good"}, 400),
    ({"path": "FIRST", "decision": "maybe"}, 400),
    (["FIRST", "good"], 400),
])
def test_bad_decisions_are_refused(run_dir: Path, body, status: int) -> None:
    first = load_run(run_dir).parts[0].path
    if isinstance(body, dict) and body.get("path") == "FIRST":
        body = {**body, "path": first}
    response = client_for(run_dir).post("/api/decision", json=body)
    assert response.status_code == status and "error" in response.json()
    assert not (run_dir / "review.csv").exists()


def test_decision_for_a_file_the_run_skipped_is_refused(run_dir: Path) -> None:
    with open(run_dir / "scores.csv", "a") as handle:
        handle.write("/data/broken.png,,,,,,skipped: not an image\n/data/late.png,,,,,,\n")
    run = load_run(run_dir)
    assert run.skipped == [("/data/broken.png", "not an image"), ("/data/late.png", "not scored")]
    assert client_for(run_dir).post("/api/decision", json={"path": "/data/broken.png", "decision": "good"}).status_code == 404
    assert client_for(run_dir).post(content=b"not json", url="/api/decision").status_code == 400


def test_two_servers_on_one_folder_keep_each_others_decisions(run_dir: Path) -> None:
    parts = load_run(run_dir).parts
    first, second = client_for(run_dir), client_for(run_dir)
    first.get("/api/state")
    second.get("/api/state")
    first.post("/api/decision", json={"path": parts[0].path, "decision": "good"})
    state = second.post("/api/decision", json={"path": parts[1].path, "decision": "defective"}).json()
    assert set(state["decisions"]) == {parts[0].path, parts[1].path}
    stores = [DecisionStore(load_run(run_dir)) for _ in parts]
    threads = [threading.Thread(target=store.decide, args=(part.path, "skip")) for store, part in zip(stores, parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r["path"]: r["decision"] for r in review_rows(run_dir)} == {p.path: "skip" for p in parts}


def test_a_decision_that_cannot_be_saved_is_one_sentence(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import defectscope.review.decisions as decisions_module

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decisions_module, "atomic_write_text", refuse)
    response = client_for(run_dir).post("/api/decision", json={"path": load_run(run_dir).parts[0].path, "decision": "good"})
    assert response.status_code == 409 and "Permission denied" in response.json()["error"] and "writable" in response.json()["error"]


@pytest.mark.parametrize("text", [
    "path,verdict\nx,good\n",
    "path,decision,score,verdict,decided_at\n/nowhere.png,good,1,,\n",
    "path,decision,score,verdict,decided_at\nFIRST,perhaps,1,,\n",
    "path,decision,score,verdict,decided_at\nFIRST,good,1,,\nFIRST,good,1,,\n",
    "path,decision,score,verdict,decided_at\n\"FIRST,good\n",
])
def test_malformed_review_csv_is_one_sentence(run_dir: Path, text: str) -> None:
    first = load_run(run_dir).parts[0].path
    (run_dir / "review.csv").write_text(text.replace("FIRST", first))
    with pytest.raises(ReviewError, match="review.csv"):
        DecisionStore(load_run(run_dir)).load()
    result = CliRunner().invoke(cli_app, ["review", str(run_dir), "--no-browser"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "review.csv" in said(result)
    assert client_for(run_dir).get("/api/state").status_code == 409
    assert (run_dir / "review.csv").read_text() == text.replace("FIRST", first)


def test_unreviewable_folders_are_one_sentence(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["review", str(tmp_path / "absent"), "--no-browser"])
    assert result.exit_code == 2 and "does not exist" in said(result)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scores.csv").write_text("path,score\nx.png,high\n")
    result = CliRunner().invoke(cli_app, ["review", str(tmp_path / "bad"), "--no-browser"])
    assert result.exit_code == 2 and "line 2" in said(result) and "Traceback" not in result.output


def test_suggested_threshold_rule() -> None:
    assert suggest_threshold([], [0.5]) is None and suggest_threshold([0.5], []) is None
    assert suggest_threshold([0.5], [0.5]) is None
    assert suggest_threshold([0.1, 0.2], [0.8, 0.9])["threshold"] == pytest.approx(0.5)
    overlapping = suggest_threshold([0.1, 0.2, 0.3, 0.6], [0.45, 0.9])
    assert overlapping["threshold"] == pytest.approx(0.375) and overlapping["wrong"] == 1


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def decide_all(out: Path, decisions: dict[str, str]) -> None:
    store = DecisionStore(load_run(out))
    for path, decision in decisions.items():
        store.decide(path, decision)


def test_export_writes_training_folders_and_counts_overturned_verdicts(tmp_path: Path) -> None:
    out, paths = make_run(tmp_path)
    inputs_before = _digest(tmp_path / "inputs")
    run_before = _digest(out)
    decide_all(out, {paths[0]: "good", paths[2]: "good", paths[3]: "skip", paths[5]: "good", paths[1]: "defective", paths[4]: "defective-mask-rejected"})
    target = tmp_path / "export"
    result = CliRunner().invoke(cli_app, ["review", str(out), "--export", str(target)])
    assert result.exit_code == 0, result.output
    summary = json.loads((target / "summary.json").read_text())
    assert summary["written"] == {"good": 3, "defective": 1, "defective-without-mask": 1}
    assert summary["false_alarms"] == 1 and summary["misses"] == 1
    assert summary["suggested"]["threshold"] == pytest.approx(0.325)
    assert [item["path"] for item in summary["left_out"]] == [paths[4]]
    assert "1 false alarms" in (target / "summary.md").read_text()
    assert sorted(p.name for p in (target / "train" / "good").iterdir()) == ["good_000.png", "good_002.png", "good_005.png"]
    assert [s.path.name for s in training_images(target)] == ["good_000.png", "good_002.png", "good_005.png"]
    defects = labelled_defects(target)
    assert [(s.path.name, s.mask_path.name) for s in defects] == [("bad_001.png", "bad_001_mask.png")]
    mask = np.asarray(Image.open(defects[0].mask_path)) > 127
    assert mask.shape == (48, 48) and mask.any()
    assert [p.name for p in (target / "defective-without-mask").iterdir()] == ["bad_004.png"]
    assert (target / "train" / "good" / "good_000.png").read_bytes() == Path(paths[0]).read_bytes()
    assert _digest(tmp_path / "inputs") == inputs_before
    assert {k: v for k, v in _digest(out).items() if not k.endswith(("review.csv", ".review.lock"))} == {k: v for k, v in run_before.items()}
    again = CliRunner().invoke(cli_app, ["review", str(out), "--export", str(target)])
    assert again.exit_code == 2 and "--overwrite" in said(again)


def test_export_without_proposed_masks_lists_why(tmp_path: Path) -> None:
    out, paths = make_run(tmp_path, masks=False)
    decide_all(out, {paths[1]: "defective"})
    report = export_review(load_run(out), tmp_path / "export")
    assert report["written"]["defective"] == 0 and report["written"]["defective-without-mask"] == 1
    assert "proposed no mask" in report["left_out"][0]["reason"]


def test_export_needs_decisions_and_never_replaces_the_run(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ReviewError, match="review it first"):
        export_review(load_run(run_dir), tmp_path / "export")
    assert not (tmp_path / "export").exists()
    decide_all(run_dir, {load_run(run_dir).parts[0].path: "defective"})
    before = _digest(run_dir)
    for target in (run_dir, run_dir.parent):
        with pytest.raises(ReviewError, match="would replace the run"):
            export_review(load_run(run_dir), target, overwrite=True)
    assert _digest(run_dir) == before


def test_page_files_are_shipped_in_the_wheel_and_load_nothing_from_outside() -> None:
    import fnmatch
    import re
    import tomllib

    import defectscope.review
    from defectscope.review.server import _STATIC

    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["defectscope.review"]
    static = Path(defectscope.review.__file__).parent / "static"
    files = sorted(p.name for p in static.iterdir())
    assert files == sorted(["index.html", *_STATIC])
    assert all(any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in globs) for name in files)
    links = re.findall(r'(?:src|href)="([^"]+)"', (static / "index.html").read_text())
    assert links and all(link.startswith("/static/") and link.removeprefix("/static/") in _STATIC for link in links)
    assert not re.search(r"https?://", (static / "review.js").read_text().replace("http://www.w3.org/2000/svg", ""))


def test_serve_binds_locally_on_a_free_port_with_a_token_and_opens_the_browser(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    opened: list[str] = []
    served: list[int] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets[0].getsockname()[1]))
    monkeypatch.setattr(server_module.webbrowser, "open", opened.append)
    urls: list[str] = []
    server_module.serve(load_run(run_dir), announce=urls.append)
    server_module.serve(load_run(run_dir), announce=urls.append, open_browser=False)
    first, second = (urlsplit(url) for url in urls)
    assert first.hostname == "127.0.0.1" and first.port == served[0] and first.port != second.port
    token = parse_qs(first.query)["token"][0]
    assert len(token) >= 32 and token != parse_qs(second.query)["token"][0]
    for _ in range(100):
        if opened:
            break
        time.sleep(0.02)
    assert opened == [urls[0]]


def test_cli_warns_when_listening_beyond_this_machine(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(server_module, "serve", lambda run, **kwargs: calls.append(kwargs))
    result = CliRunner().invoke(cli_app, ["review", str(run_dir), "--host", "0.0.0.0", "--no-browser"])
    assert result.exit_code == 0 and "warning" in said(result) and "0.0.0.0" in said(result)
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["open_browser"] is False
    result = CliRunner().invoke(cli_app, ["review", str(run_dir)])
    assert "warning" not in said(result) and calls[1]["host"] == "127.0.0.1" and calls[1]["open_browser"] is True


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_a_real_score_run_can_be_reviewed_and_exported(tmp_path: Path) -> None:
    from defectscope.data.synthetic import synthetic_images
    from defectscope.pipeline import RunOptions, score_folder

    images, _ = synthetic_images(6, size=64, defective=(2,), seed=5, defect="spot")
    folder = tmp_path / "parts"
    save_images(folder, images, "part_{}.png")
    out = tmp_path / "out"
    score_folder(folder, out, RunOptions(image_size=64))
    run = load_run(out)
    assert len(run.parts) == 6 and Path(run.parts[0].path).name == "part_2.png"
    client = client_for(out)
    assert client.get("/api/map/0").status_code == 200 and client.get("/api/image/5").status_code == 200
    client.post("/api/decision", json={"path": run.parts[-1].path, "decision": "good"})
    report = export_review(load_run(out), tmp_path / "export")
    assert report["written"]["good"] == 1 and training_images(tmp_path / "export")[0].path.name == Path(run.parts[-1].path).name
