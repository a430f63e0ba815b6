"""Tables and figures as data: ``papers/<paper>/experiments.yaml`` declares, for each table or figure
id, the runs it needs at each scale. The same declaration drives notebooks, SLURM arrays and reports.

A declaration (one item; rows x columns x folds x seeds is the set of runs)::

    items:
      - id: table1
        kind: table                   # table | figure
        title: Supervised and pseudo-label baselines
        metric: ap                    # a key of the final metrics (ap, ap50, ap75, ap_small, ...)
        model: teacher                # the model a method with a teacher is scored by
        plots: [ap_per_iou]           # figures drawn from the runs (see report/figures.py)
        rows:
          - name: Supervised          # the row as the report prints it
            method: supervised
            set: {}                   # TrainConfig overrides of this row (method_options included)
            burn_in_from: null        # a row whose burn-in snapshot this row's runs may start from
            reference: [{paper: labelmatch, item: table1, row: Supervised}]   # published counterparts
            ensemble_teachers_from: []  # rows whose burn-in snapshots are extra teachers (the run keys of
                                        # their runs at the same column, fold and seed resolution fill
                                        # method_options.ensemble_teachers; the runs wait for the snapshots)
            ensemble_with_from: []    # rows whose finished students are ensembled with this row's at the
                                      # final evaluation (fills ensemble_with; the runs wait for their records)
            seed_offset: 0            # added to the seed the row resolves to (--set seed=N, declared or
                                      # --seeds, its own set: {seed}, the preset's), so an ensemble's
                                      # second teacher differs at every seed
            model: null               # the model this row is scored by (e.g. ensemble; default: the item's)
        columns:
          - name: "5%"
            set: {percent: 5}
        scales:
          smoke: {columns: ["10%"], folds: [1]}
          mini: {columns: ["1%", "5%"], folds: [1, 2], seeds: [0, 1, 2]}   # seeds: default [0]
          paper: {columns: ["1%", "5%", "10%"], folds: [1, 2, 3, 4, 5], set: {...},
                  method_options: {labelmatch: {act_interval: 1000}}}   # options of one method's rows

``method_options`` dicts merge key by key, later winning: the scale's options for the row's method,
the column's, then the row's (so a column can vary one option of a scale-specific setting); a
column's options reach only the rows whose method has them (a Supervised row beside LabelMatch
variants stays one run). A column may name its own ``metric`` (a table whose columns are metrics or
classes, see ``metric_value`` in report/experiments.py).

Ensembles (Rethinking PL's Table 3): a row's ``ensemble_teachers_from`` / ``ensemble_with_from`` rows
resolve at the same column, fold and seed resolution. A row's ``seed_offset`` makes its runs differ
from their neighbours' at every seed (a row's ``set: {seed: N}`` would be overridden by declared or
requested seeds); rows of one ensemble that resolve to one run, or name each other in a circle, are
errors. :func:`plan` orders every run after the runs it starts from or waits for.

Keys outside this schema are errors (a misspelt key would otherwise be ignored and change the runs
silently); top-level keys starting with ``x-`` are free, for YAML anchors. Folds count from 1.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssodlib.config import TrainConfig, config_dict, load_yaml, train_config
from ssodlib.io import InputError, repository_folder

# fields that change where or how fast a run goes, never what it computes: not part of a run's key
RUNTIME_FIELDS = frozenset({"data_root", "device", "num_workers", "threads", "eval_every", "eval_student", "checkpoint_every",
                            "log_every", "init_from", "snapshots"})

# fields added after records were shipped: left out of a run's key while at their default, so the key of
# every run that does not set them stays what it was (a key names what a run computes, and these
# defaults compute what the run computed before the field existed)
KEY_NEUTRAL_DEFAULTS: dict[str, Any] = {"strong_augment": ("color", "blur", "cutout"),
                                         "ensemble_with": (), "independent_student_view": False}

# (required, optional) keys of each part of a declaration, as the module docstring describes them
FILE_KEYS = (frozenset({"items"}), frozenset({"paper", "title"}))
ITEM_KEYS = (frozenset({"id", "rows", "columns", "scales"}), frozenset({"kind", "title", "metric", "model", "plots"}))
ROW_KEYS = (frozenset({"name", "method"}), frozenset({"set", "burn_in_from", "reference", "ensemble_teachers_from",
                                                     "ensemble_with_from", "model", "seed_offset"}))
REFERENCE_KEYS = (frozenset({"paper", "item", "row"}), frozenset({"columns"}))
COLUMN_KEYS = (frozenset({"name"}), frozenset({"set", "metric"}))
SCALE_KEYS = (frozenset(), frozenset({"columns", "folds", "seeds", "set", "method_options"}))
SCHEMA = "the schema in ssodlib/experiments/plan.py"


def papers_dir() -> Path:
    """``$SSOD_PAPERS_DIR``, else the repository's ``papers/`` folder."""
    return repository_folder("papers", env="SSOD_PAPERS_DIR")


