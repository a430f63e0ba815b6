import json
import math
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from ssodlib.config import TrainConfig, parse_overrides, train_config
from ssodlib.engine.checkpoint import load_checkpoint
from ssodlib.engine.ema import ema_update
from ssodlib.engine.trainer import (
    STOP_FILE_ENV,
    Preempted,
    Trainer,
    TrainingDiverged,
    lr_factor,
    unsup_weight,
)
from ssodlib.engine.run_folder import read_metrics
from ssodlib.methods.supervised import Supervised


@pytest.fixture
def smoke_config(smoke_benchmark):
    root = str(smoke_benchmark.root.parent)
    return train_config("smoke", data_root=root, iterations=6, burn_in=2, checkpoint_every=2, eval_every=100,
                        log_every=1, threads=1)


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_killed_and_resumed_run_ends_with_the_same_weights(smoke_config, tmp_path):
    Trainer(smoke_config, out_dir=tmp_path / "full", progress=False).run()
    Trainer(smoke_config, out_dir=tmp_path / "cut", progress=False).run(stop_at=3)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["iteration"] == 3
    Trainer(smoke_config, out_dir=tmp_path / "cut", resume=True, progress=False).run()
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert full["iteration"] == cut["iteration"] == 6
    _same_state(full["student"], cut["student"])
    _same_state(full["teacher"], cut["teacher"])
    strip = lambda recs: [{k: v for k, v in r.items() if k != "sec_per_iter"} for r in recs if r["kind"] == "train"]
    assert strip(read_metrics(tmp_path / "full")) == strip(read_metrics(tmp_path / "cut"))
    final = json.loads((tmp_path / "cut" / "final.json").read_text())
    assert set(final) == {"iteration", "student", "teacher"} and 0.0 <= final["teacher"]["ap"] <= 1.0


def test_a_stop_request_checkpoints_and_the_resumed_run_matches(smoke_config, tmp_path, monkeypatch):
    """What a SLURM task does before its time limit: the stop file (or SIGUSR1) makes the run save a
    checkpoint at the current iteration and raise Preempted; resuming ends with the same weights."""
    Trainer(smoke_config, out_dir=tmp_path / "full", progress=False).run()
    stop_file = tmp_path / "stop"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop_file))
    original = Trainer._step
    seen = []

    def step(self, state, *args):
        seen.append(state.iteration)
        if state.iteration == 2:
            stop_file.touch()
        if state.iteration == 4:  # a real signal, delivered to this process as SLURM would
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, state, *args)

    monkeypatch.setattr(Trainer, "_step", step)
    with pytest.raises(Preempted, match="iteration 3"):
        Trainer(smoke_config, out_dir=tmp_path / "cut", progress=False).run()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["iteration"] == 3
    stop_file.unlink()
    with pytest.raises(Preempted, match="iteration 5"):
        Trainer(smoke_config, out_dir=tmp_path / "cut", resume=True, progress=False).run()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers are restored after the run
    Trainer(smoke_config, out_dir=tmp_path / "cut", resume=True, progress=False).run()
    assert seen == [0, 1, 2, 3, 4, 5]
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    _same_state(full["student"], cut["student"])
    _same_state(full["teacher"], cut["teacher"])


def test_pseudo_label_diagnostics_are_logged(smoke_config, tmp_path):
    cfg = train_config("smoke", data_root=smoke_config.data_root, iterations=4, burn_in=2, eval_every=100,
                       log_every=1, threads=1, method_options={"score_thresh": 0.0})
    Trainer(cfg, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > 2]
    assert after and all(r["unsup_weight"] == cfg.unsup_weight for r in after)
    for r in after:
        assert r["pl_images"] == cfg.unlabeled_per_batch
        assert r["pl_per_image"] > 0  # threshold 0 keeps every teacher detection
        assert 0.0 <= r["pl_precision"] <= 1.0 and r["gt_per_image"] > 0
        assert "loss_cls_unsup" in r and "pl_class_kl" in r and len(r["pl_per_class"]) == 12
        assert r["roi_tp"] + r["roi_fp"] > 0


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(smoke_config, tmp_path, monkeypatch):
    original = Supervised.losses

    def poisoned(self, student, ctx, batch):
        out = original(self, student, ctx, batch)
        if ctx.iteration == 3:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(Supervised, "losses", poisoned)
    cfg = train_config("smoke", data_root=smoke_config.data_root, method="supervised", iterations=6,
                       checkpoint_every=2, eval_every=100, threads=1)
    with pytest.raises(TrainingDiverged, match="iteration 3.*checkpoint"):
        Trainer(cfg, out_dir=tmp_path, progress=False).run()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


