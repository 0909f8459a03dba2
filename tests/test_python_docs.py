"""docs/PYTHON.md: every example runs, in order, on the folders it names (synthetic, tiny)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from defectscope.data.synthetic import synthetic_images, write_mvtec_category
from image_helpers import save_images

PAGE = Path(__file__).resolve().parents[1] / "docs" / "PYTHON.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_the_examples():
    blocks = examples()
    assert len(blocks) >= 6
    text = "".join(blocks)
    for name in ("ds.score(", "ds.evaluate(", "ds.fit(", "ds.predict(", "ds.load_model(", "ds.MuSc("):
        assert name in text, name


@pytest.mark.slow
def test_every_example_runs(tmp_path, monkeypatch, capsys):
    import torch

    threads = torch.get_num_threads()
    monkeypatch.chdir(tmp_path)
    images, _ = synthetic_images(12, kind="texture", size=64, seed=11, defective=(4, 9), defect="spot")
    save_images(tmp_path / "parts", images)
    good, _ = synthetic_images(8, kind="texture", size=64, seed=12)
    save_images(tmp_path / "good_parts", good)
    write_mvtec_category(tmp_path / "widget", kind="texture", n_train=6, n_test_good=3, n_test_defect=3, size=64, seed=13)
    namespace: dict = {}
    try:
        for number, block in enumerate(examples(), start=1):
            try:
                exec(compile(block, f"docs/PYTHON.md example {number}", "exec"), namespace)
            except Exception as error:  # pragma: no cover - the failure message is the point
                pytest.fail(f"docs/PYTHON.md example {number} failed: {type(error).__name__}: {error}\n{block}")
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "DEFECT" in printed and "image AUROC" in printed
    assert "already exists" in printed or "overwrite" in printed  # the last example's error sentence
    assert (tmp_path / "out" / "parts" / "report.html").is_file()
    assert (tmp_path / "models" / "widget").is_dir()


PUBLIC = ("MuSc", "MuScConfig", "CoDeGraph", "UFlow", "PRN", "Result", "score", "evaluate", "fit", "predict", "load_model")


def test_help_lists_the_public_api_with_docstrings():
    import pydoc

    import defectscope as ds

    text = pydoc.render_doc(ds, renderer=pydoc.plaintext)
    for name in PUBLIC:
        assert name in ds.__all__ and name in dir(ds)
        value = getattr(ds, name)
        assert value.__doc__ and value.__doc__.strip(), name
        assert f"class {name}(" in text or f"{name}(" in text.split("FUNCTIONS", 1)[-1], name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ds.nothing


def test_import_defectscope_stays_light():
    # the CLI imports the package: the public names are loaded on first use, not at import
    import subprocess
    import sys

    code = "import sys, defectscope; print(sorted(m for m in ('torch', 'defectscope.api', 'defectscope.methods.musc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_task_functions_refuse_unknown_options(tmp_path):
    import defectscope as ds
    from defectscope.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option\\(s\\) imagesize"):
        ds.score(tmp_path, tmp_path / "out", imagesize=64)
