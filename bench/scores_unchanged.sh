#!/bin/bash
# usage: bench/scores_unchanged.sh SRC OUTDIR [DATADIR]: score/evaluate runs with PYTHONPATH=SRC (before/after a restructuring);
# compare two OUTDIRs with bench/compare_scores.py BEFORE AFTER
set -e

export PYTHONPATH=$1
O=$2; mkdir -p $O
D=${3:-/tmp/scores_unchanged_data}
if [ ! -d $D ]; then
python - "$D" <<'PY'
import sys
from defectscope.data.synthetic import write_mvtec_category, synthetic_images
from PIL import Image
from pathlib import Path
write_mvtec_category(sys.argv[1] + "/cat", kind="object", n_train=8, n_test_good=6, n_test_defect=4, size=128, seed=3)
imgs,_ = synthetic_images(12, kind="texture", size=128, defective=(2,7), seed=5)
p=Path(sys.argv[1]) / "folder"; p.mkdir(parents=True)
for i,a in enumerate(imgs): Image.fromarray(a).save(p/f"{i:02d}.png")
PY
fi
H=$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets/hazelnut_toy
py="python -m defectscope"
$py score $D/folder -o $O/s_folder --threads 1 --image-size 128
$py score $D/folder -o $O/s_folder_cg --threads 1 --image-size 128 -m codegraph
$py score $D/cat/test -o $O/s_cat_good --threads 1 --image-size 128 --good $D/cat --false-alarm-rate 0.2
$py evaluate $D/cat -o $O/e_cat_uflow --threads 1 -m uflow --epochs 1 --image-size 128
$py evaluate $D/cat -o $O/e_cat_prn --threads 1 -m prn --epochs 1 --kshot 1 --image-size 128
$py evaluate $H -o $O/e_hazel --threads 1
$py score $H/test -o $O/s_hazel_good --threads 1 --good $H
