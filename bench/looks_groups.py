"""Does a batch's normal come in separated groups? The signal of the bank's several-looks gate.

For every batch: the global embeddings the reference bank computes (the default MuSc backbone,
one forward pass per image, as :func:`defectscope.methods.featurestore.chunked_feature_sets`
does), then the batch statistics of :mod:`defectscope.methods.pose`:

- ``agree``: the mean pairwise cosine (:func:`embedding_agreement`, the existing gate, 0.89);
- ``separation``: :func:`look_groups`: the best 2-way split of the embeddings' first principal
  component (Otsu on the projections) refined by 2-means in the top 3 principal components;
  the gap between the two groups' centres over their pooled spread along the line through
  them; ``minor``: the smaller group's share;
- ``PC1 bimodality``: Sarle's bimodality coefficient of the first principal component (for
  comparison only; above 5/9 hints at two modes);
- the decisions at the defaults: separated groups (separation >= ``looks_groups``) and the
  bank's several-looks scoring (that and agreement < ``looks_gate``), and the milliseconds
  :func:`look_groups` took.

Batches: all 2,624 elpv cells, all 868 magnetic tiles of ``defectscope evaluate
../shared/datasets/magnetic_tile`` (the seed-0 test half), every category of bench/suite.py,
the two mixed-looks batches of bench/pose_proxy.py and the pose proxy of all of them. The
embeddings are cached under ``--cache`` (one small file per batch).

    python bench/looks_groups.py --cache /tmp/looksgroups --json bench/results/looks_groups.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from defectscope.data import magnetic_tile  # noqa: E402
from defectscope.data.batch import read_batch  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig  # noqa: E402
from defectscope.methods.pose import embedding_agreement, look_groups  # noqa: E402
from defectscope.sample import elpv_root  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def pc1_bimodality(embeddings: torch.Tensor) -> float:
    """Sarle's bimodality coefficient of the unit embeddings' first principal component (above
    5/9 hints at two modes)."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    n = e.shape[0]
    if n < 4:
        return 0.0
    x = e - e.mean(dim=0)
    p = x @ torch.linalg.svd(x, full_matrices=False)[2][0]
    p = (p - p.mean()) / p.std(unbiased=False)
    skew, kurt = float((p**3).mean()), float((p**4).mean()) - 3.0
    return (skew * skew + 1.0) / (kurt + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def batches(shared: Path) -> list[tuple[str, str, list[Path]]]:
    """(name, kind, image paths): kind is what the batch is by construction."""
    from pose_proxy import mixed_categories, pose_category
    from suite import shared_categories

    out = [("elpv (2,624)", "groups: mono / poly cells", sorted((elpv_root() / "images").glob("*.png")))]
    out.append(("magnetic_tile (868)", "one spread", [s.path for s in magnetic_tile(shared / "magnetic_tile", seed=0).test]))
    categories = shared_categories(shared)
    for c in categories:
        out.append((c.name, "one spread" if c.name.startswith("magnetic") else "one look", [s.path for s in c.test]))
    for c in mixed_categories(categories):
        out.append((c.name, "groups: two looks 3:1", [s.path for s in c.test]))
    posed = [pose_category(c) for c in categories]
    for c in posed:
        out.append((c.name + " (pose)", ("one spread" if c.name.startswith("magnetic") else "one look") + ", posed", [s.path for s in c.test]))
    for c in mixed_categories(posed):
        out.append((c.name + " (pose)", "groups: two looks 3:1, posed", [s.path for s in c.test]))
    return out


def embeddings_of(backbone, paths: list[Path], batch_size: int = 8) -> torch.Tensor:
    """The bank's global embeddings of ``paths`` (chunked_feature_sets' forward pass)."""
    images, kept, _ = read_batch(paths)
    assert kept == list(paths)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(backbone.extract(backbone.preprocess(images[start : start + batch_size])).embedding.float().cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--elpv-tables", type=Path, default=Path("/tmp/elpvx/tables_q300_s1_m200.pt"),
                        help="elpv_bank_variants.py's cache: its embeddings are reused when present")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    backbone = None
    config = MuScConfig()
    rows = []
    for name, kind, paths in batches(args.shared):
        file = args.cache / (name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "") + ".pt")
        if file.exists():
            e = torch.load(file)
        elif name.startswith("elpv") and args.elpv_tables.exists():
            e = torch.load(args.elpv_tables)["embeddings"].float()
            torch.save(e, file)
        else:
            started = time.perf_counter()
            if backbone is None:
                backbone = MuSc(MuScConfig()).backbone
            e = embeddings_of(backbone, paths)
            torch.save(e, file)
            print(f"{name}: {len(paths)} embeddings in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        groups = look_groups(e)
        seconds = time.perf_counter() - started
        agreement = embedding_agreement(e)
        rows.append({
            "batch": name, "kind": kind, "n": len(paths), "agreement": agreement, **groups,
            "bimodality": pc1_bimodality(e), "seconds": seconds,
            "groups": groups["separation"] >= config.looks_groups,
            "bank_looks": agreement < config.looks_gate and groups["separation"] >= config.looks_groups,
        })
    print(f"| batch | by construction | N | agreement | separation | minor | PC1 bimodality | groups (>= {config.looks_groups:g}) "
          f"| bank several looks (and agreement < {config.looks_gate:g}) | ms |")
    print("|---" * 10 + "|")
    for r in rows:
        print(f"| {r['batch']} | {r['kind']} | {r['n']} | {r['agreement']:.3f} | {r['separation']:.2f} | {r['minor']:.2f} "
              f"| {r['bimodality']:.3f} | {'yes' if r['groups'] else 'no'} | {'yes' if r['bank_looks'] else 'no'} | {1000 * r['seconds']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