def test_a_loss_that_diverges_before_any_checkpoint_names_none(smoke_config, tmp_path, monkeypatch):
    original = Supervised.losses

    def poisoned(self, student, ctx, batch):
        out = original(self, student, ctx, batch)
        out["loss_cls"] = out["loss_cls"] * float("inf")
        return out

    monkeypatch.setattr(Supervised, "losses", poisoned)
    cfg = train_config("smoke", data_root=smoke_config.data_root, method="supervised", iterations=4,
                       checkpoint_every=2, eval_every=100, threads=1)
    with pytest.raises(TrainingDiverged, match="iteration 0.*No checkpoint was written yet. Fix: lower lr"):
        Trainer(cfg, out_dir=tmp_path, progress=False).run()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_an_overflowing_fp16_step_is_skipped_not_the_end_of_the_run(smoke_config, tmp_path, monkeypatch):
    from ssodlib.engine.trainer import MAX_SKIPPED_STEPS

    original = Supervised.losses
    poisoned_at = {2, 3}

    def poisoned(self, student, ctx, batch):
        out = original(self, student, ctx, batch)
        if ctx.iteration in poisoned_at:
            out["loss_cls"] = out["loss_cls"] * float("inf")
        return out

    monkeypatch.setattr(Supervised, "losses", poisoned)
    cfg = train_config("smoke", data_root=smoke_config.data_root, method="supervised", iterations=6, amp="fp16",
                       checkpoint_every=100, eval_every=100, log_every=1, threads=1)
    trainer = Trainer(cfg, out_dir=tmp_path / "ok", progress=False)
    trainer.run()
    train = [r for r in read_metrics(tmp_path / "ok") if r["kind"] == "train"]
    assert [r["skipped_step"] for r in train] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert all(math.isfinite(r["loss"]) for r in train if not r["skipped_step"])
    assert trainer.state.scaler.get_scale() < 2.0 ** 16  # each skip halved the loss scale
    poisoned_at.update(range(0, 20))
    cfg = train_config("smoke", data_root=smoke_config.data_root, method="supervised", iterations=20, amp="fp16",
                       checkpoint_every=100, eval_every=100, threads=1)
    with pytest.raises(TrainingDiverged, match=f"iteration {MAX_SKIPPED_STEPS}: loss is inf"):
        Trainer(cfg, out_dir=tmp_path / "bad", progress=False).run()


