import json
import subprocess
import sys

import pytest

from ssodlib.cli import main


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "ssodlib", "--help"], capture_output=True, text=True, check=True)
    assert "data" in out.stdout and "demo" in out.stdout


def test_synth_and_split_commands(tmp_path, capsys):
    root = tmp_path / "bench"
    assert main(["--quiet", "data", "synth", "--scale", "smoke", "--out", str(root), "--num-train", "100",
                 "--num-val", "5", "--workers", "1"]) == 0
    train = root / "annotations" / "instances_train.json"
    assert len(json.loads(train.read_text())["images"]) == 100
    out_dir = tmp_path / "folds"
    assert main(["data", "split-coco", str(train), "--out-dir", str(out_dir), "--folds", "2", "--percents", "10"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["instances_train.2@10-unlabeled.json",
                                                         "instances_train.2@10.json"]
    assert len(json.loads((out_dir / "instances_train.2@10.json").read_text())["images"]) <= 10


def test_bad_input_exits_2_and_names_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    assert main(["data", "split-coco", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid JSON" in err
    assert not (tmp_path / "o").exists()


def test_evaluate_command_scores_ground_truth_as_perfect(smoke_benchmark, tmp_path, capsys):
    gt = json.loads(smoke_benchmark.annotations("val").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(dets))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(smoke_benchmark.annotations("val")), "--detections", str(det_file),
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["ap"] == 1.0 and metrics["ap50"] == 1.0
    dets[0]["category_id"] = 999
    det_file.write_text(json.dumps(dets))
    assert main(["evaluate", "--gt", str(smoke_benchmark.annotations("val")), "--detections", str(det_file)]) == 2


def test_report_command(smoke_benchmark, tmp_path):
    out = tmp_path / "report"
    assert main(["data", "report", str(smoke_benchmark.annotations("train")), "--image-dir",
                 str(smoke_benchmark.image_dir), "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_images"] == 100 and sum(stats["class_counts"]) == stats["num_boxes"]
    assert (out / "class_distribution.png").stat().st_size > 1000 and (out / "samples.png").is_file()


@pytest.mark.slow
def test_demo_main_job_at_smoke_scale(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--scale", "smoke", "--out", str(out), "--data-root", str(tmp_path / "d")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["train"]["num_images"] == 100
    labeled, unlabeled = summary["stats"]["labeled"], summary["stats"]["unlabeled"]
    assert labeled["num_images"] + unlabeled["num_images"] == 100
    assert summary["kl_labeled_vs_unlabeled_classes"] >= 0
    for name in ("class_distribution.png", "samples.png", "views.png"):
        assert (out / name).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "class-distribution KL" in printed
    assert "class-distribution KL" in (out / "demo.log").read_text()  # what the demo printed, logged
    # the baselines notebook ran at smoke scale: executed copy next to the results, records, report
    assert (out / "notebooks" / "baselines-smoke.ipynb").is_file()
    assert len(list((out / "results" / "records").glob("*.json"))) == 2
    table = (out / "results" / "reports" / "baselines" / "smoke" / "table1.csv").read_text()
    assert table.splitlines()[0] == "table1,10%" and "Supervised" in printed and "Pseudo-label" in table


def test_experiments_list_counts_and_shows_what_is_done(tmp_path, capsys, monkeypatch):
    from ssodlib.experiments import ResultsStore, plan

    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    specs = plan("baselines", "all", "smoke")
    assert main(["experiments", "list", "--paper", "baselines", "--scale", "smoke", "--count"]) == 0
    assert capsys.readouterr().out == f"{len(specs)}\n" and len(specs) == 2
    assert main(["experiments", "list", "--paper", "baselines", "--scale", "mini", "--table", "table1", "--folds", "1",
                 "--count"]) == 0
    assert capsys.readouterr().out == "12\n"  # 2 rows x 2 columns x 1 fold x 3 seeds
    ResultsStore(tmp_path).put(specs[0].key, {"final": {}})
    assert main(["experiments", "list", "--paper", "baselines", "--scale", "smoke", "--results-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"0\tdone\t{specs[0].describe()}", f"1\ttodo\t{specs[1].describe()}"]
    assert main(["experiments", "list", "--paper", "nosuch", "--scale", "smoke"]) == 2
    assert "baselines" in capsys.readouterr().err  # the known papers are listed


def test_help_lists_the_exit_statuses():
    out = subprocess.run([sys.executable, "-m", "ssodlib", "--help"], capture_output=True, text=True, check=True)
    assert "exit status:" in out.stdout and "4  training diverged" in out.stdout


def test_train_with_a_missing_config_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nosuch.yaml"
    assert main(["train", "--scale", "smoke", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"ssod: error: {missing}: configuration file not found. Fix: check the path given to --config.\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: [4\n")
    assert main(["train", "--scale", "smoke", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssod: error: {bad}: not valid YAML") and err.count("\n") == 1


def test_out_under_a_regular_file_exits_2_naming_the_file(tmp_path, capsys):
    somefile = tmp_path / "somefile"
    somefile.write_text("")
    assert main(["--quiet", "data", "synth", "--scale", "smoke", "--out", str(somefile / "run"), "--num-train", "5",
                 "--num-val", "2", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssod: error: {somefile / 'run'}") and err.count("\n") == 1
    assert f"Fix: {somefile} is a regular file, not a folder" in err
    assert main(["experiments", "run", "--paper", "baselines", "--scale", "smoke",
                 "--results-dir", str(somefile / "results")]) == 2
    assert f"Fix: {somefile} is a regular file, not a folder" in capsys.readouterr().err


def test_an_unwritable_results_folder_exits_2_naming_it_before_any_training(tmp_path, capsys, monkeypatch):
    import tempfile

    from ssodlib.engine.trainer import Trainer

    def denied(*args, dir=None, **kwargs):  # what a read-only folder answers (root is never denied)
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("nothing should train"))
    assert main(["experiments", "run", "--paper", "baselines", "--scale", "smoke", "--results-dir",
                 str(tmp_path / "shared")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssod: error: {tmp_path / 'shared' / 'runs'}: Permission denied")
    assert "Fix: choose a folder you can write to" in err


def test_a_diverged_run_exits_4_with_one_error_line(tmp_path, capsys, monkeypatch):
    from ssodlib.engine import trainer

    def diverges(config, **kwargs):
        raise trainer.TrainingDiverged("iteration 3: loss is nan ({}). Fix: lower lr, enable grad_clip.")

    monkeypatch.setattr(trainer, "train", diverges)
    assert main(["train", "--scale", "smoke", "--out", str(tmp_path / "run")]) == 4
    assert capsys.readouterr().err == "ssod: error: iteration 3: loss is nan ({}). Fix: lower lr, enable grad_clip.\n"


def test_the_demo_prints_a_progress_line_with_an_eta_for_each_run(tmp_path, capsys, monkeypatch):
    from ssodlib.demo import RunWatch
    from ssodlib.experiments import ResultsStore, plan

    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    specs = plan("baselines", "all", "smoke", folds=[1], columns=["10%"])
    store = ResultsStore(tmp_path)
    watch = RunWatch(specs, store)
    assert watch.poll() == []  # nothing started
    first, second = (store.run_dir(s.key) for s in specs)
    first.mkdir(parents=True)
    assert watch.poll() == ["demo run 1/2 (Supervised, 10%, fold 1): starting"]
    log = [{"iteration": i, "kind": "train", "sec_per_iter": 0.5} for i in (2, 4)] + [{"iteration": 4, "kind": "eval"}]
    (first / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    assert watch.poll() == ["demo run 1/2 (Supervised, 10%, fold 1), iterations: 4/8 (50 %), ETA 2s"]
    assert watch.poll() == []  # only what changed
    store.put(specs[0].key, {"wall_seconds": 75.2})
    second.mkdir(parents=True)
    (second / "metrics.jsonl").write_text('{"iteration": 2, "kind": "tr')  # a line being appended
    assert watch.poll() == ["demo run 1/2 (Supervised, 10%, fold 1): finished in 1m15s"]
    assert capsys.readouterr().out.splitlines()[-1] == "demo run 1/2 (Supervised, 10%, fold 1): finished in 1m15s"


def test_the_demo_logs_what_it_prints(tmp_path, capsys):
    from ssodlib.demo import run_demo

    out = tmp_path / "demo"
    run_demo(scale="smoke", out=out, data_root=tmp_path / "d", progress=False, percent=10.0, with_baselines=False)
    printed = capsys.readouterr().out
    log = (out / "demo.log").read_text()
    assert "class-distribution KL" in printed and printed in log
    assert log.startswith("== ssod demo at ") and f"this log: {out / 'demo.log'}" in log


def test_a_wrong_parameter_inside_the_demo_notebook_ends_the_demo_as_an_input_error(tmp_path):
    from papermill import PapermillExecutionError

    from ssodlib.demo import _kernel_error
    from ssodlib.engine.trainer import TrainingDiverged
    from ssodlib.io import InputError

    def failed(ename: str) -> PapermillExecutionError:
        return PapermillExecutionError(3, 4, "plan = ...", ename, "FOLDS = [0]: ... Fix: set FOLDS.", [])

    executed = tmp_path / "baselines-mini.ipynb"
    error = _kernel_error(failed("InputError"), executed)
    assert isinstance(error, InputError)
    assert str(error) == f"{executed}, cell In [4]: FOLDS = [0]: ... Fix: set FOLDS."
    assert isinstance(_kernel_error(failed("TrainingDiverged"), executed), TrainingDiverged)
    assert _kernel_error(failed("ZeroDivisionError"), executed) is None  # a bug keeps its traceback


def test_building_the_pretrained_trunk_prints_epoch_lines_with_an_eta_and_no_bar(capsys, monkeypatch, one_thread):
    import numpy as np

    from ssodlib.models import pretrain
    from ssodlib.models.pretrain import PretrainConfig, train_crop_classifier

    bars = []

    class Recorded(pretrain.tqdm):
        def __init__(self, *args, **kwargs):
            bars.append(kwargs["disable"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pretrain, "tqdm", Recorded)

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 16).astype(np.int64)
    config = PretrainConfig(images=1, val_images=1, epochs=2, crop_size=32, batch_size=8)
    train_crop_classifier(crops, labels, config, progress=True)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(", ETA")[0] for line in lines] == ["pretraining the tiny backbone (epochs): 1/2 (50 %)",
                                                          "pretraining the tiny backbone (epochs): 2/2 (100 %)"]
    assert all(", loss " in line and " so far" in line for line in lines)
    assert bars == [True] and captured.err == ""  # not a terminal: no progress bar, whose redraws would pile up
