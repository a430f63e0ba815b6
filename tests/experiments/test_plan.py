"""Planning: a declaration's rows x columns x folds become runs with resolved configs and stable keys."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest

from ssodlib.config import TrainConfig, config_dict, train_config
from ssodlib.experiments.plan import RUNTIME_FIELDS, load_declarations, plan, plan_items, run_key, with_runtime
from ssodlib.experiments.reference import published
from ssodlib.io import InputError

# lr: scale 0.07 < column "1%" 0.05 < row Sup 0.03; seed: scale 3 < column "1%" 7
TINY = """
paper: tiny
title: Tiny
items:
  - id: t1
    kind: table
    rows:
      - {name: Sup, method: supervised, set: {lr: 0.03}}
      - {name: PL, method: pseudo_label, burn_in_from: Sup, set: {unsup_weight: 3.0}}
    columns:
      - {name: "1%", set: {percent: 1, lr: 0.05, seed: 7}}
      - {name: "5%", set: {percent: 5}}
    scales:
      smoke: {columns: ["1%", "5%"], folds: [1, 2], set: {lr: 0.07, seed: 3, weight_decay: 0.0005, iterations: 6}}
      mini: {}
  - id: f1
    kind: figure
    plots: [ap_per_iou]
    rows:
      - {name: PL, method: pseudo_label, burn_in_from: Sup, set: {unsup_weight: 3.0}}
      - {name: Sup, method: supervised, set: {lr: 0.03}}
    columns:
      - {name: "5%", set: {percent: 5}}
    scales:
      smoke: {folds: [1], set: {lr: 0.07, seed: 3, weight_decay: 0.0005, iterations: 6}}
"""

BROKEN = """
paper: broken
items:
  - id: badkey
    rows: [{name: Sup, method: supervised, set: {lrr: 0.1}}]
    columns: [{name: "5%", set: {percent: 5}}]
    scales: {smoke: {}}
  - id: badsource
    rows: [{name: PL, method: pseudo_label, burn_in_from: Supervised}]
    columns: [{name: "5%", set: {percent: 5}}]
    scales: {smoke: {}}
