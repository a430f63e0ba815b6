"""Ensemble rows in declarations: the run keys they fill in, the order and the waits of the runner,
the errors, and that nothing else's key changes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from ssodlib.config import TrainConfig
from ssodlib.experiments.plan import RUNTIME_FIELDS, RunSpec, plan, plan_items, run_key
from ssodlib.experiments.runner import _next_ready, check_sources
from ssodlib.experiments.store import ResultsStore
from ssodlib.io import InputError

# teachers A (seed 0) and B (seed 1); student A from A with B as extra teacher; student B from B with
# A, ensembled with student A and scored by the ensemble. The smoke scale declares no seeds, so a row's
# seed stays; the mini scale declares seeds, which override it (A and B become one run: an error)
ENSEMBLE = """
paper: ens
items:
  - id: t3
    model: student
    rows:
      - {name: TA, method: supervised}
      - {name: TB, method: supervised, set: {seed: 1}}
      - {name: SA, method: rethinking_pl, burn_in_from: TA, ensemble_teachers_from: [TB],
         set: {method_options: {certainty: false}}}
      - {name: SB, method: rethinking_pl, burn_in_from: TB, ensemble_teachers_from: [TA], ensemble_with_from: [SA],
         model: ensemble, set: {seed: 1, method_options: {certainty: false}}}
    columns: [{name: AP50, metric: ap50}, {name: AP, metric: ap}]
    scales:
      smoke: {folds: [1, 2]}
      mini: {folds: [1], seeds: [0]}
