"""Publish a suite's prepared backbone and teacher into weights/<suite>/, the way a hub ships weights.

    python scripts/publish_weights.py --suite fashion-mnist [--profile leaderboard] [--out runs]

Runs `prepare` for every method of the suite under the profile (which trains whatever the cache under --out lacks:
the suite's backbone, and each further one in `backbones:` that a method samples), copies the inference files (not
the training checkpoints) into weights/<suite>/backbone-<hash>/ and teacher-<hash>/, and writes SHA256SUMS, which
`prepare` verifies before it uses committed weights.
"""

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.config.loader import load_suite  # noqa: E402
from harness.core.cache import REPO_WEIGHTS  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.stages.prepare import prepare  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--profile", default="full")
    p.add_argument("--out", default="runs", type=Path)
    args = p.parse_args()
    suite = load_suite(args.suite, args.profile)
    real = load_real_data(suite.data)
    prepared = prepare(suite, real, args.out, check=False)
    dest = REPO_WEIGHTS / suite.name
    dest.mkdir(parents=True, exist_ok=True)
    trained = [prepared.backbone_source, *(o.source for o in prepared.others.values())]
    for backbone_dir in map(Path, trained):  # .../backbone-<hash>/model
        if backbone_dir.parent.name.startswith("backbone-") and backbone_dir.parent.parent != dest:
            shutil.copytree(backbone_dir, dest / backbone_dir.parent.name / "model", dirs_exist_ok=True)
    teacher_file = Path(prepared.teacher_source)  # .../teacher-<hash>/teacher.pt
    if teacher_file.parent.parent != dest:
        (dest / teacher_file.parent.name).mkdir(exist_ok=True)
        shutil.copy2(teacher_file, dest / teacher_file.parent.name / teacher_file.name)
    lines = []
    for f in sorted(dest.rglob("*")):
        if f.is_file() and f.name not in ("SHA256SUMS", "README.md"):
            lines.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(dest)}")
    (dest / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