def test_sec_per_iter_leaves_the_evaluation_out(smoke_config, tmp_path, monkeypatch):
    import time as time_module

    original = Trainer.evaluate

    def slow_evaluate(self, state, **kwargs):
        time_module.sleep(1.0)
        return original(self, state, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    cfg = train_config("smoke", data_root=smoke_config.data_root, method="supervised", iterations=4, eval_every=2,
                       checkpoint_every=100, log_every=2, threads=1)
    Trainer(cfg, out_dir=tmp_path, progress=False).run()
    records = read_metrics(tmp_path)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [2, 4] and all(r["eval_seconds"] >= 1.0 for r in evals)
    after_eval = [r for r in records if r["kind"] == "train" and r["iteration"] == 4][0]
    assert after_eval["sec_per_iter"] < 0.5  # the 1 s evaluation at iteration 2 is not in this window


@pytest.mark.parametrize("eval_student, interim", [("final", {"teacher"}), ("every", {"student", "teacher"})])
def test_intermediate_evaluations_of_a_mean_teacher_skip_the_student_unless_asked(smoke_config, tmp_path,
                                                                                   eval_student, interim):
    cfg = train_config("smoke", data_root=smoke_config.data_root, iterations=6, burn_in=2, eval_every=2,
                       checkpoint_every=100, log_every=2, threads=1, eval_student=eval_student)
    assert train_config("smoke").eval_student == "final"  # the default
    Trainer(cfg, out_dir=tmp_path, progress=False).run()
    evals = {r["iteration"]: set(r) & {"student", "teacher"} for r in read_metrics(tmp_path) if r["kind"] == "eval"}
    # at the burn-in's end (2) there is no teacher yet; the last evaluation (6) has both models
    assert evals == {2: {"student"}, 4: interim, 6: {"student", "teacher"}}
    final = json.loads((tmp_path / "final.json").read_text())
    assert {"student", "teacher"} <= set(final)


def test_intermediate_evaluations_of_a_fixed_teacher_score_the_student(smoke_config, tmp_path):
    # ema_keep_rate 1: the teacher stays the burn-in model (its score is the burn-in's last evaluation),
    # so the evaluations in between score the student, the model that learns; the last one scores both
    cfg = train_config("smoke", data_root=smoke_config.data_root, iterations=6, burn_in=2, eval_every=2,
                       checkpoint_every=100, log_every=2, threads=1, ema_keep_rate=1.0)
    Trainer(cfg, out_dir=tmp_path, progress=False).run()
    evals = {r["iteration"]: set(r) & {"student", "teacher"} for r in read_metrics(tmp_path) if r["kind"] == "eval"}
    assert evals == {2: {"student"}, 4: {"student"}, 6: {"student", "teacher"}}


def test_resuming_with_a_configuration_that_computes_something_else_lists_the_differing_fields(smoke_config,
                                                                                            tmp_path):
    from ssodlib.io import InputError

    Trainer(smoke_config, out_dir=tmp_path, progress=False).run(stop_at=2)
    changed = train_config("smoke", **{**_fields(smoke_config), "lr": 0.5, "detector_options": {"fpn_channels": 16}})
    with pytest.raises(InputError, match=r"different configuration \(detector_options.fpn_channels: 32 -> 16; "
                                         r"lr: 0.01 -> 0.5\)\. Fix: resume with"):
        Trainer(changed, out_dir=tmp_path, resume=True, progress=False).run()
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == smoke_config.lr  # untouched


def test_resuming_with_a_longer_schedule_records_the_change_in_the_run_folder(smoke_config, tmp_path):
    import dataclasses

    from ssodlib.io import InputError

    Trainer(smoke_config, out_dir=tmp_path, progress=False).run(stop_at=4)
    longer = dataclasses.replace(smoke_config, iterations=8, threads=2)
    Trainer(longer, out_dir=tmp_path, resume=True, progress=False).run(stop_at=5)
    assert json.loads((tmp_path / "config.json").read_text())["iterations"] == 8
    record = json.loads((tmp_path / "resumes.jsonl").read_text())
    assert record == {"iteration": 4, "changed": {"iterations": [6, 8], "threads": [1, 2]}}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["iterations"] == 8
    with pytest.raises(InputError, match="is at iteration 5, past iterations=3"):
        Trainer(dataclasses.replace(smoke_config, iterations=3), out_dir=tmp_path, resume=True, progress=False).run()


def test_a_write_killed_midway_leaves_no_temporary_after_the_next_start(smoke_config, tmp_path):
    Trainer(smoke_config, out_dir=tmp_path, progress=False).run(stop_at=2)
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"  # what atomic_write leaves when killed before its rename
    stale.write_bytes(b"partial")
    keep = tmp_path / "notes.tmp"  # not a temporary of ours
    keep.write_text("mine")
    Trainer(smoke_config, out_dir=tmp_path, resume=True, progress=False).run(stop_at=3)
    assert not stale.exists() and keep.exists()


def _fields(config):
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "scale"}


