"""The pipeline: one invocation's stages and what each produces, made once, when first asked for.

A `Run` owns the suite, the prepared models, the fine-tunes, the sets to make (with the searched configs that are
rows of their own, and their labels), the manifests, the result store and the board's rows. Every verb of the
command line is a question put to it: `board` (run, site), `cross_arch_study`, `search`, `plan`, `compare` and
`export` each ask for what they need, and what they do not ask for is never made. The stages below know nothing
of it: it passes them what they need.
"""

from __future__ import annotations

import functools
import time
from functools import cached_property
from pathlib import Path

from harness.config.evaluate_args import check_protocol_names, parse_normalisation
from harness.config.flag_checks import has_set_on_disk, methods_without_rows, no_rows_message, no_set_message
from harness.config.loader import load_suite
from harness.config.schema import Suite
from harness.core.identity import FULL_DATA, identity_fields, row_key
from harness.core.lock import output_lock
from harness.core.sets import Manifest
from harness.core.store import ResultStore
from harness.models.data import SHOWN_UNREADABLE, RealData, load_real_data
from harness.report.compare import compare, mark_failed
from harness.report.compare import lines as compare_lines
from harness.report.export import export_set
from harness.report.leaderboard import render
from harness.report.markdown import protocols_note
from harness.report.plan import make_plan
from harness.report.rows import (
    board_order,
    cell_rows,
    failed_check_cells,
    searched_label,
    trained_under,
    with_searched_labels,
)
from harness.report.site import build_site
from harness.runtime.cluster import connector
from harness.runtime.preflight import DEFAULT_GPU_MEMORY_GB, check_out_dir
from harness.stages.cross_arch import cross_architecture
from harness.stages.distill import DistillJob, distill, plan
from harness.stages.diversity import measure_sets
from harness.stages.evaluate import evaluate, full_data_protocol, plan_trials, run_trials, student_device
from harness.stages.external import (
    ExternalSet,
    check_and_build,
    check_leakage,
    check_name,
    items_from_arrays,
    store_set,
    stored_external_sets,
    suite_classes,
    with_reported,
)
from harness.stages.fine_tune import fine_tune_backbones, needed_fine_tunes
from harness.stages.prepare import Prepared, prepare
from harness.stages.search import SearchSpec, run_search, write_outputs
from methods import get_method

SEARCHED_NOTE = (
    "rows labelled 'searched on val (N trials)': the method's config chosen by N trials of a "
    "hyperparameter search on the validation split (harness/stages/search.py), beside the suite's own"
)


def generators_note(suite: Suite, methods: list[str]) -> str | None:
    """Which generator made which rows, where `methods` sample more than one (`Suite.backbones`)."""
    by_kind: dict[str, list[str]] = {}
    for name in methods:
        if "backbone" in get_method(name).needs_for(suite.method_config(name)):
            by_kind.setdefault(suite.backbone_of(name).kind, []).append(name)
    if len(by_kind) < 2:
        return None
    said = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items())
    return f"generators (rows by the backbone they sample): {said}"


class RunError(Exception):
    """What --out holds cannot answer the question (no such set, no such cell); one line."""


def _holding_out(mode):
    """A mode that writes under --out runs holding its lock (harness/core/lock.py): one run per --out at a time."""

    @functools.wraps(mode)
    def locked(self, *args, **kwargs):
        with output_lock(self.out):
            return mode(self, *args, **kwargs)

    return locked


def current_recipes(suite, prepared, rows: list[dict]) -> set[tuple[str, str]]:
    """(student, protocol hash) of every recipe the board shows: the one each student trains under now in each
    protocol (a searched per-student recipe is that student's alone), and the full-data recipe."""
    students = set(suite.students) | {r.get("student") for r in rows}
    device = student_device()  # a recipe whose precision follows the device: as this run's trials key it
    recipes = {
        (s, prepared.protocol_hash(p.for_student(s).on_device(device)))
        for p in suite.protocols.values()
        for s in students
    }
    if suite.full_data.epochs:  # full_data.epochs 0: no full-data row, and no recipe of 0 epochs to build
        recipes |= {(s, full_data_protocol(suite).identity()) for s in students}
    return recipes


