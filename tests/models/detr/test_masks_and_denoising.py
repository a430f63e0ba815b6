"""Group attention masks (a group never attends to another; the matching queries see no extra query) and
DINO's contrastive denoising queries: group count, layout, label and box noise."""

from __future__ import annotations

import pytest
import torch

from ssodlib.models.detectors.dino import DINO, DINO_PRESETS, DINOOptions
from ssodlib.models.detr.denoising import (PAD_BOX, denoising_groups, denoising_layout, group_attention_mask,
                                           noise_boxes, noise_labels)
from ssodlib.models.detr.boxes import cxcywh_to_xyxy


# -- masks --------------------------------------------------------------------------------------------------
def test_cdn_mask_golden():
    # 2 targets, 2 groups of 4 (2 positives + 2 negatives) and 3 matching queries: 11 x 11.
    # rows 0-3 block columns 4-7, rows 4-7 block columns 0-3, rows 8-10 block columns 0-7; nothing else
    mask = group_attention_mask([4, 4], 3)
    expected = torch.zeros(11, 11, dtype=torch.bool)
    expected[0:4, 4:8] = True
    expected[4:8, 0:4] = True
    expected[8:11, 0:8] = True
    assert torch.equal(mask, expected)


def test_groups_of_different_sizes_see_themselves_and_the_matching_queries_only():
    # [consistency group of 2 | denoising group of 3 | 2 matching]: rows 0-1 see 0-1 and 5-6
    mask = group_attention_mask([2, 3], 2)
    allowed = ~mask
    assert allowed[0].tolist() == [True, True, False, False, False, True, True]
    assert allowed[3].tolist() == [False, False, True, True, True, True, True]
    assert allowed[6].tolist() == [False, False, False, False, False, True, True]
    assert torch.equal(group_attention_mask([], 3), torch.zeros(3, 3, dtype=torch.bool))


def _double_dino(seed: int = 0) -> DINO:
    torch.manual_seed(seed)
    return DINO(options=DINOOptions(**DINO_PRESETS["smoke"]), num_classes=3).double().eval()


def test_a_group_never_attends_to_another_bit_for_bit():
    model = _double_dino()
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    memory = model.encode(model.features(model.preprocess([image])))
    g = torch.Generator().manual_seed(1)
    sizes, matching = [3, 2], 4
    n = sum(sizes) + matching
    content = torch.randn(1, n, 32, generator=g, dtype=torch.float64)
    boxes = torch.rand(1, n, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    mask = group_attention_mask(sizes, matching)
    with torch.no_grad():
        before = model.decode(memory, content, boxes, self_attn_mask=mask)
        changed_c, changed_b = content.clone(), boxes.clone()
        changed_c[:, :3] += torch.randn(1, 3, 32, generator=g, dtype=torch.float64)  # perturb group 0
        changed_b[:, :3] = torch.rand(1, 3, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
        after = model.decode(memory, changed_c, changed_b, self_attn_mask=mask)
        unmasked = model.decode(memory, changed_c, changed_b)
    for t_before, t_after in ((before.hidden, after.hidden), (before.boxes, after.boxes)):
        assert torch.equal(t_before[:, :, 3:], t_after[:, :, 3:])  # group 1 and the matching queries
        assert not torch.equal(t_before[:, :, :3], t_after[:, :, :3])
    assert not torch.equal(unmasked.hidden[:, :, 3:], after.hidden[:, :, 3:])  # without the mask it leaks


def test_groups_do_see_the_matching_queries():
    model = _double_dino()
    memory = model.encode(model.features(model.preprocess([torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)])))
    content = torch.randn(1, 5, 32, dtype=torch.float64)
    boxes = torch.full((1, 5, 4), 0.4, dtype=torch.float64)
    mask = group_attention_mask([2], 3)
    with torch.no_grad():
        before = model.decode(memory, content, boxes, self_attn_mask=mask).hidden
        content[:, 2:] += 1.0  # the matching queries
        after = model.decode(memory, content, boxes, self_attn_mask=mask).hidden
    assert not torch.equal(before[:, :, :2], after[:, :, :2])


# -- denoising queries -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dn_number, max_gt, groups", [(100, 7, 14), (100, 1, 100), (20, 15, 1), (20, 30, 1),
                                                       (20, 6, 3), (20, 0, 0), (0, 5, 0)])