def test_schedules_and_overrides():
    cfg = train_config("smoke", warmup_iters=10, lr_steps=[20, 30], lr_gamma=0.1, burn_in=5, unsup_warmup=4,
                       unsup_weight=2.0)
    assert cfg.lr_steps == (20, 30)
    assert lr_factor(cfg, 0) == pytest.approx(0.001) and lr_factor(cfg, 10) == 1.0
    assert lr_factor(cfg, 25) == pytest.approx(0.1) and lr_factor(cfg, 30) == pytest.approx(0.01)
    assert [unsup_weight(cfg, i) for i in (4, 5, 6, 8, 20)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert parse_overrides(["iterations=7", "lr_steps=[1, 2]", "amp=bf16"]) == {
        "iterations": 7, "lr_steps": [1, 2], "amp": "bf16"}
    from ssodlib.io import InputError

    with pytest.raises(InputError, match="unknown configuration key"):
        train_config("smoke", iterationz=3)
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_overrides(["iterations"])


def test_ema_keep_rate_convention():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0); student.weight.fill_(3.0)
    ema_update(teacher, student, keep_rate=0.75)
    assert torch.allclose(teacher.weight, torch.full_like(teacher.weight, 1.5))
    with pytest.raises(ValueError):
        ema_update(teacher, student, keep_rate=1.5)


