"""The contract every registered method keeps, tested over ``METHODS`` so that a method added later
is tested without anyone remembering to: one step on a smoke batch gives finite ``loss_*`` values,
gradients reach the student only, ``state_dict`` round-trips through a weights-only checkpoint, an
unknown option is an ``InputError``, and the method file opens with a paper title and an arXiv link."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import re
import sys

import pytest
import torch

from ssodlib.config import train_config
from ssodlib.engine.trainer import Trainer, run_info
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError
from ssodlib.methods import METHODS, Method, StepContext, TeacherStudentMethod
from ssodlib.models.build import DETECTOR_FAMILIES, build_detector
from ssodlib.models.detr_presets import DETR_SCALES, detr_train_overrides
from tiny_setup import first_batch

NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def smoke(smoke_benchmark):
    """A smoke configuration, its labeled and unlabeled sets and one batch (1 labeled + 4 unlabeled)."""
    config = train_config("smoke", data_root=str(smoke_benchmark.root.parent))
    return (config, *first_batch(config))


def _step(name: str, smoke, *, burn_in: bool):
    config, labeled, unlabeled, batch = smoke
    method = METHODS[name]()
    method.setup(labeled=labeled, unlabeled=unlabeled, run=run_info(config), device=torch.device("cpu"))
    # a method whose default options need detector options (e.g. a box head) declares them; the
    # trainer leaves them to the run's configuration
    required = getattr(type(method), "required_detector_options", {})
    family = type(method).detector_family
    first = family[0] if isinstance(family, tuple) else family
    if first in DETR_SCALES:  # a DETR method runs on its first family's smoke preset
        config = dataclasses.replace(config, detector=first,
                                     detector_options=detr_train_overrides(first, "smoke")["detector_options"])
    config = dataclasses.replace(config, detector_options={**config.detector_options, **required})
    torch.manual_seed(0)
    student = build_detector(config, labeled.num_classes).train()
    teacher = None
    if method.uses_teacher:
        teacher = copy.deepcopy(student).eval()
        teacher.requires_grad_(False)
    ctx = StepContext(teacher=teacher, iteration=config.burn_in + (-1 if burn_in else 0), burn_in=burn_in,
                      unsup_weight=0.0 if burn_in else config.unsup_weight,
                      stats=PseudoLabelStats(num_classes=labeled.num_classes))
    return method, student, teacher, method.losses(student, ctx, batch)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_gives_finite_losses_and_gradients_reach_the_student_only(name, smoke):
    method, student, teacher, losses = _step(name, smoke, burn_in=False)
    assert losses and all(k.startswith("loss_") for k in losses), sorted(losses)
    assert all(v.dim() == 0 and math.isfinite(float(v.detach())) for v in losses.values()), losses
    if method.uses_unlabeled:  # past the burn-in, a method that uses unlabeled images says so in its losses
        assert any(k.endswith("_unsup") for k in losses), sorted(losses)
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if teacher is not None:
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_the_burn_in_step_is_supervised(name, smoke):
    _, _, _, losses = _step(name, smoke, burn_in=True)
    assert losses and not any(k.endswith("_unsup") for k in losses), sorted(losses)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_through_a_weights_only_checkpoint(name, smoke):
    method, *_ = _step(name, smoke, burn_in=False)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = METHODS[name]()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    a, b = method.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
        assert same, key


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_option_is_an_input_error_that_lists_the_known_ones(name):
    cls = METHODS[name]
    with pytest.raises(InputError, match="no option.*no_such_option"):
        cls(options={"no_such_option": 1})
    defaults = cls().options  # every option has a default, and the options are a frozen keyword-only dataclass
    assert dataclasses.is_dataclass(defaults) and cls.Options.__dataclass_params__.frozen
    assert all(f.kw_only for f in dataclasses.fields(cls.Options))


@pytest.mark.parametrize("name", NAMES)
def test_the_registry_entry_is_the_method_it_names(name):
    cls = METHODS[name]
    assert issubclass(cls, Method) and cls.name == name
    families = (cls.detector_family,) if isinstance(cls.detector_family, str) else cls.detector_family
    assert families is None or (families and set(families) <= set(DETECTOR_FAMILIES))
    if issubclass(cls, TeacherStudentMethod):
        assert cls.uses_teacher and cls.uses_unlabeled


@pytest.mark.parametrize("name", NAMES)
def test_the_method_file_opens_with_a_paper_title_and_an_arxiv_link(name):
    doc = sys.modules[METHODS[name].__module__].__doc__ or ""
    first_paragraph = doc.strip().split("\n\n")[0]
    assert first_paragraph[:1].isupper(), first_paragraph[:80]
    assert re.search(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}", first_paragraph), first_paragraph


def test_a_method_of_another_detector_family_is_a_clear_error(smoke, monkeypatch, tmp_path):
    class OtherFamily(METHODS["supervised"]):
        name = "other_family"
        detector_family = "deformable_detr"

    monkeypatch.setitem(METHODS, "other_family", OtherFamily)
    config = dataclasses.replace(smoke[0], method="other_family")
    with pytest.raises(InputError, match="runs on the 'deformable_detr' detector family.*Fix: set detector="):
        Trainer(config, out_dir=tmp_path, progress=False)


def test_an_unknown_detector_or_detector_option_is_a_clear_error(smoke, tmp_path):
    with pytest.raises(InputError, match="unknown detector 'yolo'"):
        Trainer(dataclasses.replace(smoke[0], detector="yolo"), out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match=r"no option\(s\) \['fpn_chanels'\]. Fix: choose from .*fpn_channels"):
        Trainer(train_config("smoke", detector_options={"fpn_chanels": 8}), out_dir=tmp_path, progress=False)
