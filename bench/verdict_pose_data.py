"""Verdict data of the pose-and-look proxy, from bench/pose_ablation.py's cached similarity tables.

    python bench/pose_ablation.py --threads 1 --only pose/     # once: fills /tmp/pose-cache
    python bench/verdict_pose_data.py --out /tmp/verdict-data-pose [--cache /tmp/pose-cache]

Per cached ``pose__NAME.pt`` batch: default MuSc scores from the cached tables (no feature
extraction; the same steps as pose_ablation's ``base`` variant), stored like bench/verdict_data.py
(labels, map maxima, RsCIN scores, anomaly maps max-pooled by 4, float16) as
``pose_NAME__musc.npz``, so that bench/verdict_rules.py can run map-based rules on them too.
Dev data (bench/pose_proxy.py).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pose_ablation as ablation  # noqa: E402

from defectscope.methods.musc import MuSc, MuScConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pose-cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    detector = MuSc(MuScConfig())
    config = detector.config
    for path in sorted(glob.glob(str(args.cache / "pose__*.pt"))):
        name = Path(path).stem.split("__", 1)[1]
        target = args.out / f"pose_{name}__musc.npz"
        if target.exists():
            continue
        payload = torch.load(path, weights_only=False)
        tables = [torch.stack([payload["tables"][k][i] for k in ablation.TURNS[1]]).amax(dim=0)
                  for i in range(len(payload["tables"]["t0"]))]
        lower, upper, _ = ablation.pose.batch_interval(config, payload["embeddings"])
        scores, _ = ablation.pose.scores_from_tables(
            tables, payload["grid"], payload["embeddings"], lower, upper, self_sims=None, self_term="off",
            self_mix="min", self_gate=config.self_gate, nearest_images=None,
        )
        scores = ablation.calibrate_border(scores, payload["grid"], config.border_depth)
        result = detector.result_from_patch_scores(scores, payload["grid"], payload["embeddings"])
        pooled = F.max_pool2d(torch.from_numpy(result.anomaly_maps).unsqueeze(1), 4).squeeze(1).numpy().astype(np.float16)
        partial = target.with_suffix(".tmp.npz")
        np.savez_compressed(partial, labels=np.array(payload["labels"]), maxima=np.asarray(result.verdict_scores),
                            scores=result.image_scores, maps=pooled)
        partial.rename(target)
        print(name, payload["count"], flush=True)


if __name__ == "__main__":
    main()
