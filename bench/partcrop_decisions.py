"""part_crop="auto"'s decision on every shared suite batch, the pose proxy and the small-part proxy
(no backbone: only the image statistics of :func:`defectscope.methods.partcrop.plan_batch`).

    python bench/partcrop_decisions.py                 # the table of docs/PARTCROP.md
    python bench/partcrop_decisions.py --only bottle --per-image
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pose_proxy import EDGE_PADDED, mixed_categories, pose_category, small_category  # noqa: E402
from suite import shared_categories  # noqa: E402

from defectscope.methods.partcrop import find_part, plan_batch  # noqa: E402
from defectscope.data.io import read_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--per-image", action="store_true")
    parser.add_argument("--no-pose", action="store_true", help="skip the pose proxy")
    args = parser.parse_args()
    plain = shared_categories()
    batches = [("suite", c) for c in plain]
    if not args.no_pose:
        batches += [("pose", pose_category(c)) for c in plain]
        batches += [("suite", c) for c in mixed_categories(plain)]
    batches += [("small", small_category(c)) for c in plain if c.name in EDGE_PADDED]
    if args.only:
        batches = [(k, c) for k, c in batches if any(c.name.startswith(p) for p in args.only)]
    print("| data | batch | images | plain | part | box < 30 % | median box area | size agreement | square / short side | auto | reason | s/img |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, category in batches:
        images = [read_image(s.path) for s in category.test]
        started = time.perf_counter()
        plan = plan_batch(images, "auto", one_size=False)  # as every caller in the package
        seconds = (time.perf_counter() - started) / len(images)
        f = plan.facts
        side = "n/a" if f["side_share"] is None else f"{100 * f['side_share']:.0f} %"
        print(f"| {kind} | {category.name} | {len(images)} | {100 * f['plain_share']:.0f} % | {100 * f['part_share']:.0f} % | "
              f"{100 * f['small_share']:.0f} % | {100 * f['median_part_area']:.0f} % | {'n/a' if f['size_agreement'] is None else format(f['size_agreement'], '.2f')} | {side} | "
              f"{'crop' if plan.active else 'off'} | {f['reason']} | {seconds:.4f} |", flush=True)
        if args.per_image:
            for sample, image in zip(category.test, images):
                p = find_part(image)
                print(f"    {Path(sample.path).name}: noise {p.noise:.3f} plain {p.plain} box {p.box} area {p.area:.3f}")


if __name__ == "__main__":
    main()