def test_group_count_is_dn_number_over_max_gt_at_least_one(dn_number, max_gt, groups):
    # ours: max(1, dn_number // max_gt) always (DINO's rule would give 2 * 20 = 40 groups for dn_number 20)
    assert denoising_groups(dn_number, max_gt) == groups


def test_layout_of_two_images_with_two_and_one_targets():
    # max_gt 2 and dn_number 4: 2 groups of 4 queries [pos pos neg neg]; image 1 has one target, so its
    # queries 1, 3, 5, 7 are padding (label -1, box 0.5)
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.4]]), torch.tensor([[0.5, 0.5, 0.4, 0.4]])]
    layout = denoising_layout(labels, boxes, num_classes=3, dn_number=4, label_noise=0.0, box_noise=0.0)
    assert (layout.groups, layout.group_size, layout.num_queries) == (2, 4, 8)
    assert layout.labels.tolist() == [[0, 2, 0, 2, 0, 2, 0, 2], [1, -1, 1, -1, 1, -1, 1, -1]]
    assert layout.query_index[0].tolist() == [0, 1, 4, 5] and layout.target_index[0].tolist() == [0, 1, 0, 1]
    assert layout.query_index[1].tolist() == [0, 4] and layout.target_index[1].tolist() == [0, 0]
    assert torch.equal(layout.boxes[0, 2:4], boxes[0])  # without noise, negatives are copies too
    assert (layout.boxes[1, 1::2] == PAD_BOX).all()
    assert denoising_layout([torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)], num_classes=3, dn_number=4,
                            label_noise=0.5, box_noise=0.4) is None


def test_positive_noise_stays_within_lambda_half_size_and_negative_noise_beyond():
    # box (0.5, 0.5, 0.2, 0.2), lambda 0.4: positives move each corner by less than 0.4 * 0.1 = 0.04,
    # negatives by [0.04, 0.08) (no clamping this far from the border)
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(4000, 1)
    negative = torch.arange(4000) >= 2000
    moved = (cxcywh_to_xyxy(noise_boxes(boxes, negative, scale=0.4, generator=g)) - cxcywh_to_xyxy(boxes)).abs()
    assert moved[:2000].max() < 0.04 + 1e-6
    assert moved[2000:].min() >= 0.04 - 1e-6 and moved[2000:].max() < 0.08 + 1e-6
    assert moved[:2000].mean() == pytest.approx(0.02, abs=0.002)  # uniform in [0, 0.04)


def test_noised_boxes_stay_inside_the_image():
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[0.05, 0.95, 0.1, 0.1]]).repeat(500, 1)
    out = cxcywh_to_xyxy(noise_boxes(boxes, torch.ones(500, dtype=torch.bool), scale=1.0, generator=g))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_label_noise_rates():
    # a label is redrawn with probability 0.5 / 2 = 0.25, uniformly over C = 4 classes (itself included),
    # so it changes with probability 0.25 * 3 / 4 = 0.1875; over 1e5 draws the standard error is ~0.0012
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (100_000,), generator=g)
    out = noise_labels(labels, ratio=0.5, num_classes=4, generator=g)
    assert float((out != labels).float().mean()) == pytest.approx(0.1875, abs=0.005)
    assert out.min() >= 0 and out.max() <= 3
    assert torch.equal(noise_labels(labels, ratio=0.0, num_classes=4), labels)


def test_dino_denoising_queries_embed_labels_and_pad_with_zeros():
    model = _double_dino()
    layout = denoising_layout([torch.tensor([2]), torch.zeros(0, dtype=torch.int64)],
                              [torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.zeros(0, 4)], num_classes=3, dn_number=2,
                              label_noise=0.0, box_noise=0.4)
    content = model.denoising_content(layout)
    assert content.shape == (2, layout.num_queries, 32)
    torch.testing.assert_close(content[0, 0], model.label_enc.weight[2])
    assert (content[1] == 0).all()  # image 1 has no target: all padding