def _ddp_worker(rank: int, world: int, config, out_dir: str, init_file: str, result_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(config, out_dir=out_dir, progress=False)
        trainer.run()
        flat = torch.cat([t.flatten().double() for t in trainer.state.teacher.state_dict().values()])
        student = torch.cat([t.flatten().double() for t in trainer.state.student.state_dict().values()])
        gathered = [None] * world
        dist.all_gather_object(gathered, (flat.tolist()[:2000], float(flat.sum()), float(student.sum())))
        if rank == 0:
            with open(result_file, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()


def test_distributed_gloo_keeps_teacher_identical_on_every_rank(smoke_config, tmp_path):
    cfg = train_config("smoke", data_root=smoke_config.data_root, iterations=4, burn_in=2, eval_every=100,
                       checkpoint_every=100, threads=1)
    result = tmp_path / "result.json"
    mp.start_processes(_ddp_worker, args=(2, cfg, str(tmp_path / "run"), str(tmp_path / "init"), str(result)),
                       nprocs=2, join=True, start_method="spawn")
    (t0, s0, st0), (t1, s1, st1) = json.loads(result.read_text())
    assert t0 == t1 and s0 == s1 and st0 == st1
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 4


def test_bf16_autocast_and_channels_last_run_on_cpu(smoke_config, tmp_path):
    cfg = train_config("smoke", data_root=smoke_config.data_root, iterations=3, burn_in=1, amp="bf16",
                       channels_last=True, eval_every=100, threads=1)
    final = Trainer(cfg, out_dir=tmp_path, progress=False).run()
    assert 0.0 <= final["teacher"]["ap"] <= 1.0
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert losses and all(map(math.isfinite, losses))


def test_train_and_eval_commands(smoke_config, tmp_path, capsys):
    from ssodlib.cli import main

    out = tmp_path / "run"
    assert main(["--quiet", "train", "--scale", "smoke", "--method", "supervised", "--data-root",
                 smoke_config.data_root, "--set", "iterations=2", "--set", "threads=1", "--out", str(out)]) == 0
    assert "student: AP" in capsys.readouterr().out
    assert main(["--quiet", "eval", "--checkpoint", str(out / "checkpoint.pt"), "--model", "student",
                 "--out", str(tmp_path / "m.json")]) == 0
    final = json.loads((out / "final.json").read_text())
    assert json.loads((tmp_path / "m.json").read_text())["ap"] == pytest.approx(final["student"]["ap"])
    assert main(["--quiet", "eval", "--checkpoint", str(out / "checkpoint.pt"), "--model", "student", "--errors", "0.0",
                 "--error-images", "4", "--out", str(tmp_path / "e.json")]) == 0
    errors = json.loads((tmp_path / "e.json").read_text())["errors"]
    kinds = ("true_positive", "duplicate", "wrong_class", "localization", "background")
    assert errors["gt_per_image"] > 0 and "boxes >= 0 on unlabeled images (" in capsys.readouterr().out
    assert errors["images_from"].startswith("unlabeled images (")
    assert sum(errors[k] for k in kinds) == pytest.approx(1.0 if errors["boxes_per_image"] else 0.0)
    assert main(["train", "--scale", "smoke", "--set", "iterationz=2", "--out", str(out)]) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert main(["--quiet", "eval", "--checkpoint", str(out / "checkpoint.pt"), "--model", "teacher"]) == 2
    assert "no teacher weights" in capsys.readouterr().err


def test_error_breakdown_of_a_run_without_unlabeled_images_says_it_used_validation_images(smoke_benchmark, tmp_path,
                                                                                         capsys):
    from ssodlib.cli import main

    out = tmp_path / "run"
    files = [f"labeled_ann={smoke_benchmark.fold(fold=1, percent=10.0)}",
             f"val_ann={smoke_benchmark.annotations('val')}", f"image_dir={smoke_benchmark.image_dir}"]
    args = [a for f in files for a in ("--set", f)]
    assert main(["--quiet", "train", "--scale", "smoke", "--method", "supervised", *args, "--set", "iterations=1",
                 "--set", "threads=1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["--quiet", "eval", "--checkpoint", str(out / "checkpoint.pt"), "--model", "student", "--errors", "0.0",
                 "--error-images", "2"]) == 0
    assert f"on validation images ({smoke_benchmark.annotations('val')})" in capsys.readouterr().out


def test_a_shared_supervised_burn_in_gives_the_same_run_as_its_own(smoke_config, tmp_path):
    base = dict(data_root=smoke_config.data_root, burn_in=2, eval_every=100, checkpoint_every=100, threads=1)
    Trainer(train_config("smoke", method="supervised", iterations=3, snapshots=(2,), **base),
            out_dir=tmp_path / "sup", progress=False).run()
    snapshot = tmp_path / "sup" / "checkpoint-2.pt"
    assert load_checkpoint(snapshot)["iteration"] == 2
    own = train_config("smoke", iterations=4, **base)
    Trainer(own, out_dir=tmp_path / "own", progress=False).run()
    shared = train_config("smoke", iterations=4, init_from=str(snapshot), **base)
    Trainer(shared, out_dir=tmp_path / "shared", progress=False).run()
    a, b = load_checkpoint(tmp_path / "own" / "checkpoint.pt"), load_checkpoint(tmp_path / "shared" / "checkpoint.pt")
    _same_state(a["student"], b["student"])
    _same_state(a["teacher"], b["teacher"])
    strip = lambda recs: [{k: v for k, v in r.items() if k != "sec_per_iter"} for r in recs if r["kind"] == "train"]
    assert strip(read_metrics(tmp_path / "shared")) == strip(read_metrics(tmp_path / "own"))  # burn-in log copied
    assert [r["iteration"] for r in strip(read_metrics(tmp_path / "shared"))] == [2, 4]
    from ssodlib.io import InputError

    with pytest.raises(InputError, match="different \\['lr'\\]"):
        Trainer(train_config("smoke", iterations=4, init_from=str(snapshot), **{**base, "lr": 0.5}),
                out_dir=tmp_path / "bad", progress=False).run()
    with pytest.raises(InputError, match="past this run's burn-in"):
        Trainer(train_config("smoke", iterations=4, init_from=str(snapshot), **{**base, "burn_in": 1}),
                out_dir=tmp_path / "bad2", progress=False).run()


@pytest.fixture(scope="module")
def later_step_snapshot(smoke_benchmark, tmp_path_factory):
    """A supervised run's snapshot at iteration 2; its schedule steps the learning rate later, at 3."""
    out = tmp_path_factory.mktemp("later-step")
    cfg = train_config("smoke", method="supervised", data_root=str(smoke_benchmark.root.parent), iterations=4,
                       burn_in=2, lr_steps=(3,), snapshots=(2,), eval_every=100, checkpoint_every=100, threads=1)
    Trainer(cfg, out_dir=out, progress=False).run(stop_at=2)
    return out / "checkpoint-2.pt"


def _from_snapshot(snapshot, data_root, **overrides):
    return train_config("smoke", data_root=data_root, iterations=4, burn_in=2, eval_every=100, checkpoint_every=100,
                        threads=1, init_from=str(snapshot), **overrides)


def test_init_from_compares_only_the_lr_steps_taken_by_the_snapshot(later_step_snapshot, smoke_config, tmp_path):
    from ssodlib.io import InputError

    assert load_checkpoint(later_step_snapshot)["iteration"] == 2
    for i, steps in enumerate([(), (4,), (3, 5)]):  # no step at or before iteration 2, as in the snapshot's run
        trainer = Trainer(_from_snapshot(later_step_snapshot, smoke_config.data_root, lr_steps=steps),
                          out_dir=tmp_path / f"ok{i}", progress=False)
        assert trainer.run(stop_at=2) == {} and trainer.state.iteration == 2  # started at the snapshot
    for i, steps in enumerate([(1,), (2,), (1, 3)]):  # a step the snapshot's run did not take (2: taken at 2)
        with pytest.raises(InputError, match="different \\['lr_steps'\\]"):
            Trainer(_from_snapshot(later_step_snapshot, smoke_config.data_root, lr_steps=steps),
                    out_dir=tmp_path / f"bad{i}", progress=False).run(stop_at=2)


def test_init_from_a_snapshot_saved_before_a_field_existed(later_step_snapshot, smoke_config, tmp_path):
    from ssodlib.engine.checkpoint import save_checkpoint
    from ssodlib.io import InputError

    for field in ("dataset", "lr"):
        ckpt = load_checkpoint(later_step_snapshot)
        del ckpt["config"][field]  # as an older version of the package saved it
        save_checkpoint(tmp_path / f"no-{field}" / "checkpoint-2.pt", ckpt)
    # a missing field had its default value: dataset "synth" is ours too ...
    trainer = Trainer(_from_snapshot(tmp_path / "no-dataset" / "checkpoint-2.pt", smoke_config.data_root),
                      out_dir=tmp_path / "ok", progress=False)
    assert trainer.run(stop_at=2) == {} and trainer.state.iteration == 2
    # ... but the default lr 0.02 is not the smoke scale's 0.01
    assert smoke_config.lr != TrainConfig().lr
    with pytest.raises(InputError, match="different \\['lr'\\]"):
        Trainer(_from_snapshot(tmp_path / "no-lr" / "checkpoint-2.pt", smoke_config.data_root),
                out_dir=tmp_path / "bad", progress=False).run(stop_at=2)


def test_init_from_reads_no_trainable_layers_as_the_backbones_standard(later_step_snapshot, smoke_config, tmp_path):
    from ssodlib.engine.checkpoint import save_checkpoint
    from ssodlib.io import InputError
    from ssodlib.models.backbones import STANDARD_TRAINABLE_LAYERS

    ckpt = load_checkpoint(later_step_snapshot)
    options = ckpt["config"]["detector_options"]
    assert options["backbone"] == "tiny" and options.get("trainable_layers") is None
    options["trainable_layers"] = STANDARD_TRAINABLE_LAYERS["tiny"]  # the same freeze, spelt out
    save_checkpoint(tmp_path / "explicit" / "checkpoint-2.pt", ckpt)
    trainer = Trainer(_from_snapshot(tmp_path / "explicit" / "checkpoint-2.pt", smoke_config.data_root),
                      out_dir=tmp_path / "ok", progress=False)
    assert trainer.run(stop_at=2) == {} and trainer.state.iteration == 2
    with pytest.raises(InputError, match="different \\['detector_options.trainable_layers'\\]"):
        Trainer(_from_snapshot(later_step_snapshot, smoke_config.data_root, detector_options={"trainable_layers": 3}),
                out_dir=tmp_path / "bad", progress=False).run(stop_at=2)


def test_init_from_reads_a_snapshot_whose_detector_knobs_are_top_level_fields(later_step_snapshot, smoke_config,
                                                                              tmp_path):
    from ssodlib.engine.checkpoint import save_checkpoint
    from ssodlib.io import InputError

    ckpt = load_checkpoint(later_step_snapshot)
    ckpt["config"].update(ckpt["config"].pop("detector_options"))  # as versions before detector options saved it
    del ckpt["config"]["detector"]
    save_checkpoint(tmp_path / "flat" / "checkpoint-2.pt", ckpt)
    trainer = Trainer(_from_snapshot(tmp_path / "flat" / "checkpoint-2.pt", smoke_config.data_root),
                      out_dir=tmp_path / "ok", progress=False)
    assert trainer.run(stop_at=2) == {} and trainer.state.iteration == 2
    with pytest.raises(InputError, match="different \\['detector_options.fpn_channels'\\]"):
        Trainer(_from_snapshot(tmp_path / "flat" / "checkpoint-2.pt", smoke_config.data_root,
                               detector_options={"fpn_channels": 16}), out_dir=tmp_path / "bad", progress=False).run()
    ckpt["config"]["fpn_chanels"] = 32
    save_checkpoint(tmp_path / "typo" / "checkpoint-2.pt", ckpt)
    with pytest.raises(InputError, match="unknown field\\(s\\) \\['fpn_chanels'\\]"):
        Trainer(_from_snapshot(tmp_path / "typo" / "checkpoint-2.pt", smoke_config.data_root),
                out_dir=tmp_path / "bad2", progress=False).run()


def _own_data_root(smoke_benchmark, tmp_path):
    """A data root that links the shared benchmark, so pretrained weights are built without writing into it."""
    data_root = tmp_path / "data"
    (data_root / "synth-smoke").mkdir(parents=True)
    for entry in smoke_benchmark.root.iterdir():
        (data_root / "synth-smoke" / entry.name).symlink_to(entry)
    return data_root


def test_a_pretrained_tiny_backbone_starts_from_the_cached_trunk(smoke_benchmark, tmp_path):
    from ssodlib.models.pretrain import pretrained_backbone_paths

    data_root = _own_data_root(smoke_benchmark, tmp_path)
    base = dict(data_root=str(data_root), method="supervised", iterations=1, lr=0.0, eval_every=100,
                checkpoint_every=100, threads=1)
    Trainer(train_config("smoke", detector_options={"pretrained": True}, **base), out_dir=tmp_path / "pre",
            progress=False).run()
    Trainer(train_config("smoke", **base), out_dir=tmp_path / "scratch", progress=False).run()
    trunk = torch.load(pretrained_backbone_paths("smoke", data_root=data_root)[0], weights_only=True)
    pre = load_checkpoint(tmp_path / "pre" / "checkpoint.pt")["student"]
    scratch = load_checkpoint(tmp_path / "scratch" / "checkpoint.pt")["student"]
    for key, value in trunk.items():  # lr 0: the weights are still the initial ones
        assert torch.equal(pre[f"backbone.{key}"], value) and not torch.equal(scratch[f"backbone.{key}"], value)
    assert torch.equal(pre["backbone.fpn.inner_blocks.0.0.weight"], scratch["backbone.fpn.inner_blocks.0.0.weight"])


def test_training_leaves_the_frozen_layers_of_a_pretrained_trunk_alone(smoke_benchmark, tmp_path):
    from ssodlib.models.pretrain import pretrained_backbone_paths

    data_root = _own_data_root(smoke_benchmark, tmp_path)
    base = dict(data_root=str(data_root), method="supervised", iterations=2, lr=0.01,
                eval_every=100, checkpoint_every=100, threads=1)
    for layers in (3, 5):
        Trainer(train_config("smoke", detector_options={"pretrained": True, "trainable_layers": layers}, **base),
                out_dir=tmp_path / f"tl{layers}", progress=False).run()
    trunk = torch.load(pretrained_backbone_paths("smoke", data_root=data_root)[0], weights_only=True)

    def unchanged(run: str, prefix: str) -> bool:
        student = load_checkpoint(tmp_path / run / "checkpoint.pt")["student"]
        return all(torch.equal(student[f"backbone.{k}"], v) for k, v in trunk.items() if k.startswith(prefix))

    assert unchanged("tl3", "stem.") and unchanged("tl3", "stages.0.") and not unchanged("tl3", "stages.1.")
    assert not unchanged("tl5", "stem.") and not unchanged("tl5", "stages.0.")


def test_resuming_by_hand_without_init_from_keeps_where_the_run_began(later_step_snapshot, smoke_config, tmp_path):
    import dataclasses

    config = _from_snapshot(later_step_snapshot, smoke_config.data_root, lr_steps=(3,))
    Trainer(config, out_dir=tmp_path, progress=False).run(stop_at=3)
    Trainer(dataclasses.replace(config, init_from=None), out_dir=tmp_path, resume=True, progress=False).run()
    assert json.loads((tmp_path / "config.json").read_text())["init_from"] == str(later_step_snapshot)
    assert not (tmp_path / "resumes.jsonl").exists()  # nothing that computes the run changed
