"""Shipped results: export from a store, the compressed logs read back, runs refused in a shipped
folder, and the paper page generated from the shipped records (and checked to be up to date)."""

from __future__ import annotations

import gzip
import json

import pytest

from ssodlib.engine.run_folder import read_metrics
from ssodlib.experiments import run_plan
from ssodlib.experiments.plan import plan, plan_items
from ssodlib.experiments.shipped import SHIPPED_MARK, export, report_store, shipped_dir
from ssodlib.experiments.store import ResultsStore
from ssodlib.io import InputError
from ssodlib.report.page import BEGIN, END, current_section, measured_section, write_page

EXPERIMENTS = """
paper: ship
items:
  - id: tab
    kind: table
    title: "Table 1. AP"
    metric: ap
    model: teacher
    rows:
      - {name: Sup, method: supervised}
      - {name: PL, method: pseudo_label, burn_in_from: Sup}
    columns:
      - {name: "5%", set: {percent: 5}}
    scales:
      smoke: {folds: [1], seeds: [0, 1]}
"""

LOG = [{"iteration": 2, "kind": "train", "loss": 1.0}, {"iteration": 4, "kind": "eval", "student": {"ap": 0.1}}]


def _final(**ap):
    return {m: {"ap": v, "ap50": 2 * v, "per_class_ap": {"a": v}, "ap_per_iou": {"0.5": 2 * v}} for m, v in ap.items()}


@pytest.fixture
def store(tmp_path, monkeypatch):
    papers = tmp_path / "papers"
    (papers / "ship").mkdir(parents=True)
    (papers / "ship" / "experiments.yaml").write_text(EXPERIMENTS)
    (papers / "ship" / "README.md").write_text("# Ship\n\nHand-written prose.\n")
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(papers))
    store = ResultsStore(tmp_path / "results")
    finals = {("Sup", 0): _final(student=0.20), ("PL", 0): _final(student=0.24, teacher=0.25),
              ("Sup", 1): _final(student=0.18)}  # PL seed 1 is not finished
    for s in plan("ship", "all", "smoke"):
        if (s.row, s.seed) in finals:
            store.run_dir(s.key).mkdir(parents=True)
            (store.run_dir(s.key) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOG))
            started = str(store.run_dir(s.burn_in_from) / "checkpoint-4.pt") if s.burn_in_from else None
            store.put(s.key, {"row": s.row, "column": s.column, "fold": s.fold, "config": {"seed": s.seed,
                              "method": s.config.method}, "final": finals[s.row, s.seed], "wall_seconds": 120.0,
                              "commit": "0123456789abcdef", "machine": {"cpu": "some cpu"}, "started_from": started,
                              "finished": "2026-12-02T01:00:00+00:00", "run_dir": f"runs/{s.key}"})
    return store


def test_export_writes_records_and_compressed_logs_that_read_back(store):
    specs = plan("ship", "all", "smoke")
    to = shipped_dir("ship", "smoke")
    done = export(specs, store=store, to=to, command="ssod experiments export --paper ship")
    assert len(done["exported"]) == 3 and len(done["missing"]) == 1
    assert (to / SHIPPED_MARK).is_file() and not list(to.rglob("*.pt"))
    shipped = ResultsStore(to)
    for key in done["exported"]:
        assert read_metrics(shipped.run_dir(key)) == LOG  # from metrics.jsonl.gz
        assert shipped.source(key) == "shipped"
    pl = next(s for s in specs if s.row == "PL" and s.seed == 0)
    # the snapshot it began from is named by its run, not by this machine's path
    assert shipped.get(pl.key)["started_from"] == f"{pl.burn_in_from}/checkpoint-4.pt"
    before = {p: p.read_bytes() for p in to.rglob("*") if p.is_file()}
    export(specs, store=store, to=to, command="ssod experiments export --paper ship")
    assert {p: p.read_bytes() for p in to.rglob("*") if p.is_file()} == before  # a re-export changes nothing
    assert gzip.decompress((shipped.run_dir(pl.key) / "metrics.jsonl.gz").read_bytes()).decode().count("\n") == 2


def test_runs_never_write_into_a_shipped_folder(store):
    to = shipped_dir("ship", "smoke")
    export(plan("ship", "all", "smoke"), store=store, to=to, command="export")
    with pytest.raises(InputError, match="shipped results"):
        run_plan(plan("ship", "all", "smoke"), results_dir=to)


def test_a_report_layers_the_local_store_over_the_shipped_records(store, tmp_path):
    to = shipped_dir("ship", "smoke")
    export(plan("ship", "all", "smoke"), store=store, to=to, command="export")
    layered = report_store(results_dir=tmp_path / "mine", paper="ship", scale="smoke")
    key = plan("ship", "all", "smoke")[0].key
    assert layered.source(key) == "shipped" and layered.get(key)["final"]["student"]["ap"] == 0.20
    ResultsStore(tmp_path / "mine").put(key, {"final": _final(student=0.5)})
    assert layered.source(key) == "local" and layered.get(key)["final"]["student"]["ap"] == 0.5
    assert report_store(results_dir=tmp_path / "mine", paper="ship", scale="smoke", shipped=False).shipped is None


def test_the_page_is_generated_from_the_shipped_records_and_goes_stale_when_they_change(store):
    to = shipped_dir("ship", "smoke")
    export(plan("ship", "all", "smoke"), store=store, to=to, command="export")
    path = write_page("ship", scales=["smoke"])
    text = path.read_text()
    assert text.startswith("# Ship\n\nHand-written prose.\n") and BEGIN in text and END in text
    assert current_section("ship") == measured_section("ship", scales=["smoke"])
    # Sup: seeds 0 and 1 -> 20, 18 = 19.00 ± 1.41; PL seed 0 only (teacher 25); lead 25 - 20 = +5
    assert "| Sup | 19.00 ± 1.41 (2/2 shipped) |" in text and "| PL | 25.00 ± 0.00 (1/2 shipped) |" in text
    assert "| PL | Sup | 5% | +5.00 ± 0.00 | 1/1 | f1 s0: +5.00 |" in text
    assert "3 of the 4 declared smoke runs are shipped" in text and "code 0123456789" in text
    write_page("ship", scales=["smoke"])
    assert path.read_text() == text  # regenerating is idempotent
    key = plan("ship", "all", "smoke")[0].key
    record = json.loads((to / "records" / f"{key}.json").read_text())
    record["final"]["student"]["ap"] = 0.30
    (to / "records" / f"{key}.json").write_text(json.dumps(record))
    assert current_section("ship") != measured_section("ship", scales=["smoke"])


def test_a_report_of_the_shipped_folder_itself_writes_nothing_into_it(store, tmp_path, monkeypatch):
    from ssodlib.report.experiments import render

    to = shipped_dir("ship", "smoke")
    export(plan("ship", "all", "smoke"), store=store, to=to, command="export")
    before = sorted(p for p in to.rglob("*"))
    monkeypatch.setenv("SSOD_RESULTS_DIR", str(tmp_path / "mine"))
    report = render(plan_items("ship", "all", "smoke"), paper="ship", scale="smoke", results_dir=to)
    assert sorted(p for p in to.rglob("*")) == before and report.out_dir == tmp_path / "mine" / "reports" / "ship" / "smoke"
    assert report.tables["tab"].iloc[0, 1] == "19.00 ± 1.41 (2/2 shipped)"