class Run:
    """One invocation. `methods` are the board's; `make` False reads the sets and results --out holds and makes
    none (site, compare, export), so it needs no cluster; `cross_arch` makes the suite's cross-architecture set
    instead of the board's. `real` may be None for the questions that need no data (the plan). `recorded` (with
    `make` False) are manifests of sets --out does not hold, as a board recorded them (scripts/redraw_board.py
    rebuilds them from a board's cost and diversity tables): each current set not on disk is shown by its recorded
    manifest, if it has one, so a board can be redrawn without every set it shows. `samples` False: the run only
    trains students on a set made elsewhere, and prepares no backbone."""

    def __init__(
        self,
        suite,
        methods: list[str],
        out: Path,
        real=None,
        address: str | None = None,
        check: bool = True,
        accept_failed_check: bool = False,
        make: bool = True,
        cross_arch: bool = False,
        command: str = "",
        recorded: list[Manifest] | None = None,
        samples: bool = True,
    ):
        self.suite, self.methods, self.real = suite, list(methods), real
        self.recorded = list(recorded or [])
        self.given_out = Path(out)  # as the user wrote it, for what is printed
        self.out = self.given_out.absolute()  # workers resolve a relative path against their own working directory
        self.address, self.check, self.accept_failed_check = address, check, accept_failed_check
        self.make, self.cross_arch, self.command = make, cross_arch, command
        self.samples = samples  # False: this run only trains students on a given set; no backbone is prepared
        self.t0 = time.perf_counter()

    # What the suite alone decides: the plan asks for these too, before any data or model is there.

    @cached_property
    def set_methods(self) -> list[str]:
        """The methods whose sets this run makes or reads."""
        return [self.suite.cross_arch.method] if self.cross_arch else self.methods

    @cached_property
    def ipcs(self) -> list[int]:
        return [self.suite.cross_arch.ipc] if self.cross_arch else list(self.suite.ipcs)

    @cached_property
    def searched(self) -> list[str]:
        """The methods whose searched config is a set of its own beside the suite's config, shown as its own row.
        A searched config equal to the suite's in what makes a set is the same set: its rows are the method's own."""
        if self.cross_arch:
            return []
        return [
            name
            for name in self.set_methods
            if name in self.suite.searched
            and identity_fields(self.suite.searched_config(name)) != identity_fields(self.suite.method_config(name))
        ]

    @cached_property
    def fine_tunes(self) -> dict:
        """The distinct fine-tunes the sets sample from (harness/stages/fine_tune.py: `needed_fine_tunes`)."""
        return needed_fine_tunes(self.suite, self.set_methods)

    # The stages, each run once.

    @cached_property
    def connect(self):
        return connector(self.address, self.out)  # attaches a named cluster now; starts a local one only when needed

    @cached_property
    def prepared(self) -> Prepared:
        """The suite's models, with the fine-tuned backbones the sets sample from. Cross-arch checks no fine-tune:
        its table has no notes to show the check in."""
        base = prepare(
            self.suite,
            self.real,
            self.out,
            check=self.check,
            connect=self.connect,
            methods=self.set_methods,
            accept_failed_check=self.accept_failed_check,
            backbone=self.samples,
        )
        if not self.samples:
            return base
        return fine_tune_backbones(
            self.suite,
            self.real,
            base,
            self.out,
            self.set_methods,
            self.connect,
            check=self.check and not self.cross_arch,
            make=self.make,
        )

    @cached_property
    def own_jobs(self) -> list[DistillJob]:
        """The sets of the suite's own configs."""
        return plan(self.suite, self.prepared, self.out, self.set_methods, self.ipcs)

    @cached_property
    def searched_jobs(self) -> dict[str, list[DistillJob]]:
        """The sets of the searched configs that are rows of their own, by method."""
        s = self.suite
        return {
            name: plan(s.with_method_config(name, s.searched_config(name)), self.prepared, self.out, [name], self.ipcs)
            for name in self.searched
        }

    @cached_property
    def jobs(self) -> list[DistillJob]:
        return self.own_jobs + [job for jobs in self.searched_jobs.values() for job in jobs]

    @cached_property
    def labels(self) -> dict[tuple[str, str], str]:
        """(method, config hash) → its board label, for the configs a search chose."""
        return {
            (name, jobs[0].config_hash): searched_label(name, self.suite.searched[name].trials)
            for name, jobs in self.searched_jobs.items()
        }

    @cached_property
    def manifests(self) -> list[Manifest]:
        if not self.make:
            recorded = {(m.method, m.config_hash, m.ipc): m for m in self.recorded}
            return [
                Manifest.read(j.path) if j.done() else recorded[(j.method, j.config_hash, j.ipc)]
                for j in self.jobs
                if j.done() or (j.method, j.config_hash, j.ipc) in recorded
            ]
        return distill(self.suite, self.real, self.prepared, self.jobs, self.connect)

    @cached_property
    def store(self) -> ResultStore:
        return ResultStore(self.out / "results" / f"{self.suite.name}.jsonl")

    @cached_property
    def current(self) -> set[tuple[str, str]]:
        """The sets the board shows: those of this run's configs, and the full-data reference."""
        return {(j.method, j.config_hash) for j in self.jobs} | {(FULL_DATA, self.real.train.fingerprint()[:12])}

    @cached_property
    def recipes(self) -> set[tuple[str, str]]:
        return current_recipes(self.suite, self.prepared, self.store.read())

    @cached_property
    def notes(self) -> list[str]:
        """The board's notes: the models behind it, their checks, the protocols, the suite's own notes."""
        prepared = self.prepared
        notes = [prepared.teacher_note()]
        if prepared.backbone_check:
            c = prepared.backbone_check
            notes.append(
                f"backbone check: the teacher agrees with the conditioning class on {c['agreement']:.1%} of "
                f"{c['samples']} samples (cfg {c['cfg_scale']}, {c['steps']} DDIM steps)"
            )
        for kind, other in prepared.others.items():
            if other.check:
                c = other.check
                notes.append(
                    f"backbones.{kind} check: the teacher agrees with the conditioning class on {c['agreement']:.1%} "
                    f"of {c['samples']} samples (cfg {c['cfg_scale']}, {c['steps']} steps)"
                )
        if generators := generators_note(self.suite, self.methods):
            notes.append(generators)
        for name, tuned in prepared.fine_tuned.items():
            if tuned.check is not None:
                c = tuned.check
                notes.append(
                    f"{name}'s fine-tuned backbone ({tuned.hash}, {tuned.cost['steps']} steps): the "
                    f"teacher agrees with the conditioning class on {c['agreement']:.1%} of {c['samples']} "
                    "samples"
                )
        notes.append(protocols_note(self.suite.protocols))
        if self.real is not None and self.real.unreadable:
            shown = ", ".join(self.real.unreadable[:SHOWN_UNREADABLE])
            more = (
                f" and {len(self.real.unreadable) - SHOWN_UNREADABLE} more"
                if len(self.real.unreadable) > SHOWN_UNREADABLE
                else ""
            )
            notes.append(
                f"data.skip_unreadable: {len(self.real.unreadable)} unreadable images left out of the data ({shown}"
                f"{more})"
            )
        notes += self.suite.notes
        if self.labels:
            notes.append(SEARCHED_NOTE)
        return notes

    # The questions: each mode of the command line.

    def header(self) -> None:
        s = self.suite
        print(
            f"[suite] {s.name}: {len(self.methods)} methods × IPC {s.ipcs} × {len(s.students)} students × "
            f"{len(s.protocols)} protocols × {s.seeds} seeds → {self.out}",
            flush=True,
        )

    def _elapsed(self) -> str:
        return f"({time.perf_counter() - self.t0:.0f} s)"

    @_holding_out
    def board(self) -> tuple[Path, Path, Path]:
        """The sets, their measures, the trials (when this run makes things), then the board and the site.
        Returns the board's markdown and CSV and the site's page."""
        self.header()
        manifests, store, recipes = self.manifests, self.store, self.recipes
        # a recorded manifest (not on disk) brings its measures with it
        measure_sets(self.suite, self.real, self.prepared, [m for m in manifests if m.on_disk], self.out)
        if self.make:
            evaluate(
                self.suite,
                self.real,
                manifests,
                store,
                self.suite.students,
                self.suite.seeds,
                self.connect,
                self.prepared,
                self.out,
            )
        stored = store.read()
        external_sets = stored_external_sets(self.out, self.suite.name, stored)
        rows, current, manifests, order = with_searched_labels(
            with_reported(stored, external_sets), self.current, manifests, self.methods, self.labels
        )
        md, csv = render(self.suite, rows, current, self.out / "leaderboard", order, self.notes, manifests, recipes)
        print(f"[leaderboard] {md} and {csv} {self._elapsed()}", flush=True)
        if self.make:
            print(md.read_text(), flush=True)
        page = build_site(
            self.suite,
            rows,
            current,
            self.out / "site",
            order,
            self.notes,
            manifests,
            self.out / "leaderboard",
            self.command,
            recipes,
            external_sets=external_sets,
        )
        print(f"[site] {page} {self._elapsed()}", flush=True)
        return md, csv, page

    @_holding_out
    def cross_arch_study(self) -> tuple[Path, Path, Path]:
        """The suite's cross-architecture table and heatmap, on its one set (a Run made with `cross_arch`)."""
        self.header()
        (manifest,) = self.manifests
        paths = cross_architecture(self.suite, self.real, self.prepared, manifest, self.out, self.connect)
        print(f"[cross-arch] {', '.join(map(str, paths))} {self._elapsed()}", flush=True)
        print(paths[0].read_text(), flush=True)
        return paths

    @_holding_out
    def search(self, specs: list[SearchSpec], resume: bool = False) -> list[Path]:
        """Each spec's search on the models its methods need (a Run whose methods are the specs'); its trials go to
        the result store. `real` must hold no test split."""
        prepared = self.prepared
        self.connect()  # the trials run on Ray Tune
        written = []
        for spec in specs:
            outcome = run_search(self.suite, self.real, prepared, spec, self.out, resume=resume)
            paths = write_outputs(outcome, self.suite, self.out, self.store)
            print(outcome.summary(), flush=True)
            print(
                f"[search] {spec.subject}: {len(outcome.trials)} trial rows in {self.store.path}; "
                f"{', '.join(map(str, paths))}",
                flush=True,
            )
            written += paths
        return written

    def plan(self, gpus: int, gpu_tflops: float, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB) -> str:
        """What the run would do and cost, as text: needs neither the data nor the models."""
        return make_plan(
            self.suite,
            self.set_methods,
            self.searched,
            self.fine_tunes,
            self.given_out,
            gpus,
            gpu_tflops,
            gpu_memory_gb,
        )

    def compare(self, pair: list[str]) -> Path:
        """A − B per cell from the store (a Run whose methods are the pair, made with `make` False). A method with no
        row at all is one line before prepare (which the cells' identities need, and which can load or train models
        for a minute) and before the output lock (whose file a refused command must not leave behind)."""
        absent = methods_without_rows(self.store.read(), pair)
        if absent:
            raise RunError(no_rows_message(self.suite.source, self.out, absent))
        return self._compare(pair)

    @_holding_out
    def _compare(self, pair: list[str]) -> Path:
        self.header()
        # A searched config is its own row, never averaged with the method's own.
        rows, compared, _, _ = with_searched_labels(self.store.read(), self.current, [], self.methods, self.labels)
        rows = trained_under(rows, self.recipes)
        s = self.suite
        table = board_order(
            mark_failed(compare(cell_rows(rows, compared), *pair), *pair, failed_check_cells(self.manifests, compared)),
            pair,
            list(s.students),
            list(s.protocols),
            ("student", "protocol", "ipc"),
        )
        if table.empty:
            raise RunError(
                f"{s.source}: methods: the store in {self.out} holds no cell with both {pair[0]} and {pair[1]}"
            )
        stem = self.out / "compare" / f"{s.name}-{pair[0]}-vs-{pair[1]}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(stem.with_suffix(".csv"), index=False, float_format="%.5f")
        text = "\n".join(compare_lines(table, *pair)) + "\n"
        stem.with_suffix(".md").write_text(text)
        print(text + f"\n[compare] {stem}.md and .csv", flush=True)
        return stem.with_suffix(".md")

    def export(self) -> Path:
        """The one set of this Run (one method at one IPC, made with `make` False) as a datasets folder. No set of the
        method at that IPC on disk at all is one line before prepare and the output lock, as in `compare`."""
        (method,), (ipc,) = self.set_methods, self.ipcs
        if not has_set_on_disk(self.out, self.suite.name, method, ipc):
            raise RunError(self._no_set(method, ipc))
        return self._export()

    def _no_set(self, method: str, ipc: int) -> str:
        return no_set_message(self.suite.source, self.out, method, ipc)

    @_holding_out
    def _export(self) -> Path:
        self.header()
        (job,) = self.own_jobs
        if not job.done():
            raise RunError(self._no_set(job.method, job.ipc))
        dest = export_set(
            Manifest.read(job.path),
            self.out / "exports" / f"{self.suite.name}-{job.method}-ipc{job.ipc}",
            self.suite.name,
        )
        print(f"[export] {dest}: load it with datasets.load_dataset({str(dest)!r}, split='train')", flush=True)
        return dest

    @_holding_out
    def evaluate_external(
        self,
        ext: ExternalSet,
        name: str,
        overlap: int,
        save_fingerprints=None,
        protocols: list[str] | None = None,
        reported: float | None = None,
    ) -> list[dict]:
        """A checked set made elsewhere, copied into the store's set folders and trained on by every student,
        protocol (or `protocols`) and seed of the suite; its rows (kind `external`) go to the store. A rerun
        trains only what the store lacks. Returns the set's rows."""
        s = self.suite
        if save_fingerprints is not None:  # the set passed: the next evaluate reads the test split's from the cache
            save_fingerprints()
        manifest = store_set(ext, self.out, s.name, name, overlap, reported)
        print(
            f"[evaluate] {name}: {manifest.images} images, IPC {manifest.ipc}, sha256 {ext.sha256[:12]}… "
            f"from {ext.source} → {manifest.path}",
            flush=True,
        )
        for note in ext.notes + ([f"{overlap} images near-identical to test images (--allow-overlap)"] * bool(overlap)):
            print(f"[evaluate] {name}: {note}", flush=True)
        wanted = protocols or list(s.protocols)
        trials = [
            t
            for t in plan_trials(s, [manifest], s.students, s.seeds, None, self.prepared, student_device())
            if t.protocol in wanted
        ]
        extra = {"kind": "external", "set_source": ext.source, "set_sha256": ext.sha256, "overlap": overlap}
        if reported is not None:
            extra["reported_accuracy"] = reported
        todo = [t for t in trials if not self.store.has(t.key())]
        print(
            f"[evaluate] {len(trials)} trials, {len(todo)} to run ({len(trials) - len(todo)} already in the store)",
            flush=True,
        )
        if todo:
            self.connect()
            run_trials(
                todo,
                lambda t: s.protocols[t.protocol],
                self.real,
                self.store,
                s,
                self.prepared,
                extra_for=lambda t: extra,
                storage_path=str(self.out / "ray_train"),
            )
        keys = {t.key() for t in trials}
        rows = with_reported([r for r in self.store.read() if row_key(r) in keys], [manifest])
        for (student, protocol), group in _by_cell(rows).items():
            mean = sum(r["accuracy"] for r in group) / len(group)
            paper = group[0].get("reported_accuracy")
            beside = "" if paper is None else f" (reported {paper:.2%}: measured − reported {mean - paper:+.2%})"
            cell = f"{name} IPC {manifest.ipc} {student} {protocol}"
            print(f"[evaluate] {cell}: {mean:.2%} over {len(group)} seeds{beside}", flush=True)
        print(f"[evaluate] {len(rows)} rows of {name} in {self.store.path} {self._elapsed()}", flush=True)
        return rows