"""


@pytest.fixture
def papers(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "papers"
    for name, text in (("tiny", TINY), ("broken", BROKEN)):
        (root / name).mkdir(parents=True)
        (root / name / "experiments.yaml").write_text(text)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(root))
    return root


def _by_cell(specs):
    return {(s.row, s.column, s.fold): s for s in specs}


def test_rows_columns_and_folds_make_the_runs(papers):
    specs = plan("tiny", "t1", "smoke")
    cells = _by_cell(specs)
    assert len(specs) == len(cells) == 8  # 2 rows x 2 columns x 2 folds
    assert set(cells) == set(itertools.product(["Sup", "PL"], ["1%", "5%"], [1, 2]))
    assert len({s.key for s in specs}) == 8
    for (row, column, fold), s in cells.items():
        assert (s.paper, s.item) == ("tiny", "t1")
        assert s.config.method == {"Sup": "supervised", "PL": "pseudo_label"}[row]
        assert s.config.percent == {"1%": 1, "5%": 5}[column]
        assert s.config.fold == fold and s.config.scale == "smoke"
        assert s.config.iterations == 6 and s.config.weight_decay == 0.0005  # from the scale's set
        assert s.key == run_key(s.config) and s.key.startswith(f"{s.config.method}-{column[:-1]}pct-f{fold}-")
    assert cells["PL", "5%", 1].config.unsup_weight == 3.0
    assert cells["Sup", "5%", 1].config.unsup_weight == train_config("smoke").unsup_weight


def test_row_set_wins_over_column_set_wins_over_scale_set(papers):
    cells = _by_cell(plan("tiny", "t1", "smoke"))
    #                       (lr, seed)
    expected = {("Sup", "1%"): (0.03, 7),  # row lr, column seed
                ("Sup", "5%"): (0.03, 3),  # row lr, scale seed
                ("PL", "1%"): (0.05, 7),  # column lr and seed
                ("PL", "5%"): (0.07, 3)}  # scale lr and seed
    for (row, column), (lr, seed) in expected.items():
        for fold in (1, 2):
            c = cells[row, column, fold].config
            assert (c.lr, c.seed) == (lr, seed), (row, column, fold)


def test_explicit_overrides_win_over_every_set(papers):
    specs = plan("tiny", "t1", "smoke", overrides={"lr": 0.2, "seed": 11})
    assert len(specs) == 8
    assert {(s.config.lr, s.config.seed) for s in specs} == {(0.2, 11)}
    plain = {s.key for s in plan("tiny", "t1", "smoke")}
    assert plain.isdisjoint(s.key for s in specs)  # a different computation, a different key
    cells = _by_cell(specs)
    assert cells["PL", "1%", 2].burn_in_from == cells["Sup", "1%", 2].key  # the source gets the overrides too


def test_chosen_columns_and_folds_and_default_folds(papers):
    specs = plan("tiny", "t1", "smoke", columns=["5%"], folds=[3])
    assert sorted((s.row, s.column, s.fold) for s in specs) == [("PL", "5%", 3), ("Sup", "5%", 3)]
    mini = plan("tiny", "t1", "mini")  # no columns / folds declared: every column, fold 1
    assert sorted((s.row, s.column, s.fold) for s in mini) == [
        ("PL", "1%", 1), ("PL", "5%", 1), ("Sup", "1%", 1), ("Sup", "5%", 1)]
    assert {s.config.scale for s in mini} == {"mini"} and {s.config.iterations for s in mini} == {
        train_config("mini").iterations}


def test_runs_that_start_from_a_burn_in_come_after_their_source_and_carry_its_key(papers):
    for table in ("t1", "f1", "all"):
        specs = plan("tiny", table, "smoke")
        position = {s.key: i for i, s in enumerate(specs)}
        cells = _by_cell(specs)
        for (row, column, fold), s in cells.items():
            if row == "Sup":
                assert s.burn_in_from is None
            else:
                source = cells["Sup", column, fold]
                assert s.burn_in_from == source.key
                assert position[source.key] < position[s.key], table
    # f1 declares PL before Sup; the plan still puts Sup first
    assert [s.row for s in plan("tiny", "f1", "smoke")] == ["Sup", "PL"]


def test_all_items_share_identical_runs_once(papers):
    items = plan_items("tiny", "all", "smoke")
    assert {k: len(v) for k, v in items.items()} == {"t1": 8, "f1": 2}
    everything = plan("tiny", "all", "smoke")
    assert len(everything) == 8  # f1's two runs are t1's 5% fold-1 runs
    assert {s.key for s in items["f1"]} <= {s.key for s in items["t1"]}
    assert {s.key for s in everything} == {s.key for s in items["t1"]}


def test_run_key_ignores_runtime_fields_only():
    assert RUNTIME_FIELDS <= {f.name for f in dataclasses.fields(TrainConfig)}
    base = train_config("smoke", method="supervised")
    key = run_key(base)
    assert re.fullmatch(r"supervised-10pct-f1-[0-9a-f]{10}", key)
    runtime = dict(data_root="/elsewhere", device="cpu", threads=1, eval_every=7, snapshots=(3, 5),
                   init_from="/x/checkpoint-4.pt", num_workers=3, checkpoint_every=9, log_every=5)
    for name, value in runtime.items():
        assert run_key(dataclasses.replace(base, **{name: value})) == key, name
    assert run_key(with_runtime(base, **runtime)) == key
    changed = dict(lr=0.5, method_options={"score_thresh": 0.5}, seed=1, iterations=9, burn_in=3, amp="bf16",
                   detector_options={**base.detector_options, "backbone": "resnet18"}, dataset="coco", unsup_weight=1.0, lr_steps=(5,))
    keys = {run_key(dataclasses.replace(base, **{name: value})) for name, value in changed.items()}
    assert len(keys) == len(changed) and key not in keys
    a = dataclasses.replace(base, method_options={"a": 1, "b": 2})
    b = dataclasses.replace(base, method_options={"b": 2, "a": 1})
    assert run_key(a) == run_key(b)  # dict order is not part of the run
    with pytest.raises(ValueError, match="not runtime fields"):
        with_runtime(base, lr=0.1)


def test_a_field_added_later_keeps_old_keys_at_its_default_and_changes_them_otherwise():
    # strong_augment came after records shipped: at its default the key is the key of the same config
    # hashed without the field (what every shipped record was keyed by); a subset is another run
    base = train_config("smoke", method="pseudo_label")
    later = {"strong_augment", "ensemble_with", "independent_student_view"}  # every field added after records shipped
    payload = {k: v for k, v in config_dict(base).items() if k not in RUNTIME_FIELDS and k not in later}
    legacy = hashlib.sha1(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:10]
    assert run_key(base) == f"pseudo_label-10pct-f1-{legacy}"
    assert run_key(dataclasses.replace(base, strong_augment=("color", "blur"))) != run_key(base)
    assert run_key(dataclasses.replace(base, strong_augment=["color", "blur", "cutout"])) == run_key(base)
    assert run_key(dataclasses.replace(base, independent_student_view=True)) != run_key(base)


def test_unknown_table_scale_column_and_key_name_the_yaml_file(papers):
    tiny = str(papers / "tiny" / "experiments.yaml")
    broken = str(papers / "broken" / "experiments.yaml")
    cases = [
        (lambda: plan("tiny", "table9", "smoke"), tiny, "table9"),
        (lambda: plan("tiny", "t1", "paper"), tiny, "'paper'"),
        (lambda: plan("tiny", "f1", "mini"), tiny, "'mini'"),  # f1 declares no mini runs
        (lambda: plan("tiny", "all", "paper"), tiny, "'paper'"),  # no item does
        (lambda: plan("tiny", "t1", "smoke", columns=["50%"]), tiny, "'50%'"),
        (lambda: plan("broken", "badkey", "smoke"), broken, "lrr"),
        (lambda: plan("broken", "badsource", "smoke"), broken, "'Supervised'"),
    ]
    for call, path, detail in cases:
        with pytest.raises(InputError) as e:
            call()
        assert path in str(e.value) and detail in str(e.value)
    with pytest.raises(InputError, match="unknown configuration key"):
        plan("tiny", "t1", "smoke", overrides={"iterationz": 3})


def test_a_malformed_item_or_missing_paper_is_an_input_error(papers):
    (papers / "bad").mkdir()
    (papers / "bad" / "experiments.yaml").write_text("items:\n  - id: x\n    columns: []\n")  # no rows
    with pytest.raises(InputError, match="malformed item"):
        load_declarations("bad")
    with pytest.raises(InputError) as e:
        plan("nosuch", "all", "smoke")
    assert str(papers / "nosuch" / "experiments.yaml") in str(e.value)
    assert "['bad', 'broken', 'tiny']" in str(e.value)


# one item whose keys the tests below misspell one at a time
ONE = """
paper: one
title: One
x-note: free, for YAML anchors
items:
  - id: t1
    kind: table
    rows:
      - {name: Sup, method: supervised, reference: [{paper: labelmatch, item: table1, row: Supervised}]}
      - {name: PL, method: pseudo_label, burn_in_from: Sup}
    columns:
      - {name: "5%", set: {percent: 5}}
    scales:
      smoke: {columns: ["5%"], folds: [1]}