def run_key(config: TrainConfig) -> str:
    """A readable, stable key of what a run computes: ``{method}-{percent}pct-f{fold}-{hash}``."""
    payload = {k: v for k, v in config_dict(config).items()
               if k not in RUNTIME_FIELDS and not (k in KEY_NEUTRAL_DEFAULTS and v == KEY_NEUTRAL_DEFAULTS[k])}
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:10]
    return f"{config.method}-{config.percent:g}pct-f{config.fold}-{digest}"


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run of a declared item: which row, column and fold, and its resolved config."""

    paper: str
    item: str
    row: str
    column: str
    fold: int
    config: TrainConfig
    burn_in_from: str | None = None  # key of the run whose burn-in snapshot this run may start from
    # keys of the runs whose burn-in snapshots this run needs (extra teachers) and whose records it
    # waits for (students ensembled at its final evaluation)
    ensemble_teachers: tuple[str, ...] = ()
    ensemble_with: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return run_key(self.config)

    @property
    def sources(self) -> tuple[str, ...]:
        """Keys of every run this run starts from or waits for."""
        return (*((self.burn_in_from,) if self.burn_in_from else ()), *self.ensemble_teachers, *self.ensemble_with)

    @property
    def seed(self) -> int:
        return self.config.seed

    def describe(self) -> str:
        seed = f" | seed {self.seed}" if self.seed else ""  # seed 0 unnamed: the lines of plans before seeds
        return f"{self.item} | {self.row} | {self.column} | fold {self.fold}{seed} | {self.key}"


@dataclass(frozen=True, kw_only=True)
class Item:
    id: str
    kind: str
    title: str
    metric: str = "ap"
    model: str = "teacher"
    plots: tuple[str, ...] = ()
    rows: tuple[dict[str, Any], ...] = ()
    columns: tuple[dict[str, Any], ...] = ()
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["name"] == name)


@dataclass(frozen=True, kw_only=True)
class Declarations:
    paper: str
    title: str
    items: tuple[Item, ...]
    path: Path

    def item(self, item_id: str) -> Item:
        for it in self.items:
            if it.id == item_id:
                return it
        raise InputError(f"{self.path}: no table or figure {item_id!r}. Fix: choose one of "
                         f"{[i.id for i in self.items]} or 'all'.")


def load_declarations(paper: str) -> Declarations:
    path = papers_dir() / paper / "experiments.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in papers_dir().glob("*/experiments.yaml"))
        raise InputError(f"{path}: no such file. Fix: choose a paper among {known} (or set SSOD_PAPERS_DIR).")
    data = read_yaml(path, what="experiments declaration")
    _check_declarations(path, data)
    items = tuple(_item(d) for d in data["items"])
    return Declarations(paper=data.get("paper", paper), title=data.get("title", paper), items=items, path=path)


def read_yaml(path: Path, *, what: str) -> Any:
    """Parse a YAML file (``1e-3`` is a number); a syntax error raises :class:`InputError` naming the
    file and the line."""
    try:
        with open(path, "rb") as f:  # bytes: PyYAML detects the encoding and reports bad bytes itself
            return load_yaml(f)
    except yaml.MarkedYAMLError as e:
        mark, start = e.problem_mark or e.context_mark, e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        # an unclosed bracket is reported where parsing failed; the line that opened it is the one to fix
        opened = f"; {e.context} at line {start.line + 1}" if start and mark and start.line != mark.line else ""
        raise InputError(f"{path}: not valid YAML ({at}{e.problem or e.context}{opened}). Fix: correct the "
                         f"{what} there (an unclosed bracket or quote, a tab, or bad indentation).") from e
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not a readable YAML file ({e}). Fix: save the {what} as UTF-8 text.") from e


def _check_keys(path: Path, where: str, value: Any, keys: tuple[frozenset[str], frozenset[str]]) -> None:
    """A mapping with every required key and no unknown one: a misspelt key is an error, not a default."""
    required, optional = keys
    allowed = sorted(required | optional)
    if not isinstance(value, dict):
        raise InputError(f"{path}: malformed {where}: expected a mapping with keys {allowed}, got {value!r}. "
                         f"Fix: follow {SCHEMA}.")
    unknown = sorted(set(value) - required - optional, key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"{path}: malformed {where}: unknown key(s) {unknown}{hint}. Fix: use only {allowed}.")
    missing = sorted(required - set(value))
    if missing:
        raise InputError(f"{path}: malformed {where}: missing key(s) {missing}. Fix: add them ({SCHEMA}).")


def _entries(path: Path, where: str, value: Any, kind: str, label: str) -> list[tuple[str, Any]]:
    """``(where, entry)`` of each entry of a list, named by its ``label`` key (else its position)."""
    if not isinstance(value, list):
        raise InputError(f"{path}: malformed {where}: {kind}s must be a list, got {value!r}. Fix: follow {SCHEMA}.")
    names = [e.get(label, i + 1) if isinstance(e, dict) else i + 1 for i, e in enumerate(value)]
    return [(f"{where}, {kind} {name!r}" if where else f"{kind} {name!r}", e) for name, e in zip(names, value)]


def _check_declarations(path: Path, data: Any) -> None:
    top = {k: v for k, v in data.items() if not str(k).startswith("x-")} if isinstance(data, dict) else data
    _check_keys(path, "top level", top, FILE_KEYS)
    for where, item in _entries(path, "", data["items"], "item", "id"):
        _check_keys(path, where, item, ITEM_KEYS)
        for row_where, row in _entries(path, where, item["rows"], "row", "name"):
            _check_keys(path, row_where, row, ROW_KEYS)
            offset = row.get("seed_offset", 0)
            if type(offset) is not int or offset < 0:
                raise InputError(f"{path}: malformed {row_where}: seed_offset {offset!r} is not a non-negative "
                                 "int. Fix: e.g. seed_offset: 1.")
            for ref_where, ref in _entries(path, row_where, row.get("reference") or [], "reference", "paper"):
                _check_keys(path, ref_where, ref, REFERENCE_KEYS)
        for col_where, col in _entries(path, where, item["columns"], "column", "name"):
            _check_keys(path, col_where, col, COLUMN_KEYS)
        _check_scales(path, where, item["scales"])


def _check_scales(path: Path, where: str, scales: Any) -> None:
    if not isinstance(scales, dict):
        raise InputError(f"{path}: malformed {where}: scales must map a scale to its runs, got {scales!r}. "
                         "Fix: e.g. scales: {smoke: {folds: [1]}}.")
    for scale, at_scale in scales.items():
        _check_keys(path, f"{where}, scale {scale!r}", at_scale, SCALE_KEYS)
        _check_folds(at_scale.get("folds", [1]), f"{path}: malformed {where}, scale {scale!r}: folds",
                     fix="list folds from 1, e.g. folds: [1, 2]")
        seeds = at_scale.get("seeds", [0])
        if not (isinstance(seeds, list) and seeds and all(type(x) is int and x >= 0 for x in seeds)):
            raise InputError(f"{path}: malformed {where}, scale {scale!r}: seeds {seeds!r} are not a list of "
                             "non-negative ints. Fix: e.g. seeds: [0, 1, 2].")


def _check_folds(folds: Any, what: str, *, fix: str) -> None:
    """Folds count from 1, as the COCO-standard split files do (``instances_train2017.1@1.json`` to ``5@1``):
    a fold 0 would plan runs on a split that no standard tool writes."""
    if not isinstance(folds, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in folds):
        raise InputError(f"{what} {folds!r} are not a list of fold numbers. Fix: {fix}.")
    bad = [f for f in folds if f < 1]
    if bad:
        raise InputError(f"{what} {bad} are not fold numbers (folds count from 1). Fix: {fix}.")


def _item(d: dict[str, Any]) -> Item:
    return Item(id=d["id"], kind=d.get("kind", "table"), title=d.get("title", d["id"]), metric=d.get("metric", "ap"),
                model=d.get("model", "teacher"), plots=tuple(d.get("plots", ())), rows=tuple(d["rows"]),
                columns=tuple(d["columns"]), scales=d["scales"])


def plan_items(paper: str, table: str, scale: str, *, folds: list[int] | None = None,
               columns: list[str] | None = None, overrides: dict[str, Any] | None = None,
               seeds: list[int] | None = None) -> dict[str, list[RunSpec]]:
    """The runs of each item (every item when ``table == "all"``), keyed by item id."""
    decl = load_declarations(paper)
    if folds:
        _check_folds(list(folds), f"{decl.path}: requested folds", fix="pass folds from 1, e.g. --folds 1,2")
    # "all" means every item declared at this scale (some need data the embedded benchmark lacks)
    items = [i for i in decl.items if scale in i.scales] if table == "all" else (decl.item(table),)
    if not items:
        raise InputError(f"{decl.path}: no table or figure declares runs for scale {scale!r}. Fix: choose a scale "
                         f"among {sorted({s for i in decl.items for s in i.scales})}.")
    if seeds is not None and not (isinstance(seeds, (list, tuple)) and seeds
                                  and all(type(s) is int and s >= 0 for s in seeds)):
        raise InputError(f"requested seeds {seeds!r} are not a list of non-negative ints. Fix: e.g. --seeds 0,1.")
    return {item.id: _item_runs(decl, item, scale, folds=folds, columns=columns, overrides=overrides or {},
                                seeds=seeds)
            for item in items}


def plan(paper: str, table: str, scale: str, *, folds: list[int] | None = None,
         columns: list[str] | None = None, overrides: dict[str, Any] | None = None,
         seeds: list[int] | None = None) -> list[RunSpec]:
    """The runs of one item (or of every item when ``table == "all"``) in a fixed order, runs that
    others start from or wait for first; a run shared by several items (same key) appears once."""
    specs: dict[str, RunSpec] = {}
    for runs in plan_items(paper, table, scale, folds=folds, columns=columns, overrides=overrides,
                           seeds=seeds).values():
        for spec in runs:
            specs.setdefault(spec.key, spec)
    depth: dict[str, int] = {}

    def level(spec: RunSpec) -> int:  # 0: needs no other run; else 1 + its deepest source's level
        if spec.key not in depth:
            depth[spec.key] = 1 + max((level(specs[k]) for k in spec.sources if k in specs), default=-1)
        return depth[spec.key]

    # a source outside the plan counts as a source (a plan of some columns or folds keeps its order)
    return sorted(specs.values(), key=lambda s: max(level(s), 1 if s.sources else 0))


def _item_runs(decl: Declarations, item: Item, scale: str, *, folds: list[int] | None, columns: list[str] | None,
               overrides: dict[str, Any], seeds: list[int] | None = None) -> list[RunSpec]:
    if scale not in item.scales:
        raise InputError(f"{decl.path}: item {item.id!r} declares no runs for scale {scale!r}. "
                         f"Fix: choose one of {sorted(item.scales)}.")
    at_scale = item.scales[scale]
    names = columns or at_scale.get("columns") or [c["name"] for c in item.columns]
    unknown = sorted(set(names) - {c["name"] for c in item.columns})
    if unknown:
        raise InputError(f"{decl.path}: item {item.id!r} has no column(s) {unknown}. "
                         f"Fix: choose among {[c['name'] for c in item.columns]}.")
    out = []
    for fold, seed in ((f, s) for f in folds or at_scale.get("folds", [1]) for s in seeds or at_scale.get("seeds", [None])):
        # declared seeds win over a `set` seed; an explicit --set seed=N wins over both (a row's
        # seed_offset is added to the winner)
        seeded = overrides if seed is None else {"seed": seed, **overrides}
        for col in (c for c in item.columns if c["name"] in names):
            cell = _Cell(decl=decl, item=item, scale=scale, col=col, at_scale=at_scale, fold=fold, overrides=seeded)
            for row in item.rows:
                config = cell.config(row["name"])
                source = row.get("burn_in_from")
                share = cell.key(_source_rows(cell, row, "burn_in_from", [source])[0]) if source else None
                out.append(RunSpec(paper=decl.paper, item=item.id, row=row["name"], column=col["name"], fold=fold,
                                   config=config, burn_in_from=share,
                                   ensemble_teachers=tuple(config.method_options.get("ensemble_teachers", ())),
                                   ensemble_with=config.ensemble_with))
    return out


@dataclass
class _Cell:
    """The runs of one column, fold and seed resolution of an item: each row's config, with the run
    keys of the rows it names in ``ensemble_teachers_from`` / ``ensemble_with_from`` filled in."""

    decl: Declarations
    item: Item
    scale: str
    col: dict[str, Any]
    at_scale: dict[str, Any]
    fold: int
    overrides: dict[str, Any]
    configs: dict[str, TrainConfig] = field(default_factory=dict)
    resolving: list[str] = field(default_factory=list)

    def key(self, row_name: str) -> str:
        return run_key(self.config(row_name))

    def config(self, row_name: str) -> TrainConfig:
        if row_name in self.configs:
            return self.configs[row_name]
        where = f"{self.decl.path}: item {self.item.id!r}, row {row_name!r}"
        if row_name in self.resolving:
            raise InputError(f"{where}: its ensemble rows lead back to it ({' -> '.join(self.resolving)}). Fix: "
                             "name rows that do not name this row in ensemble_teachers_from / ensemble_with_from.")
        self.resolving.append(row_name)
        row = self.item.row(row_name)
        config = _config(self.scale, row, self.col, self.at_scale, self.fold, self.overrides,
                         where=f"{self.decl.path} ({self.item.id})")
        teachers = [self.key(r) for r in _source_rows(self, row, "ensemble_teachers_from")]
        students = [self.key(r) for r in _source_rows(self, row, "ensemble_with_from")]
        self.resolving.pop()
        if teachers:
            if "ensemble_teachers" not in _option_defaults(row["method"]):
                raise InputError(f"{where}: method {row['method']!r} takes no extra teachers. Fix: drop "
                                 "ensemble_teachers_from, or use a method with the option ensemble_teachers.")
            config = dataclasses.replace(config, method_options={**config.method_options,
                                                                 "ensemble_teachers": tuple(teachers)})
        if students:
            config = dataclasses.replace(config, ensemble_with=tuple(students))
        twin = [self.key(r) for r in _source_rows(self, row, "burn_in_from", [row["burn_in_from"]])] \
            if row.get("burn_in_from") and teachers else []  # the run's own teacher starts from its burn-in
        own = [k for k in (*teachers, *students) if k == run_key(config)] + [k for k in twin if k in teachers]
        if own or len(set(teachers)) < len(teachers) or len(set(students)) < len(students):
            raise InputError(f"{where}: its ensemble names the same run twice (or itself): rows of one ensemble "
                             "resolve to one run key. Fix: make the rows differ (e.g. seed_offset: 1 on the second "
                             "teacher's rows; a row's set: {seed: N} is overridden by declared or requested seeds).")
        self.configs[row_name] = config
        return config


def _source_rows(cell: _Cell, row: dict[str, Any], key: str, names: list[str] | None = None) -> list[str]:
    """The rows a row names under ``key`` (a list of row names; ``burn_in_from``: one), each a row of the item."""
    names = names if names is not None else row.get(key) or []
    rows = [r["name"] for r in cell.item.rows]
    if not isinstance(names, list):
        raise InputError(f"{cell.decl.path}: item {cell.item.id!r}, row {row['name']!r}: {key} {names!r} is not a "
                         "list of row names. Fix: e.g. [\"Supervised\"].")
    for name in names:
        if name not in rows:
            raise InputError(f"{cell.decl.path}: item {cell.item.id!r}, row {row['name']!r}: {key} {name!r} "
                             f"is not a row of the item. Fix: name one of {rows}.")
    return names


def _config(scale: str, row: dict[str, Any], col: dict[str, Any], at_scale: dict[str, Any], fold: int,
            overrides: dict[str, Any], *, where: str) -> TrainConfig:
    layers = (at_scale.get("set", {}), col.get("set", {}), row.get("set", {}))
    values: dict[str, Any] = {**layers[0], **layers[1], **layers[2], "method": row["method"], "fold": fold, **overrides}
    values.pop("method_options", None)
    options = {**at_scale.get("method_options", {}).get(row["method"], {})}
    for depth, layer in enumerate((*layers, overrides)):
        layer_options = layer.get("method_options", {})
        if depth == 1 and layer_options:  # a column varies the options of the rows that have them
            known = _option_defaults(row["method"])
            layer_options = {k: v for k, v in layer_options.items() if k in known}
        options.update(layer_options)
    if options:  # an option set to its default is left out, so that the run's key does not depend on it
        defaults = _option_defaults(row["method"])
        values["method_options"] = {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}
    offset = row.get("seed_offset", 0)  # checked when the declarations load
    try:
        config = train_config(scale, **values)
        # the offset applies to whichever seed won (--set seed=N, declared or requested, the row's own
        # set: {seed}, the preset's)
        return train_config(scale, **{**values, "seed": config.seed + offset}) if offset else config
    except (InputError, TypeError) as e:
        raise InputError(f"{where}: row {row['name']!r}, column {col['name']!r}: {e}") from e


def _option_defaults(method: str) -> dict[str, Any]:
    from ssodlib.methods import get_method  # imports torch: only for declarations that need it

    return {f.name: f.default for f in dataclasses.fields(get_method(method).Options)}


def with_runtime(config: TrainConfig, **runtime: Any) -> TrainConfig:
    """The same run with runtime fields (data location, device, threads, ...) set; its key is unchanged."""
    bad = sorted(set(runtime) - RUNTIME_FIELDS)
    if bad:
        raise ValueError(f"not runtime fields: {bad}")
    return dataclasses.replace(config, **runtime)