def _by_cell(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["student"], r["protocol"], r["seed"])):
        cells.setdefault((r["student"], r["protocol"]), []).append(r)
    return cells


def check_protocols(suite: Suite, text: str | None) -> list[str] | None:
    """--protocols: a comma-separated subset of the suite's protocols (None: all of them)."""
    return check_protocol_names(text, list(suite.protocols))


def at_set_ipc(suite: Suite, ext: ExternalSet, profile: str, overrides: dict) -> Suite:
    """The suite loaded again at the set's IPC, so that the IPC checks of a run (a recipe's epochs table bounds)
    hold for it too."""
    return load_suite(str(suite.source), profile, {**overrides, "ipcs": [ext.ipc]})


def evaluate_checked(
    suite: Suite,
    real: RealData,
    ext: ExternalSet,
    name: str,
    out: Path,
    address: str | None = None,
    protocols: list[str] | None = None,
    allow_overlap: bool = False,
    reported: float | None = None,
    command: str = "",
) -> list[dict]:
    """A set that passed its checks: checked for test-set leakage, then evaluated (`Run.evaluate_external`)."""
    overlap, save = check_leakage(ext, real.test, out, allow_overlap)
    run = Run(suite, [], out, real, address, check=False, command=command, samples=False)
    return run.evaluate_external(ext, name, overlap, save, protocols, reported)


