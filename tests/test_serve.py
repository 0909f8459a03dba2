"""`defectscope serve` as a real uvicorn server in a child process: answers equal to `predict` /
`score --good`, bad input refused in one sentence while the service keeps serving, the token,
503 under a full queue, and a journal that survives kill -9.

Image sizes: U-Flow trains at 96 px (at its default 256 one epoch takes ~30 s on 2 cores);
MuSc runs at its default input size (224) with the default backbone."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectscope.data.synthetic import write_mvtec_category
from defectscope.options import RunOptions

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UFLOW_FAST = {"epochs": 1, "min_epoch_samples": 4, "batch_size": 4}


class Server:
    """`defectscope serve ARGS` in a child process; ``url`` once it listens."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-c", "from defectscope.cli import main; main()", "serve", "--port", "0", "--threads", "1", *args]
        self.process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "400"},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url: str | None = None
        self._seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._seen.wait(180) or self.url is None:
            self.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if self.url is None and "serving " in line and " on http://" in line:
                self.url = line.split(" on ", 1)[1].split("/v1/inspect", 1)[0]
                self._seen.set()
        self._seen.set()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self._reader.join(10)
        return "".join(self.lines)


def post(url: str, data: bytes, *, headers: dict | None = None, params: dict | None = None, content_type: str = "image/png", timeout: float = 120):
    return httpx.post(f"{url}/v1/inspect", content=data, headers={**AUTH, "Content-Type": content_type, **(headers or {})}, params=params, timeout=timeout)


def journal(out: Path) -> list[dict[str, str]]:
    with open(out / "verdicts.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "widget"
    return write_mvtec_category(root, kind="texture", n_train=6, n_test_good=3, n_test_defect=4, size=64, seed=2)


@pytest.fixture(scope="module")
def uflow_model(category, tmp_path_factory):
    from defectscope.training import fit_model

    folder = tmp_path_factory.mktemp("model") / "uflow"
    return fit_model("uflow", category, folder, RunOptions(image_size=96, threads=1, method_options=UFLOW_FAST))


@pytest.fixture(scope="module")
def uflow_server(uflow_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "journal"
    server = Server("--model", str(uflow_model), "--out", str(out), "--token", TOKEN, "--max-bytes", "2000000", "--max-pixels", "200000")
    server.out = out
    yield server
    server.stop()


def _test_images(category: Path) -> list[Path]:
    return sorted((category / "test").rglob("*.png"))


def test_scores_equal_predict_and_each_answer_has_one_journal_row(uflow_server, uflow_model, category, tmp_path):
    from defectscope.training import predict_folder

    expected = predict_folder(uflow_model, category / "test", tmp_path / "pred", RunOptions(threads=1))
    by_path = {Path(p).resolve(): i for i, p in enumerate(expected.paths)}
    ids = []
    for number, path in enumerate(_test_images(category)):
        if number % 2:
            response = httpx.post(f"{uflow_server.url}/v1/inspect", files={"image": (path.name, path.read_bytes(), "image/png")}, headers=AUTH, timeout=120)
        else:
            response = post(uflow_server.url, path.read_bytes(), params={"name": path.name})
        assert response.status_code == 200, response.text
        answer = response.json()
        index = by_path[path.resolve()]
        assert abs(answer["score"] - expected.image_scores[index]) <= 1e-6
        assert answer["verdict"] == ("anomalous" if expected.is_anomalous[index] else "normal")
        assert answer["threshold"] == expected.threshold and answer["threshold_rule"] == expected.threshold_rule
        assert answer["name"] == path.name
        assert answer["regions_total"] == len(answer["regions"])
        assert bool(answer["regions"]) == bool(expected.masks[index].any())
        for region in answer["regions"]:
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and region["area"] > 0
        ids.append(answer["id"])
    rows = {row["id"]: row for row in journal(uflow_server.out)}
    for answer_id in ids:
        assert answer_id in rows
    assert len(rows) == len(journal(uflow_server.out)), "an id appears twice in the journal"


def test_maps_come_as_png_matching_the_regions(uflow_server, category):
    path = category / "test" / "spot" / "000.png"
    answer = post(uflow_server.url, path.read_bytes(), params={"maps": "true"}).json()
    maps = answer["maps"]
    anomaly = np.asarray(Image.open(io.BytesIO(base64.b64decode(maps["anomaly_map_png"]))))
    size = (answer["map_size"]["height"], answer["map_size"]["width"])
    assert anomaly.shape == size and anomaly.dtype == np.uint16
    low, high = maps["anomaly_map_range"]
    assert high == pytest.approx(answer["score"], abs=1e-6)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(maps["mask_png"])))) > 127
    assert mask.shape == size
    assert mask.any() == bool(answer["regions"])
    assert "maps" not in post(uflow_server.url, path.read_bytes()).json()


