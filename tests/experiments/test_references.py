"""Every published counterpart a table declares resolves to the published cells it is set beside: a
column named differently from the published one (``AP50:95`` against ``AP``) would leave the
"published" column of the report empty without any error."""

from __future__ import annotations

import pytest

from ssodlib.experiments.plan import load_declarations, papers_dir
from ssodlib.experiments.reference import reference_item
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
