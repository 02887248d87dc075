"""Write the small DSB2018 subset bundled with the package (CC0, BBBC038).

The demo must run with nothing outside the repository, so it trains on a copy of
40 train and 10 val images. Images are chosen deterministically, stratified by
image kind (size), and limited to the smaller kinds to keep the wheel small.

    python tools/make_dsb2018_mini.py ../shared/data/dsb2018 src/instseg/assets/dsb2018_mini
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

QUOTA = {
    "train": {(256, 256): 20, (320, 256): 8, (360, 360): 6, (696, 520): 6},
    "val": {(256, 256): 5, (320, 256): 2, (360, 360): 1, (696, 520): 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    rng = random.Random(0)
    for split, quota in QUOTA.items():
        coco = json.loads((args.src / "annotations" / f"instances_{split}.json").read_text())
        by_size = defaultdict(list)
        for image in sorted(coco["images"], key=lambda im: im["file_name"]):
            by_size[(image["width"], image["height"])].append(image)
        chosen = [im for size, n in quota.items() for im in rng.sample(by_size[size], n)]
        keep = {im["id"] for im in chosen}
        out = {
            "info": {
                **coco.get("info", {}),
                "description": f"DSB2018 mini subset ({split}) bundled with instseg",
            },
            "licenses": coco.get("licenses", []),
            "images": chosen,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
            "categories": coco["categories"],
        }
        (args.dst / split).mkdir(parents=True, exist_ok=True)
        (args.dst / "annotations").mkdir(parents=True, exist_ok=True)
        for image in chosen:
            shutil.copyfile(args.src / split / image["file_name"], args.dst / split / image["file_name"])
        (args.dst / "annotations" / f"instances_{split}.json").write_text(json.dumps(out))
        print(f"{split}: {len(chosen)} images, {len(out['annotations'])} instances")


if __name__ == "__main__":
    main()