def _raw_request(address: tuple[str, int], head: bytes, body_parts: list[bytes]) -> bytes:
    """Send ``head`` and as many of ``body_parts`` as the server takes; return what it answered."""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunks[-1]:
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    return b"".join(chunks)


def _one_sentence(response) -> str:
    message = response.json()["error"]
    assert isinstance(message, str) and "\n" not in message and message.count(". ") == 0, message
    return message


def test_bad_input_gets_one_sentence_and_the_service_keeps_serving(uflow_server, category, tmp_path):
    good = (category / "test" / "good" / "000.png").read_bytes()
    url = uflow_server.url
    cases = [
        ("not an image", post(url, b"hello, this is text, not a picture"), 400, "not an image"),
        ("truncated", post(url, good[: len(good) // 2]), 400, "truncated"),
        ("zero bytes", post(url, b""), 400, "empty"),
        ("wrong content type", post(url, good, content_type="application/json"), 415, "content type"),
        ("form urlencoded", post(url, good, content_type="application/x-www-form-urlencoded"), 415, "content type"),
        ("multipart without an image field", httpx.post(f"{url}/v1/inspect", files={"a": ("a.txt", b"x"), "b": ("b.txt", b"y")}, headers=AUTH), 400, "not an image"),
    ]
    big = io.BytesIO()
    Image.fromarray(np.zeros((500, 500, 3), dtype=np.uint8)).save(big, format="PNG")
    cases.append(("over the pixel cap", post(url, big.getvalue()), 413, "pixels"))
    for what, response, status, words in cases:
        assert response.status_code == status, (what, response.text)
        assert words in _one_sentence(response), (what, response.text)
        assert post(url, good).status_code == 200, f"the service stopped serving after: {what}"

    # 100 MB declared: refused from Content-Length, before the body is sent.
    head = (f"POST /v1/inspect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {100 * 2**20}\r\n\r\n").encode()
    answer = _raw_request(uflow_server.address, head, [good[:1000]])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the cap" in answer
    # No Content-Length (chunked): refused while streaming, once more than the cap arrived.
    head = (f"POST /v1/inspect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: image/png\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"\x89PNG" + b"\0" * (256 * 1024 - 4)
    parts = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(9)]  # 2.25 MB > 2 MB cap
    answer = _raw_request(uflow_server.address, head, parts)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert post(url, good).status_code == 200
    assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"


def test_a_token_is_required(uflow_server, category):
    url, image = uflow_server.url, (category / "test" / "good" / "000.png").read_bytes()
    bare = httpx.post(f"{url}/v1/inspect", content=image, headers={"Content-Type": "image/png"})
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    assert "token" in _one_sentence(bare)
    assert post(url, image, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(url, image, headers={"Authorization": TOKEN}).status_code == 401
    assert httpx.get(f"{url}/v1/model").status_code == 401
    model = httpx.get(f"{url}/v1/model", headers=AUTH).json()
    assert model["method"] == "uflow" and model["version"] and model["settings"]["image_size"] == 96
    # U-Flow's own verdict (the a contrario test) takes no false-alarm rate without --good: none is recorded
    assert json.loads((uflow_server.out / "settings.json").read_text())["false_alarm_rate"] is None
    assert httpx.get(f"{url}/v1/health").status_code == 200
    spec = httpx.get(f"{url}/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/inspect" in spec["paths"]


def test_a_full_queue_answers_503_with_retry_after(uflow_model, category, tmp_path):
    out = tmp_path / "journal"
    server = Server("--model", str(uflow_model), "--out", str(out), "--token", TOKEN, "--queue-size", "1", "--max-batch", "1", "--batch-window", "0")
    try:
        image = (category / "test" / "spot" / "000.png").read_bytes()
        answers: list = []
        start = threading.Barrier(12)

        def client() -> None:
            start.wait()
            answers.append(post(server.url, image))

        threads = [threading.Thread(target=client) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        statuses = sorted(a.status_code for a in answers)
        assert len(answers) == 12 and set(statuses) == {200, 503}, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1
                assert "queue is full" in _one_sentence(answer)
        assert post(server.url, image).status_code == 200
    finally:
        server.stop()
    ids = [row["id"] for row in journal(out)]
    assert len(ids) == statuses.count(200) + 1 == len(set(ids))


def test_kill_9_under_load_then_restart_loses_and_repeats_no_journal_line(uflow_model, category, tmp_path):
    out = tmp_path / "journal"
    images = [p.read_bytes() for p in _test_images(category)]
    args = ("--model", str(uflow_model), "--out", str(out), "--token", TOKEN, "--max-batch", "4")
    server = Server(*args)
    completed: list[str] = []
    sent = [0]
    stop = threading.Event()

    def client(seed: int) -> None:
        number = seed
        while not stop.is_set():
            sent[0] += 1
            try:
                response = post(server.url, images[number % len(images)], timeout=30)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                completed.append(response.json()["id"])
            number += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while len(completed) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(60)
    assert len(completed) >= 12
    rows = journal(out)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))
    assert set(completed) <= set(ids)
    assert len(ids) - len(completed) <= 4, "more rows than answers sent plus requests in flight"

    again = Server(*args)
    try:
        later = [post(again.url, image).json()["id"] for image in images[:3]]
    finally:
        again.stop()
    rows = journal(out)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a restart repeated an id"
    assert set(completed) | set(later) <= set(ids)
    assert all(row["score"] and row["verdict"] in ("anomalous", "normal") for row in rows)
    raw = (out / "verdicts.csv").read_text(encoding="utf-8")
    assert raw.endswith("\n") and raw.count("\n") == len(rows) + 1

    from defectscope.review import load_run

    run = load_run(out)
    assert len(run.parts) == len(rows) and run.parts[0].verdict in ("anomalous", "normal")


def test_reference_mode_scores_equal_score_good(category, tmp_path):
    from defectscope.pipeline import score_folder

    options = RunOptions(good=category, false_alarm_rate=0.2, threads=1)
    expected = score_folder(category / "test", tmp_path / "scored", options)
    server = Server("--good", str(category), "--false-alarm-rate", "0.2", "--out", str(tmp_path / "journal"), "--no-auth", "--keep-images")
    try:
        for path, score, anomalous, doubt in zip(expected.paths, expected.image_scores, expected.is_anomalous, expected.needs_review):
            response = httpx.post(f"{server.url}/v1/inspect", content=Path(path).read_bytes(), headers={"Content-Type": "image/png"}, timeout=120)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert abs(answer["score"] - score) <= 1e-6, (path, answer["score"], score)
            assert answer["verdict"] == ("anomalous" if anomalous else "review" if doubt else "normal")  # 6 good images: a guard band
            assert answer["threshold"] == pytest.approx(expected.threshold, abs=1e-9)
        model = httpx.get(f"{server.url}/v1/model").json()
        assert model["method"] == "musc" and model["good_images"] == 6 and model["device"] == "cpu"
    finally:
        output = server.stop()
    assert server.process.returncode == 0 and f"stopped; {len(expected.paths)} decisions" in output, output
    from defectscope.review import load_run

    run = load_run(tmp_path / "journal")
    assert run.threshold == pytest.approx(expected.threshold)
    assert all(part.map_file is not None for part in run.parts), "--keep-images writes every overlay"


def test_codegraph_reference_inspector_equals_score_good(category, tmp_path):
    from defectscope.pipeline import score_folder
    from defectscope.serve.inspector import Pending, build_inspector
    from defectscope.data.io import read_image

    options = RunOptions(method="codegraph", good=category, false_alarm_rate=0.2, threads=1, image_size=128)
    expected = score_folder(category / "test", tmp_path / "scored", options)
    inspector = build_inspector(tmp_path / "journal", options, good=category)
    batch = [Pending(id=f"{k:08d}", name="", image=read_image(p), received=time.monotonic(), received_at="") for k, p in enumerate(expected.paths)]
    decisions = inspector.run(batch[:3]) + inspector.run(batch[3:])
    np.testing.assert_allclose([d.score for d in decisions], expected.image_scores, atol=1e-6, rtol=0)
    assert len(journal(tmp_path / "journal")) == len(expected.paths)


def test_serve_refuses_a_folder_of_another_run_and_needs_a_source(category, tmp_path):
    from typer.testing import CliRunner

    from defectscope.cli import app

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--out", str(tmp_path / "j")])
    assert result.exit_code == 2 and "--model" in result.output
    result = runner.invoke(app, ["serve", "--good", str(category), "--out", str(tmp_path / "mine")])
    assert result.exit_code == 2 and "did not write" in result.output


def test_json_answers_send_non_finite_numbers_as_null():
    """A model's facts may hold inf (MuSc's own-image ratio) or nan; the service answers them as
    null in standard JSON instead of failing with a 500 (json.dumps with allow_nan=False raises)."""
    from defectscope.serve.app import _json

    response = _json({"model": {"own_image_ratio": float("inf"), "ap": float("nan"), "scores": [1.5, float("-inf")]}})
    assert response.status_code == 200
    assert json.loads(response.body) == {"model": {"own_image_ratio": None, "ap": None, "scores": [1.5, None]}}