def evaluate_set(
    suite: str | Suite,
    images,
    labels,
    name: str,
    out: str | Path = "runs",
    class_order: list[str] | str | None = None,
    students: list[str] | None = None,
    protocols: list[str] | None = None,
    seeds: int | None = None,
    profile: str = "full",
    allow_uneven: bool = False,
    allow_duplicates: bool = False,
    allow_overlap: bool = False,
    reported: float | None = None,
    tensor_normalization: str | None = None,
    source: str = "python",
    address: str | None = None,
) -> list[dict]:
    """`ddbench evaluate` for a notebook: `images` (N, C, H, W; uint8, or floats in [0, 1], or normalised with
    `tensor_normalization`) and `labels` (class keys or names, or indices with `class_order`: a list of keys or
    names, or "suite") evaluated under `suite` (a name, a path, or a loaded Suite) as set `name`. The same checks
    as the command line, raised as ExternalSetError (or the suite's SuiteError); returns the set's rows."""
    overrides = {k: v for k, v in (("students", students), ("seeds", seeds)) if v is not None}
    loaded_here = not isinstance(suite, Suite)  # a Suite given as loaded is taken as it is, IPCs and all
    if loaded_here:
        suite = load_suite(str(suite), profile, overrides)
    name = check_name(name)
    chosen = check_protocols(suite, ",".join(protocols) if protocols is not None else None)
    check_out_dir(Path(out), suite.source)
    real = load_real_data(suite.data)
    keys, names = suite_classes(suite.data)
    items = items_from_arrays(images, labels, len(keys), real.channels, parse_normalisation(tensor_normalization))
    ext = check_and_build(
        source,
        keys,
        names,
        real.channels,
        real.image_size,
        class_order,
        allow_uneven=allow_uneven,
        allow_duplicates=allow_duplicates,
        items=items,
        container="tensor",
    )
    suite = at_set_ipc(suite, ext, profile, overrides) if loaded_here else suite
    return evaluate_checked(suite, real, ext, name, Path(out), address, chosen, allow_overlap, reported)
