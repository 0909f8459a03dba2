"""--device: refused when absent, and honoured by every stage of every method.

There is no second device on a CPU-only machine, so the stages are checked with a stand-in:
:class:`DeviceSpy` (a torch function mode) treats every tensor moved or created with
``device=<the run's device>`` (and every parameter of a module moved there) as living "on the
device", every tensor computed from such tensors as on the device too, and ``.cpu()`` as the way
back. It records what a real GPU would refuse: an operation mixing a device tensor with a host
tensor (other than a scalar or an index), and ``.numpy()`` of a device tensor. Each method then
runs under the spy with ``device="cpu"`` (named explicitly, so the code must place its tensors),
and wrappers around the stages (features, mutual scoring, RsCIN, the bank, CoDeGraph's tables,
U-Flow's flow, PRN's head, the rolling bank, the maps) check that their inputs arrived on the
device. A stage that computes on the host (features brought back with ``.cpu()`` before scoring,
a table created without ``device=``, RsCIN through numpy) makes these tests fail.
"""

from __future__ import annotations

import sys
import weakref
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from defectscope.data.synthetic import synthetic_images
from defectscope.errors import ConfigError
from defectscope.options import RunOptions

TARGET = torch.device("cpu")


class OnDevice(torch.Tensor):
    """Marks a tensor as living on the run's device (behaves as a plain tensor otherwise)."""

    __torch_function__ = torch._C._disabled_torch_function_impl


def _device_of(args, kwargs) -> torch.device | None:
    for value in [*args, kwargs.get("device")]:
        if isinstance(value, torch.device):
            return value
        if isinstance(value, str) and value in ("cpu", "cuda", "mps") or isinstance(value, str) and value.startswith("cuda:"):
            return torch.device(value)
    return None