"""


def _declare(papers: Path, text: str) -> Path:
    (papers / "one").mkdir(exist_ok=True)
    path = papers / "one" / "experiments.yaml"
    path.write_text(text)
    return path


def _error(call) -> str:
    with pytest.raises(InputError) as e:
        call()
    return str(e.value)


def test_the_one_item_declaration_plans(papers):
    _declare(papers, ONE)
    assert [(s.row, s.fold) for s in plan("one", "t1", "smoke")] == [("Sup", 1), ("PL", 1)]


def test_a_misspelt_row_key_names_the_file_the_item_and_the_allowed_keys(papers):
    path = _declare(papers, ONE.replace("{name: Sup, method:", "{name: Sup, methd:"))
    message = _error(lambda: plan("one", "t1", "smoke"))
    assert message.startswith(f"{path}: malformed item 't1', row 'Sup': unknown key(s) ['methd']")
    assert "did you mean 'method'?" in message
    assert ("Fix: use only ['burn_in_from', 'ensemble_teachers_from', 'ensemble_with_from', 'method', 'model', "
            "'name', 'reference', 'seed_offset', 'set']") in message


def test_a_misspelt_optional_row_key_is_an_error_not_a_row_without_it(papers):
    path = _declare(papers, ONE.replace("burn_in_from: Sup", "burn_in_form: Sup"))
    message = _error(lambda: plan("one", "t1", "smoke"))  # was planned with PL from scratch
    assert f"{path}: malformed item 't1', row 'PL': unknown key(s) ['burn_in_form']" in message
    assert "did you mean 'burn_in_from'?" in message and "Fix:" in message


@pytest.mark.parametrize("old, new, key", [("    columns:", "    colums:", "colums"),
                                           ("    kind: table", "    kind: table\n    metrc: ap50", "metrc")],
                         ids=["required", "optional"])
def test_a_misspelt_item_key_names_the_file_the_item_and_the_allowed_keys(papers, old, new, key):
    path = _declare(papers, ONE.replace(old, new))
    message = _error(lambda: load_declarations("one"))
    assert message.startswith(f"{path}: malformed item 't1': unknown key(s) [{key!r}]")
    assert "Fix: use only ['columns', 'id', 'kind', 'metric', 'model', 'plots', 'rows', 'scales', 'title']" in message


def test_a_misspelt_scale_key_names_the_file_the_item_the_scale_and_the_allowed_keys(papers):
    path = _declare(papers, ONE.replace('{columns: ["5%"]', '{colmns: ["5%"]'))
    message = _error(lambda: plan("one", "t1", "smoke"))  # was planned with every column
    assert message.startswith(f"{path}: malformed item 't1', scale 'smoke': unknown key(s) ['colmns']")
    assert "Fix: use only ['columns', 'folds', 'method_options', 'seeds', 'set']" in message


def test_a_misspelt_column_key_names_the_file_the_item_the_column_and_the_allowed_keys(papers):
    path = _declare(papers, ONE.replace("set: {percent: 5}", "sett: {percent: 5}"))
    message = _error(lambda: plan("one", "t1", "smoke"))  # was planned at the scale's default percent
    assert message.startswith(f"{path}: malformed item 't1', column '5%': unknown key(s) ['sett']")
    assert "Fix: use only ['metric', 'name', 'set']" in message


def test_a_misspelt_top_level_or_reference_key_names_the_file(papers):
    path = _declare(papers, ONE.replace("title: One", "titel: One"))
    assert _error(lambda: load_declarations("one")).startswith(f"{path}: malformed top level: unknown key(s) ['titel']")
    _declare(papers, ONE.replace("row: Supervised", "rwo: Supervised"))
    message = _error(lambda: load_declarations("one"))
    assert "item 't1', row 'Sup', reference 'labelmatch': unknown key(s) ['rwo']" in message and "Fix:" in message


def test_rows_that_are_not_a_list_of_mappings_name_the_file_and_the_item(papers):
    path = _declare(papers, ONE.replace("      - {name: PL, method: pseudo_label, burn_in_from: Sup}", "      - PL"))
    message = _error(lambda: load_declarations("one"))
    assert message.startswith(f"{path}: malformed item 't1', row 2: expected a mapping") and "Fix:" in message
    _declare(papers, "items:\n  - {id: t1, rows: Sup, columns: [], scales: {}}\n")
    assert "malformed item 't1': rows must be a list" in _error(lambda: load_declarations("one"))


def test_a_yaml_syntax_error_in_the_declarations_names_the_file_and_the_line(papers):
    path = _declare(papers, ONE.replace('{name: "5%", set: {percent: 5}}', '{name: "5%", set: {percent: 5}'))
    message = _error(lambda: plan("one", "t1", "smoke"))
    assert message.startswith(f"{path}: not valid YAML (line 13, column 5: ")
    assert "at line 12" in message and "Fix:" in message  # the line of the unclosed brace


def test_a_yaml_syntax_error_in_the_published_numbers_names_the_file_and_the_line(papers):
    (papers / "one").mkdir()
    path = papers / "one" / "reference.yaml"
    path.write_text("paper: one\nitems:\n  - id: t1\n    rows:\n  - name: Sup\n      values: {}\n")  # indented too far
    message = _error(lambda: published("one", "t1", "Sup", "5%"))
    assert message.startswith(f"{path}: not valid YAML (line 6, ") and "Fix:" in message


@pytest.mark.parametrize("folds", [[0], [1, 0], [-1]])
def test_fold_0_in_the_folds_argument_is_refused(papers, folds):
    message = _error(lambda: plan("tiny", "t1", "smoke", folds=folds))  # was planned as a fold-0 run
    assert str(papers / "tiny" / "experiments.yaml") in message
    assert f"requested folds {[f for f in folds if f < 1]} are not fold numbers (folds count from 1)" in message
    assert "Fix: pass folds from 1" in message


@pytest.mark.parametrize("folds", ["[0]", "[0, 1]", "[one]"])
def test_fold_0_in_a_scale_s_folds_list_is_refused(papers, folds):
    path = _declare(papers, ONE.replace("folds: [1]", f"folds: {folds}"))
    message = _error(lambda: plan("one", "t1", "smoke"))
    assert message.startswith(f"{path}: malformed item 't1', scale 'smoke': folds ")
    assert "Fix: list folds from 1" in message

def test_the_baselines_declaration_plans_at_every_scale(monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    counts = {scale: len(plan("baselines", "all", scale)) for scale in ("smoke", "mini", "paper")}
    # table1: 2 rows x columns x folds (x 3 seeds at mini); the figure's runs are table1's runs
    assert counts == {"smoke": 2 * 1 * 1, "mini": 2 * 2 * 2 * 3, "paper": 2 * 3 * 5}
    assert len(plan("baselines", "table1", "mini", seeds=[0])) == 8  # --seeds 0: the demo's and a quick table
    with pytest.raises(InputError, match="seeds"):
        plan("baselines", "table1", "mini", seeds=[-1])
    mini = plan("baselines", "table1", "mini")
    assert {(s.fold, s.seed) for s in mini} == {(f, sd) for f in (1, 2) for sd in (0, 1, 2)}
    # a run starts from the burn-in of its own fold, column and seed
    by_key = {s.key: s for s in mini}
    for s in mini:
        if s.burn_in_from:
            twin = by_key[s.burn_in_from]
            assert (twin.fold, twin.seed, twin.column, twin.config.method) == (s.fold, s.seed, s.column, "supervised")
    paper = plan("baselines", "all", "paper")
    assert {s.config.dataset for s in paper} == {"coco"}
    assert {s.config.percent for s in paper} == {1.0, 5.0, 10.0} and {s.config.fold for s in paper} == {1, 2, 3, 4, 5}


def test_every_published_counterpart_of_the_baselines_resolves(monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    decl = load_declarations("baselines")
    checked = 0
    for item in decl.items:
        for row in item.rows:
            for ref in row.get("reference") or []:
                for column in item.scales["paper"]["columns"]:
                    value = published(ref["paper"], ref["item"], ref["row"], ref.get("columns", {}).get(column, column))
                    assert isinstance(value, float), (item.id, row["name"], ref, column)
                    checked += 1
    # two rows, four papers each (Semi-DETR's are DETR baselines, compared with DETR runs), three columns
    assert checked == 2 * 4 * 3


OPTIONS = """
paper: opts
items:
  - id: ablation
    kind: figure
    rows:
      - {name: Sup, method: supervised}
      - {name: LM, method: labelmatch, burn_in_from: Sup, set: {method_options: {mining: false}}}
    columns:
      - {name: "a=0.2", set: {method_options: {alpha: 0.2}}}
      - {name: "a=0.5", set: {method_options: {alpha: 0.5, act_images: 7}}}
    scales:
      smoke: {method_options: {labelmatch: {act_interval: 2, act_images: 50}}}
  - id: paper_only
    kind: table
    rows: [{name: Sup, method: supervised}]
    columns: [{name: "5%"}]
    scales: {paper: {}}
