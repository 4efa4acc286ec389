"""Export Fashion-MNIST as a grey ImageFolder (`train/<class>/*.png`, `test/<class>/*.png`, mode "L"): the proxy
for "someone else's small dataset" that docs/suites/fashion-proxy.yaml benchmarks.

    python scripts/export_fashion_imagefolder.py --out /tmp/fashion-proxy --per-class 720

The first `--per-class` training images of each class (in file order) and every test image (or the first
`--test-per-class`), read from Debian's dataset-fashion-mnist with harness.models.data's idx reader.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.models.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def export(out: Path, per_class: int | None, test_per_class: int | None = None, root: Path = FASHION_ROOT) -> None:
    from PIL import Image

    for split, limit in (("train", per_class), ("test", test_per_class)):
        data = load_fashion_mnist(root, split)
        for label, name in enumerate(FASHION_MNIST_CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in data.indices_of(label)[:limit].tolist():
                Image.fromarray(data.images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=720, help="training images per class (default 720)")
    p.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all 1,000)")
    args = p.parse_args()
    export(args.out, args.per_class, args.test_per_class)
    print(f"wrote {args.out}/train and {args.out}/test")


if __name__ == "__main__":
    main()
