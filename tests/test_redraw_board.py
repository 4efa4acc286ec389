"""scripts/redraw_board.py rebuilds the manifests of sets no longer on disk from the committed board's cost and
diversity tables: the inverse of `cost_table` and `diversity_table`, so those tables (and the Markdown's diversity
section) come out of the rebuilt manifests byte for byte."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from harness.report.manifest_tables import cost_table, diversity_table
from harness.report.markdown import diversity_lines

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "leaderboard"
spec = importlib.util.spec_from_file_location("redraw_board", ROOT / "scripts" / "redraw_board.py")
redraw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(redraw)


def test_the_committed_cost_and_diversity_tables_come_back_from_their_rebuilt_manifests():
    cost = pd.read_csv(BOARD / "fashion-mnist-cost.csv", dtype=redraw.TEXT)
    # every committed set current; a searched label's set is its method's (the label is the part before the comma)
    labels = {(m.split(",")[0], h): m for m, h in zip(cost["method"], cost["config_hash"]) if "," in m}
    jobs = [SimpleNamespace(method=m.split(",")[0], config_hash=h) for m, h in zip(cost["method"], cost["config_hash"])]
    manifests = redraw.recorded_manifests(BOARD, SimpleNamespace(labels=labels, jobs=jobs), ["a", "b"])
    assert len(manifests) == len(cost) and all(not m.on_disk for m in manifests)
    assert {m.method for m in manifests} == {j.method for j in jobs}  # labels mapped back to their methods
    for m in manifests:
        m.method = labels.get((m.method, m.config_hash), m.method)
    order = list(dict.fromkeys(cost["method"]))
    assert (
        cost_table(manifests, order).to_csv(index=False, float_format="%.5f")
        == (BOARD / "fashion-mnist-cost.csv").read_text()
    )
    div = diversity_table(manifests, order)
    assert div.to_csv(index=False, float_format="%.6g") == (BOARD / "fashion-mnist-diversity.csv").read_text()
    # Measures on a rounding edge of the Markdown's 2 decimals print as the board printed them.
    section = "\n".join(diversity_lines(div)[-len(div) - 1 :])
    assert section in (BOARD / "fashion-mnist.md").read_text()
