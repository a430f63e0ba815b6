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
def test_the_page_is_up_to_date_with_the_shipped_records(paper, monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    section = current_section(paper)
    assert section is not None, f"papers/{paper}/README.md has no measured part: ssod experiments page --paper {paper}"
    assert section == measured_section(paper, scales=_shipped_scales(paper)), \
        f"papers/{paper}/README.md is stale: ssod experiments page --paper {paper} --scales " + ",".join(_shipped_scales(paper))
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", section):
        assert (papers_dir() / paper / link).is_file(), link
