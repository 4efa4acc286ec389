"""The cross-architecture study (`--cross-arch`): one distilled set, every student trained on it with every
teacher as the source of soft labels, written as a teacher × student table and heatmap (the shape of CaO2's
Table 4). It reuses the evaluation stage's trials and Ray execution; only the teacher varies. The set comes from
the pipeline (harness/pipeline.py), made as every other set is.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray

from harness.core.identity import cross_arch_protocol_key, row_key
from harness.core.sets import Manifest
from harness.core.store import ResultStore
from harness.models.protocols import teacher_protocol
from harness.stages.evaluate import EvalTrial, run_trials, student_device
from harness.stages.prepare import load_teacher, prepare_teacher


def _teacher_name(t) -> str:
    options = ", ".join(f"{k} {v}" for k, v in t.arch_kwargs.items())
    return f"{t.arch} ({options})" if options else t.arch


def cross_architecture(suite, real, prepared, manifest: Manifest, out: Path, connect) -> tuple[Path, Path, Path]:
    """Every cross_arch student trained on `manifest`'s set (the suite's cross_arch method at its IPC) under every
    cross_arch teacher's soft labels; returns the table's markdown, CSV and heatmap."""
    c = suite.cross_arch
    protocol = teacher_protocol(suite.protocols).on_device(student_device())  # keyed as its trials run
    teachers = []
    for t in c.teachers:
        source, key, acc = prepare_teacher(suite, real, out, t)
        teachers.append((t, source, key, acc))
    store = ResultStore(out / "results" / f"{suite.name}-cross-arch.jsonl")
    by_hash, trials = {}, []
    for t, source, key, acc in teachers:
        for student in c.students:
            # The teacher is part of the protocol: its identity goes into the protocol hash of the row's key, with
            # the recipe the student trains under (its own, where the suite publishes one).
            phash = cross_arch_protocol_key(protocol.for_student(student).identity_fields(), key)
            by_hash[phash] = (t, source, key, acc)
            for seed in range(c.seeds):
                trials.append(
                    EvalTrial(
                        suite.name,
                        manifest.method,
                        manifest.config_hash,
                        c.ipc,
                        manifest.path,
                        student,
                        protocol.name,
                        phash,
                        seed,
                        manifest.seconds_per_image,
                        manifest.peak_memory_bytes,
                    )
                )
    todo = [tr for tr in trials if not store.has(tr.key())]
    print(
        f"[cross-arch] {len(c.teachers)} teachers × {len(c.students)} students × {c.seeds} seeds on "
        f"{c.method} IPC {c.ipc}: {len(todo)} of {len(trials)} trials to run",
        flush=True,
    )
    if todo:
        connect()
        teacher_refs = {h: ray.put(load_teacher(t, source, real.classes)) for h, (t, source, _, _) in by_hash.items()}
        run_trials(
            todo,
            lambda tr: protocol,
            real,
            store,
            suite,
            prepared,
            teacher_for=lambda tr: teacher_refs[tr.protocol_hash],
            extra_for=lambda tr: {
                "teacher": _teacher_name(by_hash[tr.protocol_hash][0]),
                "teacher_hash": by_hash[tr.protocol_hash][2],
            },
            desc="[cross-arch] trials done",
        )
    wanted = {tr.key() for tr in trials}
    rows = [r for r in store.read() if row_key(r) in wanted]
    return render_cross_arch(suite, rows, teachers, c.students, out / "leaderboard", manifest)


def render_cross_arch(
    suite, rows: list[dict], teachers, students: list[str], out_dir: Path, manifest
) -> tuple[Path, Path, Path]:
    from matplotlib.figure import Figure  # a third of a second to import, for this one figure

    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    names = [_teacher_name(t) + (f" [{acc:.1%}]" if acc is not None else "") for t, _, _, acc in teachers]
    table = (
        df.assign(teacher=df["teacher_hash"].map({key: n for (_, _, key, _), n in zip(teachers, names)}))
        .groupby(["teacher", "student"])["accuracy"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    mean = table.pivot(index="teacher", columns="student", values="mean").reindex(index=names, columns=students)
    stem = f"{suite.name}-cross-arch"
    csv_path, md_path, png_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.png"
    table.to_csv(csv_path, index=False, float_format="%.5f")
    title = (
        f"{suite.name}: students trained on {manifest.method} IPC {manifest.ipc} with each teacher as "
        f"the source of soft labels"
    )
    lines = [
        f"# {title}",
        "",
        "Test accuracy (%) on the real held-out test set, mean over "
        f"{int(table['count'].max())} seed(s); rows: teacher [its own test accuracy], columns: student.",
        "",
        "| teacher | " + " | ".join(students) + " |",
        "|---|" + "---|" * len(students),
    ]
    for name in names:
        cells = [f"{100 * v:.1f}" if pd.notna(v) else "–" for v in mean.loc[name]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    fig = Figure(figsize=(1.6 + 1.4 * len(students), 1.2 + 0.6 * len(names)))  # no pyplot: no global backend
    ax = fig.subplots()
    image = ax.imshow(100 * mean.to_numpy(dtype=float), cmap="viridis")
    ax.set_xticks(range(len(students)), students, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(students)):
            value = mean.iloc[i, j]
            if pd.notna(value):
                ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", color="white", fontsize=9)
    ax.set_xlabel("student")
    ax.set_ylabel("teacher (source of soft labels)")
    ax.set_title(f"{suite.name}: {manifest.method} IPC {manifest.ipc}, test accuracy (%)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return md_path, csv_path, png_path