"""


@pytest.fixture
def papers(tmp_path, monkeypatch) -> Path:
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "experiments.yaml").write_text(ENSEMBLE)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(tmp_path))
    return tmp_path


def _declare(papers: Path, text: str) -> Path:
    path = papers / "ens" / "experiments.yaml"
    path.write_text(text)
    return path


def _cells(specs) -> dict[tuple[str, int], RunSpec]:
    return {(s.row, s.fold): s for s in specs}


def test_ensemble_rows_carry_the_keys_of_their_rows_at_the_same_fold(papers):
    specs = plan("ens", "t3", "smoke")
    cells = _cells(specs)
    assert len(specs) == 8  # 4 rows x 2 folds (the metric columns share runs)
    for fold in (1, 2):
        ta, tb, sa, sb = (cells[r, fold] for r in ("TA", "TB", "SA", "SB"))
        assert (ta.config.seed, tb.config.seed, sa.config.seed, sb.config.seed) == (0, 1, 0, 1)  # a row's seed stays
        assert ta.key != tb.key
        assert sa.config.method_options == {"certainty": False, "ensemble_teachers": (tb.key,)}
        assert sb.config.method_options == {"certainty": False, "ensemble_teachers": (ta.key,)}
        assert sa.config.ensemble_with == () and sb.config.ensemble_with == (sa.key,)
        assert (sa.burn_in_from, sa.ensemble_teachers, sa.ensemble_with) == (ta.key, (tb.key,), ())
        assert (sb.burn_in_from, sb.ensemble_teachers, sb.ensemble_with) == (tb.key, (ta.key,), (sa.key,))
        assert sb.key == run_key(sb.config) and sb.key not in {ta.key, tb.key, sa.key}
    # each fold's runs name that fold's runs
    assert cells["SA", 2].ensemble_teachers == (cells["TB", 2].key,)


def test_the_plan_puts_every_run_after_the_runs_it_waits_for(papers):
    specs = plan("ens", "t3", "smoke")
    position = {s.key: i for i, s in enumerate(specs)}
    for s in specs:
        assert all(position[k] < position[s.key] for k in s.sources), s.describe()
    assert [s.row for s in specs] == ["TA", "TB", "TA", "TB", "SA", "SA", "SB", "SB"]


def test_an_ensemble_field_at_its_default_leaves_keys_unchanged():
    # the key of a run that does not set ensemble_with is its key hashed without the field (as every
    # record from before the field was keyed); setting it makes another run
    config = TrainConfig(method="supervised")
    payload = {k: v for k, v in dataclasses.asdict(config).items()
               if k not in RUNTIME_FIELDS and k not in {"strong_augment", "ensemble_with", "independent_student_view"}}
    legacy = hashlib.sha1(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:10]
    assert run_key(config) == f"supervised-5pct-f1-{legacy}"
    assert run_key(dataclasses.replace(config, ensemble_with=("other",))) != run_key(config)


def test_the_keys_of_every_shipped_record_are_still_the_keys_of_their_configs():
    records = sorted(Path(__file__).resolve().parents[2].glob("papers/*/results/*/records/*.json"))
    assert records
    for path in records:
        record = json.loads(path.read_text())
        assert run_key(TrainConfig(**record["config"])) == record["key"] == path.stem, path


@pytest.mark.parametrize("key, fix", [("ensemble_teachers_from", "[TX]"), ("ensemble_with_from", "[TX]"),
                                      ("ensemble_teachers_from", "TB")])
def test_an_unknown_or_malformed_ensemble_row_name_is_an_input_error(papers, key, fix):
    text = ENSEMBLE.replace(f"{key}: [{'TA' if key == 'ensemble_teachers_from' else 'SA'}]", f"{key}: {fix}")
    path = _declare(papers, text)
    with pytest.raises(InputError, match=rf"{path}: item 't3', row 'SB': {key} .*Fix:"):
        plan("ens", "t3", "smoke")


def test_rows_of_one_ensemble_that_resolve_to_one_run_are_an_input_error(papers):
    # the mini scale declares seeds: TA and TB become one run, so SA would be its own extra teacher's twin
    with pytest.raises(InputError, match="names the same run twice.*seed_offset: 1 .*overridden by declared"):
        plan("ens", "t3", "mini")


def test_a_seed_offset_keeps_the_second_teacher_apart_at_declared_and_requested_seeds(papers):
    # TB and SB shift the seed the cell resolves to by 100: seed s gives TA/SA seed s and TB/SB seed s + 100
    _declare(papers, ENSEMBLE.replace("{name: TB, method: supervised, set: {seed: 1}}",
                                      "{name: TB, method: supervised, seed_offset: 100}")
             .replace("model: ensemble, set: {seed: 1, ", "model: ensemble, seed_offset: 100, set: {"))
    for specs in (plan("ens", "t3", "mini"), plan("ens", "t3", "smoke", seeds=[3]), plan("ens", "t3", "smoke")):
        seeds = {s.row: s.config.seed for s in specs}
        base = seeds["TA"]
        assert seeds == {"TA": base, "SA": base, "TB": base + 100, "SB": base + 100}
        cells = _cells(specs)
        fold = specs[0].fold
        assert cells["SA", fold].ensemble_teachers == (cells["TB", fold].key,) != (cells["TA", fold].key,)
    assert {s.config.seed for s in plan("ens", "t3", "smoke", seeds=[3])} == {3, 103}


@pytest.mark.parametrize("offset", ["-1", "1.5", "one"])
def test_a_malformed_seed_offset_is_an_input_error(papers, offset):
    path = _declare(papers, ENSEMBLE.replace("{name: TB, method: supervised, set: {seed: 1}}",
                                             f"{{name: TB, method: supervised, seed_offset: {offset}}}"))
    with pytest.raises(InputError, match=rf"{path}: malformed item 't3', row 'TB': seed_offset .* not a non-negative int"):
        plan("ens", "t3", "smoke")


def test_a_cycle_of_ensemble_rows_is_an_input_error(papers):
    _declare(papers, ENSEMBLE.replace("burn_in_from: TA, ensemble_teachers_from: [TB]",
                                      "burn_in_from: TA, ensemble_teachers_from: [TB], ensemble_with_from: [SB]"))
    with pytest.raises(InputError, match="lead back to it"):
        plan("ens", "t3", "smoke")


def test_extra_teachers_need_a_method_with_the_option(papers):
    _declare(papers, ENSEMBLE.replace("{name: SA, method: rethinking_pl,", "{name: SA, method: pseudo_label,")
             .replace("set: {method_options: {certainty: false}}}", "set: {}}"))
    with pytest.raises(InputError, match="method 'pseudo_label' takes no extra teachers"):
        plan("ens", "t3", "smoke")


def test_the_report_scores_a_row_by_its_own_model(papers, tmp_path):
    from ssodlib.report.experiments import results_frame

    items = plan_items("ens", "t3", "smoke", folds=[1])
    store = ResultsStore(tmp_path / "results")
    final = {m: {"ap": ap, "ap50": 2 * ap} for m, ap in (("student", 0.1), ("teacher", 0.2), ("ensemble", 0.3))}
    for s in items["t3"]:
        store.put(s.key, {"final": final})
    from ssodlib.experiments.plan import load_declarations

    runs = results_frame(load_declarations("ens").item("t3"), items["t3"], store)
    value = runs.set_index(["row", "column"])["value"]
    assert value["SB", "AP"] == pytest.approx(30.0) and value["SB", "AP50"] == pytest.approx(60.0)
    assert value["SA", "AP"] == pytest.approx(10.0)  # the item's model


# -- the runner's waits ----------------------------------------------------------------------------------
class _Running:
    def __init__(self, spec):
        self.spec = spec


def test_side_by_side_a_run_waits_for_its_teachers_snapshots_and_its_ensemble_s_records(papers, tmp_path):
    cells = _cells(plan("ens", "t3", "smoke", folds=[1]))
    ta, tb, sa, sb = (cells[r, 1] for r in ("TA", "TB", "SA", "SB"))
    store = ResultsStore(tmp_path)
    burn_in = sa.config.burn_in
    # TA and TB running: SA waits (its twin's and its extra teacher's snapshots are missing)
    assert _next_ready([sa, sb], [_Running(ta), _Running(tb)], store) is None
    (store.run_dir(ta.key)).mkdir(parents=True)
    (store.run_dir(ta.key) / f"checkpoint-{burn_in}.pt").touch()
    assert _next_ready([sa, sb], [_Running(ta), _Running(tb)], store) is None  # TB's snapshot still missing
    (store.run_dir(tb.key)).mkdir(parents=True)
    (store.run_dir(tb.key) / f"checkpoint-{burn_in}.pt").touch()
    assert _next_ready([sa, sb], [_Running(ta), _Running(tb)], store) is sa
    # SB has its snapshots but waits for SA's record
    assert _next_ready([sb], [_Running(sa)], store) is None
    assert _next_ready([sb], [], store) is sb  # SA finished (neither pending nor running)


def test_a_run_whose_ensemble_sources_are_missing_fails_before_training_with_the_fix(papers, tmp_path):
    cells = _cells(plan("ens", "t3", "smoke", folds=[1]))
    store = ResultsStore(tmp_path)
    with pytest.raises(InputError, match=r"needs \[.*checkpoint-4\.pt', .*records/.*\.json'\].*Fix: run the whole"):
        check_sources(cells["SB", 1], store)
    check_sources(cells["TA", 1], store)  # no sources: nothing to check


def test_table3_of_rethinking_pseudo_labels_plans_and_its_published_numbers_resolve():
    from ssodlib.experiments.plan import load_declarations
    from ssodlib.experiments.reference import published

    item = load_declarations("rethinking_pseudo_labels").item("table3")
    refs = [(row["name"], ref) for row in item.rows for ref in row.get("reference") or []]
    assert [name for name, _ in refs] == ["CA on, RE on, DT on", "Ensemble (students A + B)"]
    for _, ref in refs:
        for col in item.columns:
            theirs = ref.get("columns", {}).get(col["name"], col["name"])
            value = published(ref["paper"], ref["item"], ref["row"], theirs)
            assert isinstance(value, float), (ref, col)
    for scale in ("smoke", "mini", "paper"):
        cells = {s.row: s for s in plan("rethinking_pseudo_labels", "table3", scale)}
        single, ensemble = cells["CA on, RE on, DT on"], cells["Ensemble (students A + B)"]
        # the single model is Table 5's run; the ensemble row waits for student A and both teachers
        assert single.key in {s.key for s in plan("rethinking_pseudo_labels", "table5", scale)}
        assert ensemble.ensemble_with == (cells["Student A (teachers A + B)"].key,)
        needed = ("Supervised (side head)", "Supervised (side head, teacher B)", "Student A (teachers A + B)")
        assert set(ensemble.sources) == {cells[r].key for r in needed}
