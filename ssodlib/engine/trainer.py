"""Iteration-based semi-supervised training: burn-in, EMA teacher, AMP, torch.distributed,
atomic checkpoints with exact resume, periodic evaluation, JSON-lines metrics."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ssodlib.config import RESUMABLE_FIELDS, SHARED_PREFIX_FIELDS, TrainConfig, config_dict
from ssodlib.data.batch import Batch
from ssodlib.data.coco import CocoDetection
from ssodlib.data.transforms import WeakViewConfig
from ssodlib.engine.checkpoint import CHECKPOINT_NAME, checkpoint_config, load_checkpoint, save_checkpoint
from ssodlib.engine.loader import build_loader, resolve_data
from ssodlib.engine.distributed import DistInfo, any_rank, broadcast_module, init_distributed, local_cuda_index
from ssodlib.engine.ema import copy_weights, ema_update
from ssodlib.engine.run_folder import (CONFIG_NAME, FINAL_NAME, METRICS_NAME, RESUMES_NAME, read_metrics,
                                       remove_stale_temporaries)
from ssodlib.engine.stop import STOP_FILE_ENV, Preempted, TrainingDiverged
from ssodlib.evaluation.detector_eval import evaluate_detector
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError, jsonable, write_json, write_text
from ssodlib.methods import Method, RunInfo, StepContext, get_method
from ssodlib.models.build import build_detector, detector_signature, pretrained_trunk
from ssodlib.models.ensemble import EnsembleDetector, frozen_copy


MAX_SKIPPED_STEPS = 10


class _StopRequest:
    """Catches SIGUSR1 and SIGTERM (the signals SLURM sends before a time limit or a preemption) while a
    run trains, and watches the optional stop file; every rank stops at the same iteration."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signalled = False
        self.stop_file = os.environ.get(STOP_FILE_ENV) or None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signalled = True

    def requested(self, device: torch.device) -> bool:
        local = self.signalled or bool(self.stop_file and os.path.exists(self.stop_file))
        return any_rank(local, device)


class _StepModule(nn.Module):
    """Runs a method's loss function inside ``forward`` so DistributedDataParallel sees the pass."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, fn, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        return fn(self.detector, ctx, batch)


def run_info(config: TrainConfig, *, run_dir: str | os.PathLike | None = None) -> RunInfo:
    """What a method may know of the run of ``config`` (``Method.setup``), trained into ``run_dir``."""
    return RunInfo(seed=config.seed, burn_in=config.burn_in,
                   test_view=WeakViewConfig(scales=(config.test_scale,), max_size=config.max_size, flip_prob=0.0),
                   run_dir=None if run_dir is None else Path(run_dir))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available. Fix: use device=cpu or auto.")
    return torch.device(name)


def amp_dtype(config: TrainConfig) -> torch.dtype | None:
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]


def lr_factor(config: TrainConfig, iteration: int) -> float:
    """Linear warm-up from 0.001, then step decay by ``lr_gamma`` at each of ``lr_steps``."""
    warm = 1.0
    if iteration < config.warmup_iters:
        alpha = iteration / max(config.warmup_iters, 1)
        warm = 0.001 * (1 - alpha) + alpha
    return warm * config.lr_gamma ** sum(iteration >= s for s in config.lr_steps)


def unsup_weight(config: TrainConfig, iteration: int) -> float:
    if iteration < config.burn_in:
        return 0.0
    if config.unsup_warmup <= 0:
        return config.unsup_weight
    return config.unsup_weight * min(1.0, (iteration - config.burn_in + 1) / config.unsup_warmup)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters, in the model's ``parameter_groups(lr)`` when it has
    them (the DETR families' backbone and sampling-offset learning-rate multipliers)."""
    if hasattr(model, "parameter_groups"):
        params = model.parameter_groups(config.lr)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise InputError(f"unknown optimizer {config.optimizer!r}. Fix: sgd or adamw.")


