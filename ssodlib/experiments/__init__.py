"""Experiments: the runs each table and figure needs (``plan``), running them into a results store
(``run_plan``), and the main job (``demo``)."""

from ssodlib.experiments.plan import RunSpec, load_declarations, papers_dir, plan, run_key
from ssodlib.experiments.runner import run_one, run_plan
from ssodlib.experiments.store import ResultsStore, default_results_dir

__all__ = ["RunSpec", "ResultsStore", "default_results_dir", "load_declarations", "papers_dir", "plan", "run_key",
           "run_one", "run_plan"]
