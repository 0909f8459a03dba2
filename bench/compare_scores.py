"""Per-image scores, verdicts and metrics of two output trees of bench/scores_unchanged.sh, side by side."""
import csv, json, sys
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
worst = 0.0; n = 0
for f in sorted(a.rglob("scores.csv")):
    g = b / f.relative_to(a)
    ra = {r["path"]: float(r["score"]) for r in csv.DictReader(open(f))}
    rb = {r["path"]: float(r["score"]) for r in csv.DictReader(open(g))}
    assert ra.keys() == rb.keys(), f
    d = max(abs(ra[k] - rb[k]) for k in ra)
    va = [r["verdict"] for r in csv.DictReader(open(f))]; vb = [r["verdict"] for r in csv.DictReader(open(g))]
    worst = max(worst, d); n += len(ra)
    print(f"{str(f.relative_to(a)):40s} images {len(ra):3d}  max |diff| {d:.2e}  verdicts equal {va == vb}")
for f in sorted(a.rglob("metrics.json")):
    ma = json.load(open(f)); mb = json.load(open(b / f.relative_to(a)))
    print(f.relative_to(a), "metrics equal:", ma == mb)
print(f"{n} images, largest difference {worst:.2e}")
