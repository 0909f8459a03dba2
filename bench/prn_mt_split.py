"""Write the split JSON that ``bench/prn_maps.py --split FILE --only-type T`` reads, from maps saved
by ``bench/bench_prn.py --suite --only magnetic_tile --save-maps FILE.npz`` (the suite mode writes
no split file; the MTD mode does). Each test image's defect type is its ``MT_<Type>`` folder
(``MT_Free``: a normal image, type null).

    python bench/prn_mt_split.py MAPS.npz SPLIT.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def defect_type(path: str) -> str | None:
    """The defect type of a magnetic-tile image path (None for MT_Free)."""
    folder = next((part for part in Path(path).parts if part.startswith("MT_")), None)
    if folder is None:
        raise ValueError(f"{path} is not inside an MT_<Type> folder")
    return None if folder == "MT_Free" else folder[3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", help=".npz from bench_prn.py --save-maps (magnetic tiles)")
    parser.add_argument("out", help="split JSON to write")
    args = parser.parse_args()
    rows = [{"image": str(path), "type": defect_type(str(path))} for path in np.load(args.maps, allow_pickle=True)["paths"]]
    Path(args.out).write_text(json.dumps({"test": rows}))
    print(dict(Counter(row["type"] or "normal" for row in rows)))


if __name__ == "__main__":
    main()
