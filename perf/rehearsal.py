"""The rehearsal at true size (issue 25): every method of a suite run for one class on the suite's generator at its
real architecture with random weights (DiT-XL/2-256 and the SD VAE from their configs, timm's ResNet-18 with
`pretrained=False`; no hub, no data), each stage at two batches, on this machine's CPU. Prints per method and stage
the peak memory measured, FLOPs per image counted and the peak predicted at the suite's batch setting; writes the
figures `--plan` and the pre-flight check read to benchmarks/rehearsal/<suite>.json (harness/stages/rehearsal.py).

    python perf/rehearsal.py --suite imagewoof            # measures what no figures file holds yet
    python perf/rehearsal.py --suite imagenet             # reuses imagewoof's figures where the keys agree
    python perf/rehearsal.py --suite imagewoof --again    # measures everything again (after a code change)
    python perf/rehearsal.py --suite imagewoof --table    # prints the committed figures, measuring nothing
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from harness.config.loader import load_suite  # noqa: E402
from harness.runtime.memory_figures import FIGURES_DIR, GB, figures_path, predict_peaks  # noqa: E402
from harness.stages.rehearsal import rehearse_suite  # noqa: E402


def table(figures: dict, suite, folder: Path = FIGURES_DIR) -> list[str]:
    """The figures as a Markdown table: a row per method and stage, then each method's predicted peak."""
    lines = [
        "| method | stage | batch setting (suite) | measured at | peak at 1st batch | peak at 2nd | per sample "
        "| predicted at suite's batch | GFLOP per image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    predictions = predict_peaks(suite, list(figures["methods"]), folder)
    for name, entry in figures["methods"].items():
        if entry.get("not_run"):
            lines.append(f"| {name} | not run: {entry['not_run']} | | | | | | | |")
            continue
        if not entry["stages"]:
            lines.append(f"| {name} | no model stage (nothing on the GPU) | | | | | | | |")
            continue
        for stage, fig in entry["stages"].items():
            setting = fig["batch_setting"] or "fixed in code"
            predicted = fig["static_bytes"] + fig["bytes_per_sample"] * fig["suite_batch"]
            lines.append(
                f"| {name} | {stage} | {setting} = {fig['suite_batch']} | {fig['batches'][0]}, {fig['batches'][1]} "
                f"| {fig['peak_bytes'][0] / GB:.2f} GB | {fig['peak_bytes'][1] / GB:.2f} GB "
                f"| {fig['bytes_per_sample'] / 1e6:,.0f} MB | {predicted / GB:,.1f} GB "
                f"| {fig['flops_per_image'] / 1e9:,.1f} |"
            )
        p = predictions.get(name)
        if p is not None:
            lines.append(f"| {name} | **peak: {p.peak.stage}** | | | | | | **{p.peak.bytes / GB:,.1f} GB** | |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True)
    p.add_argument("--methods", help="a comma-separated subset (default: every method the suite lists)")
    p.add_argument("--again", action="store_true", help="measure every method again, reusing no figures")
    p.add_argument("--table", action="store_true", help="print the committed figures only")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="measure no further method after this long (those left are marked not run; run again to measure them)",
    )
    p.add_argument(
        "--suite-settings-fine-tune",
        action="store_true",
        help="also measure a fine-tune step at the suite's own settings where a method measures its memory slope "
        "with cheaper ones (IMS3's whole inversion path: hours on 2 CPU cores, minutes on a GPU)",
    )
    p.add_argument(
        "--folder", type=Path, default=FIGURES_DIR, help="where the figures files are (default: %(default)s)"
    )
    args = p.parse_args()
    suite = load_suite(args.suite, check_files=False)
    if args.table:
        figures = json.loads(figures_path(suite.name, args.folder).read_text())
        print(f"[rehearsal] {suite.name}: its own measurements took {figures['measuring_seconds']:,.0f} s")
    else:
        methods = args.methods.split(",") if args.methods else list(suite.methods)
        t0 = time.perf_counter()
        command = shlex.join(["python", "perf/rehearsal.py", *sys.argv[1:]])
        budget = args.budget_minutes * 60 if args.budget_minutes is not None else None
        figures = rehearse_suite(
            suite,
            methods,
            args.folder,
            args.again,
            command,
            budget_seconds=budget,
            suite_settings=args.suite_settings_fine_tune,
        )
        print(
            f"[rehearsal] {suite.name}: {time.perf_counter() - t0:,.0f} s of wall time on "
            f"{torch.get_num_threads()} threads; figures in {figures_path(suite.name, args.folder)}"
        )
    print("\n".join(table(figures, suite, args.folder)))


if __name__ == "__main__":
    main()
