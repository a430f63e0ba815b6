"""Each paper page's measured part is what its shipped records give (regenerate with
``ssod experiments page --paper P``), and the figures it links to exist."""

from __future__ import annotations

import re

import pytest

from ssodlib.experiments.plan import papers_dir
from ssodlib.report.page import current_section, measured_section


def _shipped_scales(paper: str) -> list[str]:
    results = papers_dir() / paper / "results"
    return sorted(d.name for d in results.iterdir() if (d / "records").is_dir()) if results.is_dir() else []


PAPERS = sorted(p.name for p in papers_dir().iterdir() if _shipped_scales(p.name))


def test_some_paper_ships_results():
    assert PAPERS, "no papers/<paper>/results/<scale>/records: export measured runs (ssod experiments export)"


@pytest.mark.parametrize("paper", PAPERS)
def test_the_page_is_up_to_date_with_the_shipped_records(paper, monkeypatch, tmp_path):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    section = current_section(paper)
    scales = _shipped_scales(paper)
    fix = f"ssod experiments page --paper {paper} --scales " + ",".join(scales)
    assert section is not None, f"papers/{paper}/README.md has no measured part: ssod experiments page --paper {paper}"
    # the tables go to a scratch folder: the shipped ones are compared, never rewritten by the test
    assert section == measured_section(paper, scales=scales, tables_dir=tmp_path), f"papers/{paper}/README.md is stale: {fix}"
    for scale in scales:
        fresh = sorted((tmp_path / scale).glob("*.csv"))
        assert fresh, scale
        for csv in fresh:
            shipped = papers_dir() / paper / "results" / scale / "report" / csv.name
            assert shipped.is_file() and shipped.read_text() == csv.read_text(), f"{shipped} is stale: {fix}"
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", section):
        assert (papers_dir() / paper / link).is_file(), link