"""


def test_method_options_merge_scale_column_row_and_drop_defaults(tmp_path, monkeypatch):
    (tmp_path / "opts").mkdir()
    (tmp_path / "opts" / "experiments.yaml").write_text(OPTIONS)
    monkeypatch.setenv("SSOD_PAPERS_DIR", str(tmp_path))
    runs = {(s.row, s.column): s for s in plan_items("opts", "ablation", "smoke")["ablation"]}
    # the scale's options reach only labelmatch rows; a column's option that is the default (alpha 0.2)
    # is left out, and a column's options never reach the supervised row, which stays one run
    assert runs["Sup", "a=0.2"].config.method_options == {} and runs["Sup", "a=0.2"].key == runs["Sup", "a=0.5"].key
    assert runs["LM", "a=0.2"].config.method_options == {"act_interval": 2, "act_images": 50, "mining": False}
    assert runs["LM", "a=0.5"].config.method_options == {"act_interval": 2, "act_images": 7, "mining": False,
                                                         "alpha": 0.5}
    assert runs["LM", "a=0.2"].burn_in_from == runs["Sup", "a=0.2"].key
    overridden = plan_items("opts", "ablation", "smoke", overrides={"method_options": {"act_interval": 5}})
    assert {s.config.method_options.get("act_interval") for s in overridden["ablation"] if s.row == "LM"} == {5}
    # "all" plans the items declared at the scale; naming an item that is not is an error
    assert set(plan_items("opts", "all", "smoke")) == {"ablation"}
    assert set(plan_items("opts", "all", "paper")) == {"paper_only"}
    with pytest.raises(InputError, match="declares no runs for scale 'smoke'"):
        plan_items("opts", "paper_only", "smoke")


def test_the_labelmatch_declaration_plans_at_every_scale(monkeypatch):
    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    runs = {scale: plan("labelmatch", "all", scale) for scale in ("smoke", "mini", "paper")}
    mini = runs["mini"]
    methods = [s.config.method for s in mini]
    # Table 1's main rows on 2 folds x 3 seeds: 12 supervised runs (1 %, 5 %), two of which (fold 1,
    # seed 0) are the burn-ins of every ablation run
    assert methods.count("supervised") == 2 * 2 * 3 and all(s.burn_in_from for s in mini if s.config.method != "supervised")
    assert len(mini) == 3 * 2 * 2 * 3 + 13
    assert {s.burn_in_from for s in mini if s.item != "table1"} <= {s.key for s in mini if s.seed == 0 and s.fold == 1}
    lm = [s.config.method_options for s in mini if s.config.method == "labelmatch"]
    assert all(o["act_interval"] in (100, 250, None) and o["act_images"] == 500 for o in lm)
    assert {(o.get("act", True), o.get("fixed_threshold", 0.9)) for o in lm} >= {(False, 0.7), (False, 0.8), (False, 0.9)}
    assert {s.config.dataset for s in runs["paper"]} == {"coco", "coco-additional", "voc"}
    assert all(s.config.method_options == {} for s in runs["paper"] if s.item == "table1")  # the official K, images
