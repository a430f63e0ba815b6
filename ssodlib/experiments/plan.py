"""Tables and figures as data: ``papers/<paper>/experiments.yaml`` declares, for each table or figure
id, the runs it needs at each scale. The same declaration drives notebooks, SLURM arrays and reports.

A declaration (one item; rows x columns x folds is the set of runs)::

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
        columns:
          - name: "5%"
            set: {percent: 5}
        scales:
          smoke: {columns: ["10%"], folds: [1]}
          mini: {columns: ["1%", "5%"], folds: [1, 2]}
          paper: {columns: ["1%", "5%", "10%"], folds: [1, 2, 3, 4, 5], set: {...},
                  method_options: {labelmatch: {act_interval: 1000}}}   # options of one method's rows

``method_options`` dicts merge key by key, later winning: the scale's options for the row's method,
the column's, then the row's (so a column can vary one option of a scale-specific setting); a
column's options reach only the rows whose method has them (a Supervised row beside LabelMatch
variants stays one run). A column may name its own ``metric`` (a table whose columns are metrics or
classes, see ``metric_value`` in report/experiments.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssodlib.config import TrainConfig, config_dict, train_config
from ssodlib.io import InputError, repository_folder

# fields that change where or how fast a run goes, never what it computes: not part of a run's key
RUNTIME_FIELDS = frozenset({"data_root", "device", "num_workers", "threads", "eval_every", "checkpoint_every",
                            "log_every", "init_from", "snapshots"})


def papers_dir() -> Path:
    """``$SSOD_PAPERS_DIR``, else the repository's ``papers/`` folder."""
    return repository_folder("papers", env="SSOD_PAPERS_DIR")


def run_key(config: TrainConfig) -> str:
    """A readable, stable key of what a run computes: ``{method}-{percent}pct-f{fold}-{hash}``."""
    payload = {k: v for k, v in config_dict(config).items() if k not in RUNTIME_FIELDS}
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

    @property
    def key(self) -> str:
        return run_key(self.config)

    def describe(self) -> str:
        return f"{self.item} | {self.row} | {self.column} | fold {self.fold} | {self.key}"


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
    with open(path) as f:
        data = yaml.safe_load(f)
    try:
        items = tuple(_item(d) for d in data["items"])
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: malformed item ({e}). Fix: follow the schema in ssodlib/experiments/plan.py.")
    return Declarations(paper=data.get("paper", paper), title=data.get("title", paper), items=items, path=path)


def _item(d: dict[str, Any]) -> Item:
    return Item(id=d["id"], kind=d.get("kind", "table"), title=d.get("title", d["id"]), metric=d.get("metric", "ap"),
                model=d.get("model", "teacher"), plots=tuple(d.get("plots", ())), rows=tuple(d["rows"]),
                columns=tuple(d["columns"]), scales=d["scales"])


def plan_items(paper: str, table: str, scale: str, *, folds: list[int] | None = None,
               columns: list[str] | None = None, overrides: dict[str, Any] | None = None) -> dict[str, list[RunSpec]]:
    """The runs of each item (every item when ``table == "all"``), keyed by item id."""
    decl = load_declarations(paper)
    # "all" means every item declared at this scale (some need data the embedded benchmark lacks)
    items = [i for i in decl.items if scale in i.scales] if table == "all" else (decl.item(table),)
    if not items:
        raise InputError(f"{decl.path}: no table or figure declares runs for scale {scale!r}. Fix: choose a scale "
                         f"among {sorted({s for i in decl.items for s in i.scales})}.")
    return {item.id: _item_runs(decl, item, scale, folds=folds, columns=columns, overrides=overrides or {})
            for item in items}


def plan(paper: str, table: str, scale: str, *, folds: list[int] | None = None,
         columns: list[str] | None = None, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """The runs of one item (or of every item when ``table == "all"``) in a fixed order, runs that
    others start from first; a run shared by several items (same key) appears once."""
    specs: dict[str, RunSpec] = {}
    for runs in plan_items(paper, table, scale, folds=folds, columns=columns, overrides=overrides).values():
        for spec in runs:
            specs.setdefault(spec.key, spec)
    return sorted(specs.values(), key=lambda s: s.burn_in_from is not None)


def _item_runs(decl: Declarations, item: Item, scale: str, *, folds: list[int] | None, columns: list[str] | None,
               overrides: dict[str, Any]) -> list[RunSpec]:
    if scale not in item.scales:
        raise InputError(f"{decl.path}: item {item.id!r} declares no runs for scale {scale!r}. "
                         f"Fix: choose one of {sorted(item.scales)}.")
    at_scale = item.scales[scale]
    names = columns or at_scale.get("columns") or [c["name"] for c in item.columns]
    unknown = sorted(set(names) - {c["name"] for c in item.columns})
    if unknown:
        raise InputError(f"{decl.path}: item {item.id!r} has no column(s) {unknown}.")
    out = []
    for fold in folds or at_scale.get("folds", [1]):
        for col in (c for c in item.columns if c["name"] in names):
            for row in item.rows:
                config = _config(scale, row, col, at_scale, fold, overrides, where=f"{decl.path} ({item.id})")
                source = row.get("burn_in_from")
                if source and source not in [r["name"] for r in item.rows]:
                    raise InputError(f"{decl.path}: item {item.id!r}, row {row['name']!r}: burn_in_from {source!r} "
                                     f"is not a row of the item. Fix: name one of {[r['name'] for r in item.rows]}.")
                share = run_key(_config(scale, item.row(source), col, at_scale, fold, overrides,
                                        where=str(decl.path))) if source else None
                out.append(RunSpec(paper=decl.paper, item=item.id, row=row["name"], column=col["name"], fold=fold,
                                   config=config, burn_in_from=share))
    return out


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
    try:
        return train_config(scale, **values)
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
