"""The site's grids of external sets: each name's latest set only, as the board's rows show it."""

import torch

from harness.stages.external import ExternalSet, canonical_sha256, store_set, stored_external_sets


def _set(fill: int) -> ExternalSet:
    images = torch.full((4, 1, 8, 8), fill, dtype=torch.uint8)
    ext = ExternalSet("src", ["a", "b"], images, torch.tensor([0, 0, 1, 1]), ["w"] * 4, [2, 2])
    ext.sha256 = canonical_sha256(ext)
    return ext


def test_a_reused_name_draws_only_its_latest_set(tmp_path):
    old, new = _set(10), _set(200)
    for ext in (old, new):
        store_set(ext, tmp_path, "tiny", "outside", 0)
    row = {"kind": "external", "method": "outside", "ipc": 2}
    rows = [{**row, "config_hash": old.config_hash}, {**row, "config_hash": new.config_hash}]
    found = stored_external_sets(tmp_path, "tiny", rows)
    assert [m.config_hash for m in found] == [new.config_hash]
    found = stored_external_sets(tmp_path, "tiny", rows[::-1])
    assert [m.config_hash for m in found] == [old.config_hash]