class DeviceSpy(TorchFunctionMode):
    """See the module docstring."""

    HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__array__, torch.Tensor.tolist, torch.Tensor.item}
    INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
    CROSS_DEVICE = {torch.Tensor.copy_}
    """Operations a GPU performs between devices (a copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []
        self.params: dict[int, weakref.ref] = {}
        self.paused = 0
        """Inside ``Module.to`` (its own bookkeeping mixes the old and the moved tensors)."""

    def mark(self, tensor: torch.Tensor) -> None:
        self.params[id(tensor)] = weakref.ref(tensor)

    def on(self, tensor: torch.Tensor) -> bool:
        if isinstance(tensor, OnDevice):
            return True
        known = self.params.get(id(tensor))
        return known is not None and known() is tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on = [t for t in flat if self.on(t)]
        name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        if on and func in (torch.Tensor.numpy, torch.Tensor.__array__):
            self.violations.append(f"{name}() of a device tensor (a GPU tensor needs .cpu() first)")
        if on and func not in self.HOST and func not in self.CROSS_DEVICE and not self.paused:
            host = [t for t in flat if not self.on(t) and t.dim() > 0]
            if func in self.INDEXING:
                host = [t for t in host if t.dtype not in (torch.bool, torch.long, torch.int32)]
            if host:
                self.violations.append(f"{name} mixes device and host tensors of shapes {[tuple(t.shape) for t in host]}")
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu and isinstance(out, OnDevice):
            return out.as_subclass(torch.Tensor)  # on a CPU stand-in .cpu() returns the tensor itself
        moved = func is torch.Tensor.to and _device_of(args[1:], kwargs) == TARGET or (
            func is not torch.Tensor.to and kwargs.get("device") is not None and torch.device(kwargs["device"]) == TARGET)
        if func in self.HOST or not (on or moved):
            return out
        if func is torch.Tensor.to and on and _device_of(args[1:], kwargs) not in (None, TARGET):
            return out
        def tag(value):
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                return value.as_subclass(OnDevice)
            return value

        if isinstance(out, torch.Tensor):
            return tag(out)
        if isinstance(out, list):
            return [tag(v) for v in out]
        if isinstance(out, tuple) and any(isinstance(v, torch.Tensor) for v in out):
            items = [tag(v) for v in out]
            try:
                return type(out)(items)  # tuples and torch's return types (topk, max, ...)
            except TypeError:
                return type(out)(*items)  # named tuples
        return out


class Stages:
    """Wrap stage functions everywhere they are bound; record whether their first tensor
    argument was on the device."""

    def __init__(self, spy: DeviceSpy, monkeypatch) -> None:
        self.spy, self.monkeypatch = spy, monkeypatch
        self.seen: dict[str, list[bool]] = defaultdict(list)

    def watch(self, label: str, owner, attribute: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if tensors:
                self.seen[label].append(self.spy.on(tensors[0]))
            return original(*args, **kwargs)

        if isinstance(owner, type):
            self.monkeypatch.setattr(owner, attribute, wrapper)
            return
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("defectscope") and getattr(module, attribute, None) is original:
                self.monkeypatch.setattr(module, attribute, wrapper)

    def check(self, *labels: str) -> None:
        assert not self.spy.violations, "\n".join(dict.fromkeys(self.spy.violations))
        for label in labels:
            assert self.seen[label], f"stage {label} never ran"
            assert all(self.seen[label]), f"stage {label} got host tensors {self.seen[label].count(False)} of {len(self.seen[label])} times"


@pytest.fixture
def spied(monkeypatch):
    """(spy, stages): modules moved to the device mark their parameters and buffers."""
    spy = DeviceSpy()
    original_to = torch.nn.Module.to

    def module_to(module, *args, **kwargs):
        spy.paused += 1
        try:
            out = original_to(module, *args, **kwargs)
        finally:
            spy.paused -= 1
        if _device_of(args, kwargs) == TARGET:
            for tensor in [*module.parameters(), *module.buffers()]:
                spy.mark(tensor)
        return out

    monkeypatch.setattr(torch.nn.Module, "to", module_to)
    # One worker: the scoring loops then run in this thread (a torch function mode is per thread),
    # which is also the path they take on a GPU.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)
    stages = Stages(spy, monkeypatch)
    from defectscope.methods import bank, codegraph, musc, rolling, smoothing

    stages.watch("features", musc, "lnamd")
    stages.watch("mutual scoring", musc, "nearest_similarities")
    stages.watch("reference scoring", musc, "reference_scores")
    stages.watch("rscin", musc, "rscin")
    stages.watch("bank", bank, "_query_topk")
    stages.watch("codegraph tables", codegraph, "neighbour_burnout")
    stages.watch("codegraph re-scoring", codegraph, "excluded_interval_mean")
    stages.watch("rolling bank", rolling, "_both_directions")
    stages.watch("maps", smoothing, "gaussian_blur")
    return spy, stages


def _images(count: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    images, _ = synthetic_images(count, kind="texture", size=size, seed=seed, defect="spot")
    return list(images)


def _build(method: str, **settings):
    from defectscope.methods.registry import get_method

    return get_method(method).build(RunOptions(method=method, image_size=64, device="cpu", method_options=settings))


def test_an_absent_device_is_refused_in_one_sentence_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from defectscope.cli import app
    from defectscope.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            RunOptions(device=name)
    with pytest.raises(ConfigError, match="not a device"):
        RunOptions(device="gpu")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="1 CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    for command in (["score", str(tmp_path), "--out", str(tmp_path / "o")], ["fit", str(tmp_path), "--method", "uflow", "--out", str(tmp_path / "m")],
                    ["watch", str(tmp_path), "--out", str(tmp_path / "w")], ["serve", "--good", str(tmp_path), "--out", str(tmp_path / "s")],
                    ["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p")], ["evaluate", str(tmp_path), "--out", str(tmp_path / "e")]):
        result = runner.invoke(app, [*command, "--device", "cuda"])
        assert result.exit_code == 2 and "CUDA is not available" in result.output, (command, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_memory_guard_uses_the_gpu_free_memory(monkeypatch):
    from defectscope import device as device_module
    from defectscope.errors import MemoryLimitError
    from defectscope.memory import guard_run

    from pathlib import Path

    detector = _build("musc")
    paths = [Path(f"missing{k}.png") for k in range(50)]
    monkeypatch.setattr(device_module, "device_free_memory", lambda device: 1_000)
    with pytest.raises(MemoryLimitError, match="of cpu memory but"):
        guard_run(detector, paths)
    monkeypatch.setattr(device_module, "device_free_memory", lambda device: None)
    guard_run(detector, paths)


def test_the_spy_catches_a_host_tensor_and_numpy_of_a_device_tensor():
    with DeviceSpy() as spy:
        on = torch.ones(3).to(TARGET)
        _ = on + torch.ones(3)
        _ = on + 1.0
        _ = on[torch.tensor([0, 1])]
        _ = on.cpu().numpy()
        _ = on.numpy()
    assert len(spy.violations) == 2, spy.violations


def test_musc_zero_shot_bank_and_reference_mode_stay_on_the_device(spied):
    spy, stages = spied
    images = _images(6)
    with spy:
        result = _build("musc").predict(images)
        banked = _build("musc", max_references=2).predict(images)
        reference = _build("musc").calibrate(_images(5, seed=3), 0.2).predict(images[:2])
        tiled = _build("musc", tiles=2).predict(images[:4])
    stages.check("features", "mutual scoring", "rscin", "bank", "reference scoring", "maps")
    for outcome in (result, banked, reference, tiled):
        assert isinstance(outcome.anomaly_maps, np.ndarray) and np.isfinite(outcome.image_scores).all()


def test_codegraph_tables_and_re_scoring_stay_on_the_device(spied):
    pytest.importorskip("leidenalg")
    spy, stages = spied
    detector = _build("codegraph")
    with spy:
        scores = detector.analyse(_images(6), groups=[[0, 1]])
        result = detector.result(scores)
    stages.check("features", "mutual scoring", "codegraph tables", "codegraph re-scoring", "rscin", "maps")
    assert result.image_scores.shape == (6,)


def test_the_watch_rolling_bank_stays_on_the_device(spied):
    from defectscope.watch import ZeroShotScorer

    spy, stages = spied
    scorer = ZeroShotScorer(_build("musc"), false_alarm_rate=0.2, bank_size=6, min_bank=3)
    rows = []
    with spy:
        for number, image in enumerate(_images(5)):
            rows += scorer.score(f"image{number}", image, 0.0)
    stages.check("features", "rolling bank", "maps")
    assert len(rows) == 5


def test_uflow_training_inference_and_loading_stay_on_the_device(spied, monkeypatch, tmp_path):
    pytest.importorskip("FrEIA")
    from defectscope.methods.uflow.detector import UFlow
    from defectscope.methods.uflow.flow import UFlowNet

    spy, stages = spied
    stages.watch("flow", UFlowNet, "forward")
    detector = _build("uflow", epochs=1, min_epoch_samples=4, batch_size=4)
    with spy:
        detector.fit(_images(10))
        first = detector.predict(_images(2, seed=5))
    detector.save(tmp_path / "model")
    with spy:
        again = UFlow.load(tmp_path / "model", device="cpu").predict(_images(2, seed=5))
    stages.check("flow", "maps")
    np.testing.assert_allclose(first.image_scores, again.image_scores, rtol=0, atol=1e-6)


def test_prn_training_and_inference_stay_on_the_device(spied):
    from defectscope.methods.prn.model import PRNHead

    spy, stages = spied
    stages.watch("prn head", PRNHead, "forward")
    images, masks = synthetic_images(4, kind="texture", size=64, seed=1, defect="spot")
    anomalies = [(image, mask) for image, mask in zip(images, masks) if mask.any()][:2]
    detector = _build("prn", epochs=1, samples_per_epoch=4, batch_size=2, top_k=10)
    with spy:
        detector.fit(_images(4), anomalies)
        result = detector.predict(_images(2, seed=5))
    stages.check("prn head")
    assert result.image_scores.shape == (2,)


def test_the_device_reaches_the_config_of_every_method():
    from defectscope.methods.registry import METHODS

    for name, entry in METHODS.items():
        config = entry.make_config(RunOptions(method=name, device="cpu"))
        assert config.device == "cpu", name
        assert replace(config, device="auto").device == "auto"
