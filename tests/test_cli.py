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
    assert capsys.readouterr().out == "4\n"  # 2 rows x 2 columns x 1 fold
    ResultsStore(tmp_path).put(specs[0].key, {"final": {}})
    assert main(["experiments", "list", "--paper", "baselines", "--scale", "smoke", "--results-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"0\tdone\t{specs[0].describe()}", f"1\ttodo\t{specs[1].describe()}"]
    assert main(["experiments", "list", "--paper", "nosuch", "--scale", "smoke"]) == 2
    assert "baselines" in capsys.readouterr().err  # the known papers are listed