@dataclass
class _State:
    student: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    iteration: int = 0


class Trainer:
    """Trains one run into ``out_dir``; ``run()`` resumes from ``out_dir/checkpoint.pt`` when ``resume``."""

    def __init__(self, config: TrainConfig, *, out_dir: str | os.PathLike, resume: bool = False,
                 progress: bool = True) -> None:
        self.config, self.out_dir, self.resume = config, Path(out_dir), resume
        self.progress = progress and not os.environ.get("TQDM_DISABLE")  # headless runs switch bars off
        self.device = resolve_device(config.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_cuda_index(self.dist.local_rank, torch.cuda.device_count()))
        if config.threads:
            torch.set_num_threads(config.threads)
        self._skipped_in_a_row = 0
        self.method: Method = get_method(config.method)(options=config.method_options)
        detector_signature(config)  # unknown detector or options: fail before any data is made
        family = self.method.detector_family
        families = (family,) if isinstance(family, str) else family  # a method may run on several families
        if families is not None and config.detector not in families:
            named = " or ".join(repr(f) for f in families)
            raise InputError(f"method {config.method!r} runs on the {named} detector family, not on "
                             f"{config.detector!r}. Fix: set detector={families[0]}.")
        self.files = resolve_data(config, progress=progress and self.dist.is_main)
        self.backbone_weights = self._pretrained_tiny_backbone()

    def _pretrained_tiny_backbone(self) -> str | None:
        """The tiny backbone's pretrained weights file, on the main rank only (broadcast_module copies
        the main rank's initial weights to the others); built here, before the model seed is set."""
        if not self.dist.is_main:
            return None
        return pretrained_trunk(self.config, progress=self.progress)


    # -- set-up ---------------------------------------------------------------------------------
    def _build_state(self, num_classes: int) -> _State:
        c = self.config
        torch.manual_seed(c.seed)
        student = build_detector(c, num_classes, trunk_weights=self.backbone_weights).to(self.device)
        if c.channels_last:
            student = student.to(memory_format=torch.channels_last)
        broadcast_module(student)
        teacher = None
        if self.method.uses_teacher:
            teacher = copy.deepcopy(student).eval()
            teacher.requires_grad_(False)
        optimizer = build_optimizer(c, student)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(c, it))
        scaler = torch.amp.GradScaler(self.device.type, enabled=c.amp == "fp16")
        return _State(student, teacher, optimizer, scheduler, scaler)

    def _load(self, state: _State, ckpt: dict[str, Any], *, teacher: bool = True) -> None:
        state.student.load_state_dict(ckpt["student"])
        if state.teacher is not None and teacher and ckpt["teacher"]:
            state.teacher.load_state_dict(ckpt["teacher"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
        state.scaler.load_state_dict(ckpt["scaler"])
        state.iteration = int(ckpt["iteration"])
        self._truncate_metrics(state.iteration)

    def _init_from_snapshot(self, state: _State) -> None:
        """Start from another run's snapshot (see ``TrainConfig.init_from``) and copy its log up to there."""
        path = Path(self.config.init_from)
        ckpt = load_checkpoint(path, map_location=self.device)
        theirs, ours = _prefix_view(checkpoint_config(ckpt, path)), _prefix_view(self.config)
        for cfg in (theirs, ours):  # only the learning-rate steps already taken must agree
            cfg["lr_steps"] = [s for s in cfg.get("lr_steps") or () if s <= int(ckpt["iteration"])]
        differ = [k for k in theirs if _normal(theirs.get(k)) != _normal(ours.get(k))]
        if differ:
            raise InputError(f"{path}: made with different {differ}. Fix: use a snapshot of a run with the same "
                             "data, detector and schedule, or drop init_from.")
        if int(ckpt["iteration"]) > self.config.burn_in:
            raise InputError(f"{path}: snapshot at iteration {ckpt['iteration']} is past this run's burn-in "
                             f"({self.config.burn_in}). Fix: use a snapshot taken at or before the burn-in.")
        self._load(state, ckpt, teacher=False)
        if self.dist.is_main:
            records = [r for r in read_metrics(path.parent) if r["iteration"] <= state.iteration]
            write_text(self.out_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in records))

    def _accept_resumed_config(self, ckpt: dict[str, Any]) -> None:
        """Refuse to resume under a configuration that computes something else than the checkpoint's; the
        fields of ``RESUMABLE_FIELDS`` may change, and a change is written to config.json and logged in
        resumes.jsonl, so the run folder keeps describing the run."""
        path = self.out_dir / CHECKPOINT_NAME
        theirs = checkpoint_config(ckpt, path)
        if self.config.init_from is None and theirs.init_from is not None:  # where the run began stays recorded
            self.config = dataclasses.replace(self.config, init_from=theirs.init_from)
        changed = config_changes(theirs, self.config)
        refused = sorted(set(changed) - set(RESUMABLE_FIELDS))
        if refused:
            detail = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
            raise InputError(f"{path}: made with a different configuration ({detail}). Fix: resume with the "
                             f"configuration of {self.out_dir / CONFIG_NAME}, or train into a new folder; on resume "
                             f"only {list(RESUMABLE_FIELDS)} may change.")
        if self.config.iterations < int(ckpt["iteration"]):
            raise InputError(f"{path}: is at iteration {ckpt['iteration']}, past iterations={self.config.iterations}. "
                             "Fix: resume with at least as many iterations, or train into a new folder.")
        if changed and self.dist.is_main:
            write_json(self.out_dir / CONFIG_NAME, config_dict(self.config), indent=2)
            record = {"iteration": int(ckpt["iteration"]),
                      "changed": {k: [jsonable(a), jsonable(b)] for k, (a, b) in sorted(changed.items())}}
            with open(self.out_dir / RESUMES_NAME, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _last_checkpoint_note(self) -> str:
        path = self.out_dir / CHECKPOINT_NAME
        if path.is_file():
            return f"The last good checkpoint is kept in {path}. "
        return "No checkpoint was written yet. "

    def _save(self, state: _State) -> None:
        if not self.dist.is_main:
            return
        if state.iteration in self.config.snapshots:
            save_checkpoint(self.out_dir / f"checkpoint-{state.iteration}.pt", self._state_dict(state))
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, self._state_dict(state))

    def _state_dict(self, state: _State) -> dict[str, Any]:
        return {
            "iteration": state.iteration,
            "student": state.student.state_dict(),
            "teacher": state.teacher.state_dict() if state.teacher is not None else {},
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "method": self.method.state_dict(),
            "config": config_dict(self.config),
        }

    # -- logging --------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(record, allow_nan=True) + "\n")

    def _truncate_metrics(self, iteration: int) -> None:
        """Drop records past the checkpoint: the resumed run writes them again."""
        path = self.out_dir / METRICS_NAME
        if self.dist.is_main and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
            write_text(path, "".join(line + "\n" for line in kept))

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, state: _State, *, final: bool = True) -> dict[str, Any]:
        """COCO metrics of the student and (after burn-in) the teacher; before the end (``final=False``)
        of the teacher only unless ``eval_student`` is "every", or of the student only when the teacher
        is fixed (``ema_keep_rate`` 1: it stays the burn-in model, whose score the burn-in's last
        evaluation already gave, and the student is what learns); at the end also the ``ensemble`` of the
        student with the final students of the ``ensemble_with`` runs. Every rank detects on its shard
        of the validation images, the main rank scores them (the others return ``{}``)."""
        c = self.config
        out: dict[str, Any] = {}
        models = {"student": state.student}
        if state.teacher is not None and state.iteration > c.burn_in:  # teacher := student happens at step burn_in
            models["teacher"] = state.teacher
            if not final and c.eval_student == "final":
                del models["teacher" if c.ema_keep_rate == 1.0 else "student"]
        if final and c.ensemble_with:
            models["ensemble"] = self._ensemble(state)
        # the method prepares detectors, not ensembles: the ensemble's other members (its first is the student)
        plain = [m for m in models.values() if not isinstance(m, EnsembleDetector)]
        extra = [m for e in models.values() if isinstance(e, EnsembleDetector) for m in e.members[1:]]
        self.method.prepare_evaluation(plain + extra, iteration=state.iteration - 1)
        for name, model in models.items():
            metrics = evaluate_detector(model, ann_file=self.files.val_ann, image_dir=self.files.val_images,
                                        test_scale=c.test_scale, max_size=c.max_size, device=self.device,
                                        max_images=c.eval_images, amp_dtype=amp_dtype(c), rank=self.dist.rank,
                                        world_size=self.dist.world_size, pascal_voc=c.dataset == "voc")
            if metrics is None:  # not the main rank
                continue
            m = metrics.to_dict()
            out[name] = {k: m[k] for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")}
            out[name]["per_class_ap"] = m["per_class_ap"]
            out[name]["ap_per_iou"] = m["ap_per_iou"]
        return out

    def _ensemble(self, state: _State) -> EnsembleDetector:
        """This run's student and the final students of the runs ``ensemble_with`` names (sibling
        folders of this run's, as in a results store), as one detector (``ssodlib.models.ensemble``)."""
        others = [frozen_copy(state.student, final_student_weights(run_dir, map_location=self.device),
                              source=f"{run_dir / CHECKPOINT_NAME}: its student is not a detector of this run's kind",
                              fix="ensemble_with runs of the same detector and options.")
                  for run_dir in (self.out_dir.parent / key for key in self.config.ensemble_with)]
        return EnsembleDetector(members=[state.student, *others]).train(state.student.training)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, *, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``config.iterations`` (or stop early after ``stop_at`` iterations, checkpointed:
        what a pre-empted job does) and return the final evaluation."""
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            remove_stale_temporaries(self.out_dir)
        labeled = CocoDetection(ann_file=self.files.labeled_ann, image_dir=self.files.image_dir)
        state = self._build_state(labeled.num_classes)
        resumed: dict[str, Any] | None = None
        if self.resume and (self.out_dir / CHECKPOINT_NAME).is_file():
            resumed = load_checkpoint(self.out_dir / CHECKPOINT_NAME, map_location=self.device)
            self._accept_resumed_config(resumed)
            self._load(state, resumed)
        else:
            if self.dist.is_main:
                (self.out_dir / METRICS_NAME).unlink(missing_ok=True)
                write_json(self.out_dir / CONFIG_NAME, config_dict(c), indent=2)
            if c.init_from:
                self._init_from_snapshot(state)
        loader = build_loader(c, self.files, labeled=labeled, uses_unlabeled=self.method.uses_unlabeled,
                              start_batch=state.iteration, rank=self.dist.rank, world_size=self.dist.world_size,
                              pin_memory=self.device.type == "cuda")
        self.method.setup(labeled=labeled, unlabeled=loader.dataset.unlabeled,
                          run=run_info(c, run_dir=self.out_dir), device=self.device)
        if resumed is not None:
            self.method.load_state_dict(resumed.get("method") or {})
        step_module: nn.Module = _StepModule(state.student)
        if self.dist.world_size > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        prior = labeled.coco.class_counts().astype(float)
        end = c.iterations if stop_at is None else min(c.iterations, stop_at)
        # off a terminal (a notebook, a log file) the bar redraws once a minute, not ten times a second
        bar = tqdm(total=end, initial=state.iteration, desc=f"{c.method} {c.scale}", dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main), mininterval=0.1 if sys.stderr.isatty() else 60)
        with _StopRequest() as stop:
            last_eval = self._loop(state, step_module, loader, end, bar, prior, stop)
        bar.close()
        self.state = state
        final = {}
        if state.iteration == c.iterations:
            final = last_eval[1] if last_eval[0] == state.iteration else self.evaluate(state)
        if final and self.dist.is_main:
            write_json(self.out_dir / FINAL_NAME, {"iteration": state.iteration, **final}, indent=2)
        return final

    def _loop(self, state: _State, step_module: nn.Module, loader: Any, end: int, bar: Any, prior: np.ndarray,
              stop: _StopRequest) -> tuple[int, dict[str, Any]]:
        """Train from ``state.iteration`` to ``end``; returns the last evaluation as (iteration, metrics)."""
        c = self.config
        num_classes = len(prior)
        stats = PseudoLabelStats(num_classes=num_classes, labeled_class_prior=prior)
        data_iter = iter(loader)
        window: dict[str, list[float]] = {}
        last_eval: tuple[int, dict[str, Any]] = (-1, {})
        tic, aside = time.perf_counter(), 0.0  # aside: evaluation time, not part of sec_per_iter
        while state.iteration < end:
            it = state.iteration
            losses = self._step(state, step_module, next(data_iter), stats)
            for k, v in losses.items():
                window.setdefault(k, []).append(v)
            state.iteration += 1
            bar.update(1)
            done = state.iteration
            if done % c.log_every == 0 or done == end:
                record = {"iteration": done, "kind": "train", "lr": state.optimizer.param_groups[0]["lr"],
                          "unsup_weight": unsup_weight(c, it) if self.method.uses_unlabeled else 0.0,
                          "sec_per_iter": (time.perf_counter() - tic - aside) / len(window.get("loss", [1]))}
                record.update({k: float(np.mean(v)) for k, v in window.items()})
                if stats.images:
                    record.update(stats.summary())
                self._log(record)
                if "loss" in record:  # a window of skipped fp16 steps only has none
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                window, tic, aside = {}, time.perf_counter(), 0.0
                stats = PseudoLabelStats(num_classes=num_classes, labeled_class_prior=prior)
            if done % c.eval_every == 0 or done == c.iterations:
                start = time.perf_counter()
                last_eval = (done, self.evaluate(state, final=done == c.iterations))
                seconds = time.perf_counter() - start
                aside += seconds
                self._log({"iteration": done, "kind": "eval", **last_eval[1], "eval_seconds": round(seconds, 3)})
            if done % c.checkpoint_every == 0 or done == end or done in c.snapshots:
                self._save(state)
            if done < end and stop.requested(self.device):
                self._save(state)
                raise Preempted(f"stopped at iteration {done} on request (signal or stop file); the checkpoint is "
                                f"{self.out_dir / CHECKPOINT_NAME}. Fix: run again with resume to continue.")
        return last_eval

    def _step(self, state: _State, step_module: nn.Module, batch: Batch, stats: PseudoLabelStats) -> dict[str, float]:
        c = self.config
        it = state.iteration
        # every step's sampling randomness (RPN / RoI samplers) is a function of the iteration
        torch.manual_seed((c.seed * 7919 + self.dist.rank) * 1_000_003 + it)
        if state.teacher is not None and it == c.burn_in:
            copy_weights(state.teacher, state.student)
        ctx = StepContext(teacher=state.teacher, iteration=it, burn_in=it < c.burn_in,
                          unsup_weight=unsup_weight(c, it), stats=stats)
        state.student.train()
        dtype = amp_dtype(c)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            losses = step_module(self.method.losses, ctx, batch)
        total = sum(losses.values())
        finite = bool(torch.isfinite(total))
        if c.amp == "fp16" and any_rank(not finite, self.device):
            return self._skip_overflowing_step(state, it, losses, total)
        if not finite:
            raise self._diverged(it, losses, total)
        self._skipped_in_a_row = 0
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(total).backward()
        if c.grad_clip:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.student.parameters(), c.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.teacher is not None and it >= c.burn_in:
            ema_update(state.teacher, state.student,
                       keep_rate=self.method.ema_keep_rate(iteration=it, keep_rate=c.ema_keep_rate))
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["loss"] = float(total.detach())
        if c.amp == "fp16":
            out["skipped_step"] = 0.0
        return out

    def _diverged(self, it: int, losses: dict[str, torch.Tensor], total: torch.Tensor) -> TrainingDiverged:
        values = {k: float(v.detach()) for k, v in losses.items()}
        return TrainingDiverged(f"iteration {it}: loss is {float(total.detach())} ({values}). "
                                f"{self._last_checkpoint_note()}Fix: lower lr, enable grad_clip, or use amp=bf16 "
                                "instead of fp16.")

    def _skip_overflowing_step(self, state: _State, it: int, losses: dict[str, torch.Tensor],
                               total: torch.Tensor) -> dict[str, float]:
        """fp16: a loss that overflowed skips the update and halves the loss scale, as GradScaler does for
        overflowing gradients; the schedule and the EMA go on, so the iteration count stays aligned.
        ``MAX_SKIPPED_STEPS`` skips in a row mean the run diverged."""
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row > MAX_SKIPPED_STEPS:
            raise self._diverged(it, losses, total)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(total.detach())  # creates the scale on a first step, which update() needs
        state.scaler.update(new_scale=state.scaler.get_scale() * state.scaler.get_backoff_factor())
        with warnings.catch_warnings():  # a skipped optimizer step is the point here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            state.scheduler.step()
        if state.teacher is not None and it >= self.config.burn_in:
            ema_update(state.teacher, state.student,
                       keep_rate=self.method.ema_keep_rate(iteration=it, keep_rate=self.config.ema_keep_rate))
        return {"skipped_step": 1.0}


def final_student_weights(run_dir: Path, *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The student weights a finished run ended with (its ``checkpoint.pt`` beside its ``final.json``)."""
    final, path = run_dir / FINAL_NAME, run_dir / CHECKPOINT_NAME
    if not final.is_file() or not path.is_file():
        raise InputError(f"{run_dir}: no finished run there (needs {FINAL_NAME} and {CHECKPOINT_NAME}) to ensemble "
                         "with. Fix: finish that run first (ssod experiments run orders it before this one), or "
                         "drop its key from ensemble_with (run keys of the same results store).")
    ckpt = load_checkpoint(path, map_location=map_location)
    finished = json.loads(final.read_text()).get("iteration")
    if int(ckpt["iteration"]) != finished:
        raise InputError(f"{path}: at iteration {ckpt['iteration']}, not the {finished} its {FINAL_NAME} records. "
                         "Fix: let that run finish (resume it), or drop its key from ensemble_with.")
    return ckpt["student"]


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_changes(before: TrainConfig, after: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (before, after)}`` of the fields that differ, each detector option compared with its
    default filled in (as ``detector_options.NAME``)."""
    out = {f.name: (getattr(before, f.name), getattr(after, f.name)) for f in dataclasses.fields(TrainConfig)
           if f.name != "detector_options" and _normal(getattr(before, f.name)) != _normal(getattr(after, f.name))}
    a, b = detector_signature(before), detector_signature(after)
    out.update({f"detector_options.{k}": (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                if k != "detector" and _normal(a.get(k)) != _normal(b.get(k))})
    return out


def _prefix_view(config: TrainConfig) -> dict[str, Any]:
    """The fields two runs must share for one to continue from the other's snapshot, each detector
    option under ``detector_options.NAME``."""
    view = {k: getattr(config, k) for k in SHARED_PREFIX_FIELDS}
    view.update({f"detector_options.{k}": v for k, v in detector_signature(config).items() if k != "detector"})
    return view


def train(config: TrainConfig, *, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
          stop_at: int | None = None) -> dict[str, Any]:
    return Trainer(config, out_dir=out_dir, resume=resume, progress=progress).run(stop_at=stop_at)


__all__ = ["Trainer", "TrainingDiverged", "run_info", "train"]
