"""The memory guard: impossible requests are refused in one sentence before any heavy work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from defectscope.cli import app
from defectscope.data.synthetic import synthetic_images
from defectscope.errors import ConfigError, MemoryLimitError
from defectscope.memory import INPUT_COPIES, MAX_IMAGE_SIZE, available_memory, check_image_size, check_memory, decoded_bytes, estimate_bytes, guard_run
from defectscope.methods.registry import get_method
from defectscope.options import RunOptions
from image_helpers import save_images

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path):
    folder = tmp_path / "parts"
    save_images(folder, synthetic_images(4, size=64, seed=1)[0], "p{}.png")
    return folder


def test_image_size_cap_is_refused_at_once(folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match=f"beyond the largest supported input of {MAX_IMAGE_SIZE}"):
        check_image_size(100_000)
    check_image_size(MAX_IMAGE_SIZE)
    for method in ("score", "evaluate"):
        out = runner.invoke(app, [method, str(folder), "--out", str(tmp_path / method), "--image-size", "100000"])
        assert out.exit_code == 2 and "--image-size 100000 is beyond" in out.output and "Traceback" not in out.output
        assert not (tmp_path / method).exists()
    fit = runner.invoke(app, ["fit", str(folder), "--method", "uflow", "--out", str(tmp_path / "m"), "--param", "image_size=100000"])
    assert fit.exit_code == 2 and "beyond the largest supported input" in fit.output


def test_image_size_the_backbone_cannot_take_is_refused_before_reading_images(folder, tmp_path) -> None:
    (folder / "broken.png").write_bytes(b"not an image")
    out = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o"), "--image-size", "100"])
    assert out.exit_code == 2 and "multiple of 32" in out.output and "broken.png" not in out.output


def test_estimate_grows_with_the_pairwise_tables() -> None:
    small = estimate_bytes(count=10, image_size=224, batch_size=8, feature_floats=1000, patches=784, tables=3)
    large = estimate_bytes(count=100, image_size=224, batch_size=8, feature_floats=1000, patches=784, tables=3)
    assert large - small >= 3 * (100**2 - 10**2) * 784 * 4


def test_check_memory_names_a_size_and_a_count_that_fit() -> None:
    def need(count: int, size: int) -> int:
        return count * count * size * size

    check_memory(need, 10, 256, available=10 * 10 * 256 * 256)
    with pytest.raises(MemoryLimitError) as error:
        check_memory(need, 10, 256, available=10 * 10 * 128 * 128)
    message = str(error.value)
    assert "needs about" in message and "--image-size such as 128" in message and "at most 5 images" in message


def test_guard_refuses_a_batch_too_large_with_an_injected_limit(folder) -> None:
    detector = get_method("musc").build(RunOptions(image_size=64))
    paths = sorted(folder.glob("*.png"))
    assert decoded_bytes(paths) == 4 * 64 * 64 * 3
    guard_run(detector, paths, available=10**12)
    needed = INPUT_COPIES * decoded_bytes(paths) + detector.memory_needed(len(paths))
    with pytest.raises(MemoryLimitError, match="images at 64 px needs about"):
        guard_run(detector, paths, available=needed - 1)


def test_cli_refuses_when_the_machine_has_too_little_memory(folder, tmp_path) -> None:
    out = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o"), "--image-size", "64"], env={"DEFECTSCOPE_MEMORY_LIMIT": "100000"})
    message = " ".join(out.output.split())
    assert out.exit_code == 2 and "of memory but 0.1 MiB is available" in message and "Traceback" not in message
    assert not (tmp_path / "o").exists()


def test_available_memory_is_read_from_the_machine(monkeypatch) -> None:
    monkeypatch.delenv("DEFECTSCOPE_MEMORY_LIMIT", raising=False)
    available = available_memory()
    assert available is None or available > 0
    monkeypatch.setenv("DEFECTSCOPE_MEMORY_LIMIT", "12345")
    assert available_memory() == 12345
