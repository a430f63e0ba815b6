"""Every published counterpart a table declares resolves to the published cells it is set beside: a
column named differently from the published one (``AP50:95`` against ``AP``) would leave the
"published" column of the report empty without any error."""

from __future__ import annotations

import pytest

from ssodlib.experiments.plan import load_declarations, papers_dir, plan_items
from ssodlib.experiments.reference import published_detector, reference_item
from ssodlib.report.experiments import references_of

# (paper, item, column): columns with no published counterpart, and why
NO_COUNTERPART = {
    # the paper ablates at 1 % labels only; the mini scale adds 5 and 10 %
    ("crossmatch", "table3", "5%"), ("crossmatch", "table3", "10%"),
    # the embedded benchmark's classes are not COCO's: its rarest and most frequent classes stand beside
    # the paper's COCO classes only through the table's own columns
    *{("labelmatch", "table4", f"{group} / {name}") for group in ("rarest 4", "most frequent 4")
      for name in ("halfdisk", "lshape", "crescent", "arrow", "disk", "square", "triangle", "ring", "mean")},
}


def _declared_papers() -> list[str]:
    return sorted(p.parent.name for p in papers_dir().glob("*/experiments.yaml"))


@pytest.mark.parametrize("paper", _declared_papers())
def test_every_reference_of_a_table_names_columns_of_the_published_table(monkeypatch, paper):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    unmatched = []
    for item in load_declarations(paper).items:
        if item.kind != "table":  # a figure's rows carry their tables' references for its legend
            continue
        for row in (r for r in item.rows if r.get("reference")):
            for ref in row["reference"]:
                published = reference_item(ref["paper"], ref["item"])
                assert ref["row"] in {r["name"] for r in published.get("rows", [])}, (item.id, row["name"], ref)
                mapping = ref.get("columns", {})
                assert set(mapping) <= {c["name"] for c in item.columns}, (item.id, row["name"], mapping)
            # the item's columns that a reference the report reads for them names in its table
            answered = {c["name"] for c in item.columns for ref in references_of(row, c["name"])
                        if ref and ref.get("columns", {}).get(c["name"], c["name"])
                        in reference_item(ref["paper"], ref["item"]).get("columns", [])}
            unmatched += [(item.id, row["name"], c["name"]) for c in item.columns
                          if c["name"] not in answered and (paper, item.id, c["name"]) not in NO_COUNTERPART]
    assert not unmatched, f"columns with no published counterpart (fix the name or map it): {unmatched}"


DETR_FAMILIES = {"deformable_detr", "dino"}


@pytest.mark.parametrize("paper", _declared_papers())
def test_a_row_stands_beside_published_rows_of_its_own_detector_family(monkeypatch, paper):
    """A Faster R-CNN run beside a published Deformable DETR baseline (or the reverse) would print a
    gain that compares two detectors: the published row's ``detector`` (none: a CNN detector) must
    match the family the declared run resolves to, at every scale."""
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    mixed = set()
    for item in load_declarations(paper).items:
        for scale in item.scales:
            for spec in plan_items(paper, item.id, scale, folds=[1], seeds=[0])[item.id]:
                for ref in item.row(spec.row).get("reference") or []:
                    published = published_detector(ref["paper"], ref["item"], ref["row"])
                    ours = spec.config.detector
                    if ((published in DETR_FAMILIES) != (ours in DETR_FAMILIES)
                            or (published in DETR_FAMILIES and published != ours)):
                        mixed.add((item.id, scale, spec.row, ours, ref["paper"], ref["row"], published))
    assert not mixed, f"rows set beside published rows of another detector family: {sorted(mixed)}"


def test_the_published_detector_is_read_from_the_row_or_its_item():
    # Table 1's Deformable DETR baseline names its row's detector; Table 4 (DINO ablations) its item's
    assert published_detector("semi_detr", "table1", "Def-DETR(Sup only)") == "deformable_detr"
    assert published_detector("semi_detr", "table1", "DINO(Sup only)") == "dino"
    assert published_detector("semi_detr", "table4", "ID 1: SHM off, CQC off, CPM off") == "dino"
    assert published_detector("semi_detr", "table1", "Unbiased Teacher") is None
    assert published_detector("labelmatch", "table1", "Supervised") is None
