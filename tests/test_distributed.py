"""--scheduler: MuSc on a Dask LocalCluster of 2 workers gives the single-process scores."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from defectscope.data.synthetic import synthetic_images
from defectscope.errors import ConfigError
from defectscope.methods.musc import MuSc, MuScConfig

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore:mutual scoring of only")


@pytest.fixture(scope="module")
def cluster_address():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("max_references,strip", [(None, False), (4, False), (None, True)])
def test_dask_scores_equal_the_local_run(cluster_address, max_references, strip, monkeypatch):
    """Also on 64 x 128 strips: the cluster keeps the batch's aspect as the local run does."""
    from defectscope.methods import distributed as dist

    monkeypatch.setattr(dist, "CHUNK", 5)
    images, _ = synthetic_images(13, kind="texture", size=128, defective=(3,), seed=5, defect="spot")
    if strip:
        images = [image[32:96] for image in images]
    local = MuScConfig(image_size=128, max_references=max_references, batch_size=4)
    expected = MuSc(local).predict(images)
    if strip:
        assert expected.anomaly_maps.shape[1] * 2 == expected.anomaly_maps.shape[2]
    raw = MuSc(dataclasses.replace(local, border_depth=0)).predict(images)
    assert abs(raw.image_scores - expected.image_scores).max() > 1e-3, "the border rule must be active at this size"
    stages: list[str] = []
    got = MuSc(dataclasses.replace(local, scheduler=cluster_address)).predict(images, progress=lambda stage, done, total: stages.append(stage))
    assert torch.allclose(torch.from_numpy(got.anomaly_maps), torch.from_numpy(expected.anomaly_maps), atol=1e-5)
    assert abs(got.image_scores - expected.image_scores).max() < 1e-5
    assert {"features", "scoring"} <= set(stages)


def test_bad_scheduler_is_refused_in_one_sentence():
    images, _ = synthetic_images(3, kind="texture", size=64, seed=1)
    with pytest.raises(ConfigError, match="scheduler 'nowhere'"):
        MuSc(MuScConfig(image_size=64, scheduler="nowhere")).predict(images)
