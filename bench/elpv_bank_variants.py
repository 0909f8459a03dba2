"""Bank-path scoring variants on the elpv cells, from one table of nearest similarities.

Features of all 2,624 cells (the default MuSc configuration), the default bank (200 references,
seed 0) and a seeded sample of query cells; for every (query, reference) pair and feature set the
per-patch nearest similarity is computed once, then each variant (MSM interval; every reference
or only the m references nearest to the query by global embedding) is a reduction of that table.
Image scores: the maps' maximum, then RsCIN over the query sample (a proxy for the full batch's
RsCIN). Prints image AUROC / AP per variant against the package's labels.

    python bench/elpv_bank_variants.py --queries 300 --cache /tmp/elpvx
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data.batch import read_batch
from defectscope.methods.bank import reference_sample
from defectscope.methods.featurestore import chunked_feature_sets
from defectscope.methods.mutual import calibrate_border, similarities_to_distances, to_finest_grid
from defectscope.methods.musc import MuSc, MuScConfig
from defectscope.methods.pose import embedding_agreement
from defectscope.metrics import image_metrics
from defectscope.sample import elpv_root


def labels_of(paths):
    labels = {}
    with open(elpv_root() / "labels.csv", newline="") as handle:
        for row in csv.reader(handle, delimiter=" ", skipinitialspace=True):
            labels[Path(row[0]).name] = (float(row[1]) > 0, row[2])
    return np.array([labels[p.name][0] for p in paths], dtype=int), np.array([labels[p.name][1] for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--references", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted((elpv_root() / "images").glob("*.png"))
    n = len(paths)
    musc = MuSc(MuScConfig())
    chosen = reference_sample(n, args.references, 0)
    queries = np.sort(np.random.default_rng(args.seed).choice(n, size=args.queries, replace=False))
    table_file = args.cache / f"tables_q{args.queries}_s{args.seed}_m{args.references}.pt"
    if table_file.exists():
        saved = torch.load(table_file)
    else:
        started = time.perf_counter()
        images, kept, _ = read_batch(paths)
        assert kept == paths
        features = chunked_feature_sets(musc.backbone, images, musc.config.degrees, 8, native_grids=True, store=None)
        del images
        print(f"features {time.perf_counter() - started:.0f} s", flush=True)
        tables = []
        for s in features.sets:
            refs = s[torch.from_numpy(chosen)].contiguous()
            m, length_r, channels = refs.shape
            flat = refs.reshape(m * length_r, channels)
            t = torch.empty(len(queries), m, s.shape[1])
            for row, q in enumerate(queries):
                t[row] = (s[int(q)] @ flat.T).view(s.shape[1], m, length_r).amax(dim=2).T
            tables.append(t)
            print(f"set {len(tables)} {time.perf_counter() - started:.0f} s", flush=True)
        saved = {"tables": tables, "grid": features.grid, "embeddings": features.embeddings}
        torch.save(saved, table_file)
    tables, grid, embeddings = saved["tables"], tuple(saved["grid"]), saved["embeddings"]
    print("agreement of all", n, "embeddings:", round(embedding_agreement(embeddings), 4))
    labels, kinds = labels_of([paths[int(q)] for q in queries])
    e = torch.nn.functional.normalize(embeddings.float(), dim=1)
    cos = e[torch.from_numpy(queries)] @ e[torch.from_numpy(chosen)].T
    self_mask = torch.from_numpy(queries[:, None] == chosen[None, :])
    cos[self_mask] = -float("inf")
    order = torch.argsort(cos, dim=1, descending=True)
    query_embeddings = embeddings[torch.from_numpy(queries)]
    results = {}
    for lower, upper in [(0.5, 1.0), (0.0, 0.3), (0.0, 0.5), (0.0, 0.1)]:
        for nearest in [None, 100, 50, 20, 10]:
            keep = torch.zeros_like(self_mask)
            count = args.references - 1 if nearest is None else nearest
            if nearest is None:
                keep[:] = True
            else:
                keep.scatter_(1, order[:, :nearest], True)
            keep &= ~self_mask
            total = 0
            for t in tables:
                d = similarities_to_distances(t)
                d = torch.where(keep[:, :, None], d, torch.full_like(d, float("inf")))
                ordered = torch.sort(d, dim=1).values
                counts = keep.sum(dim=1)
                scores = torch.empty(len(queries), t.shape[2])
                for c in torch.unique(counts).tolist():
                    rows = counts == c
                    start = min(int(np.floor(lower * c)), c - 1)
                    end = max(min(int(np.floor(upper * c)), c), start + 1)
                    scores[rows] = ordered[rows, start:end].mean(dim=1)
                total = total + to_finest_grid(scores, grid)
            patch = calibrate_border(total / len(tables), grid, musc.config.border_depth)
            result = musc.result_from_patch_scores(patch, grid, query_embeddings)
            key = f"[{lower},{upper}) nearest={nearest}"
            row = {"all": image_metrics(result.image_scores, labels), "raw": image_metrics(np.array(result.extras["raw_image_scores"]), labels)}
            for kind in ("mono", "poly"):
                k = kinds == kind
                row[kind] = image_metrics(result.image_scores[k], labels[k])["image_auroc"]
            results[key] = row
            print(key, "AUROC %.3f AP %.3f raw-max AUROC %.3f mono %.3f poly %.3f" % (
                row["all"]["image_auroc"], row["all"]["image_ap"], row["raw"]["image_auroc"], row["mono"], row["poly"]), flush=True)
    (args.cache / f"variants_q{args.queries}_s{args.seed}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
