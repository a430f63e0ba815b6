"""DTG-SSOD: golden tests of Eq. 2-5 and the anchor correspondence on tiny tensors (arithmetic in the
comments), the wiring of tau / T / beta, and a smoke-scale training run."""

import math

import pytest
import torch
from torchvision.ops import box_iou

import ssodlib.methods.dtg_ssod as dtg
from ssodlib.config import train_config
from ssodlib.engine.run_folder import read_metrics
from ssodlib.engine.trainer import Trainer
from ssodlib.evaluation.pseudo_labels import PseudoLabelStats
from ssodlib.io import InputError
from ssodlib.methods import METHODS, StepContext
from ssodlib.methods.dtg_ssod import (DTGSSOD, LevelGrid, TeacherOutputs, anchor_levels, inverse_nms_targets,
                                      level_grids, match_anchors, rank_matching_loss, rcnn_inc, rpn_inc)
from tiny_setup import tiny_batch, tiny_detector


# -- Eq. 4-5: Rank Matching ----------------------------------------------------------------------------
def _kl(t, s, temperature):
    dt, ds = torch.softmax(torch.tensor(t) / temperature, 0), torch.softmax(torch.tensor(s) / temperature, 0)
    return float((dt * (dt.log() - ds.log())).sum())


def test_rank_matching_is_the_mean_over_clusters_of_kl_teacher_to_student():
    # cluster A: teacher [2, 1, 0] -> D_t = (0.665241, 0.244728, 0.090031), student [0, 0, 0] -> 1/3 each:
    #   KL_A = sum D_t log(3 D_t) = 0.266217 (the reverse KL(D_s || D_t) = 0.308994 must not come out)
    # cluster B: teacher [3, 0.5] -> (0.924142, 0.075858), student [1, 2] -> (0.268941, 0.731059): KL_B = 0.968868
    # cluster C: a singleton, KL 0; a candidate in no cluster (-1) is left out
    # mean over all three clusters: (0.266217 + 0.968868 + 0) / 3 = 0.411695
    t = torch.tensor([2.0, 1, 0, 3, 0.5, 7, 4])
    s = torch.tensor([0.0, 0, 0, 1, 2, -3, 9], requires_grad=True)
    cluster = torch.tensor([4, 4, 4, 1, 1, 9, -1])  # ids need not be contiguous
    loss = rank_matching_loss(t, s, cluster, 1.0)
    assert float(loss.detach()) == pytest.approx(0.411695, abs=1e-6)
    assert float(loss.detach()) != pytest.approx((0.308994 + 0.968868) / 3, abs=1e-3)
    loss.backward()
    assert s.grad[6] == 0 and s.grad[5] == 0  # no gradient to the outsider or the singleton


@pytest.mark.parametrize("temperature, expected", [(0.5, 0.657555), (1.0, 0.266217), (5.0, 0.013201)])
def test_rank_matching_divides_both_sides_by_the_temperature(temperature, expected):
    # cluster A alone: T = 0.5 sharpens D_t to softmax([4, 2, 0]) -> KL 0.657555; T = 5: softmax([.4, .2, 0]) -> 0.013201
    value = rank_matching_loss(torch.tensor([2.0, 1, 0]), torch.zeros(3), torch.zeros(3, dtype=torch.long), temperature)
    assert float(value) == pytest.approx(expected, abs=1e-6)
    assert float(value) == pytest.approx(_kl([2.0, 1, 0], [0.0, 0, 0], temperature), abs=1e-6)


def test_rank_matching_detaches_the_teacher_and_is_zero_without_clusters():
    t = torch.tensor([2.0, 1.0], requires_grad=True)
    s = torch.tensor([0.0, 0.0], requires_grad=True)
    rank_matching_loss(t, s, torch.tensor([0, 0]), 1.0).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    none = rank_matching_loss(t, s, torch.tensor([-1, -1]), 1.0)
    assert float(none) == 0.0 and none.requires_grad


# -- the FPN level of an anchor ------------------------------------------------------------------------
def test_anchor_levels_use_the_square_root_of_the_area():
    # S = 8, 5 levels: log2(sqrt(64 * 64) / 8) = log2(8) = 3 (the printed log2(area / S) = log2(512) = 9);
    # every mini anchor size 8, 16, 32, 64, 128 lands on its own level 0..4; a 12 x 6 anchor (size 8,
    # ratio 0.5 as torchvision rounds it): sqrt(72) = 8.49 -> log2 1.06 = 0.08 -> 0; 45 px: log2 5.66 = 2.5 -> 2
    # (round half to even); 500 px clamps to 4, 1 px clamps to 0
    sizes = torch.tensor([64.0, 8, 16, 32, 128, 500, 1, 45])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sizes, sizes], 1)
    assert anchor_levels(boxes, finest_anchor_size=8, num_levels=5).tolist() == [3, 0, 1, 2, 4, 4, 0, 2]
    assert anchor_levels(torch.tensor([[0.0, 0, 12, 6]]), finest_anchor_size=8, num_levels=5).tolist() == [0]
    # the paper's preset: 32 px anchors with S = 32 on level 0, 512 px on level 4
    paper = torch.tensor([[0.0, 0, 32, 32], [0, 0, 512, 512]])
    assert anchor_levels(paper, finest_anchor_size=32, num_levels=5).tolist() == [0, 4]


# -- Eq. 2-3: Inverse NMS Clustering -------------------------------------------------------------------
def test_inverse_nms_targets_give_every_member_the_kept_box_and_class():
    # 5 candidates, 2 kept boxes: candidates 0, 1 in cluster 0 (class 2), 3 in cluster 1 (class 0), 2 and 4 in none
    kept_boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    labels, boxes = inverse_nms_targets(torch.tensor([0, 0, -1, 1, -1]), kept_boxes, torch.tensor([2, 0]), 5)
    assert labels.tolist() == [3, 3, 0, 1, 0]  # class + 1; background 0
    assert torch.equal(boxes[:2], kept_boxes[[0, 0]]) and torch.equal(boxes[3], kept_boxes[1])
    assert boxes[[2, 4]].abs().sum() == 0
    # the same clusters as lists of members
    labels2, boxes2 = inverse_nms_targets([torch.tensor([0, 1]), torch.tensor([3])], kept_boxes, torch.tensor([2, 0]), 5)
    assert torch.equal(labels, labels2) and torch.equal(boxes, boxes2)


def _teacher(logits, class_boxes, proposals) -> TeacherOutputs:
    z = torch.zeros(1, 0)
    return TeacherOutputs(z, z.reshape(1, 0, 4), [z.reshape(0, 4)], z[0].long(), [proposals], [logits],
                          [class_boxes], [])


def test_inc_toy_from_the_specification():
    # C = 2, tau = 0.45, NMS IoU 0.5; probs (bg, c0, c1) and class boxes:
    # P0 (.05, .90, .05) box_c0 (12,12,50,50); P1 (.25, .70, .05) box_c0 (13,11,52,50): IoU with P0's 0.902
    # -> same cluster, target P0's box (not its own); P2 (.65, .30, .05): no candidate -> background, although
    # its proposal (11,12,48,52) has IoU 0.879 with the kept box (positive under IoU assignment: Fig. 3(1));
    # P3 (.40, .08, .52) box_c1 (102,100,140,132) -> c1; P4 (.04, .46, .50): candidates c0 (58,10,92,50) and
    # c1 (61,11,91,49), its label is the better one, c1 (0.50 > 0.46). Clusters: {P0,P1}c0, {P4}c0, {P3}c1, {P4}c1.
    probs = torch.tensor([[.05, .90, .05], [.25, .70, .05], [.65, .30, .05], [.40, .08, .52], [.04, .46, .50]])
    boxes = torch.zeros(5, 3, 4)
    boxes[:, :] = torch.tensor([200.0, 200, 210, 210])  # far away for the classes that are no candidates
    boxes[0, 1] = torch.tensor([12.0, 12, 50, 50])
    boxes[1, 1] = torch.tensor([13.0, 11, 52, 50])
    boxes[3, 2] = torch.tensor([102.0, 100, 140, 132])
    boxes[4, 1] = torch.tensor([58.0, 10, 92, 50])
    boxes[4, 2] = torch.tensor([61.0, 11, 91, 49])
    props = torch.tensor([[10.0, 10, 50, 50], [14, 12, 50, 52], [11, 12, 48, 52], [100, 100, 140, 130], [60, 10, 90, 50]])
    assert float(box_iou(props[2:3], boxes[0, 1][None])) == pytest.approx(0.879, abs=1e-3)
    st, mapped = rcnn_inc(_teacher(probs.log(), boxes, props), 0, torch.eye(3), (240, 240), tau=0.45, iou=0.5)
    assert st.labels.tolist() == [1, 1, 0, 2, 2]
    assert st.boxes[1].tolist() == [12.0, 12, 50, 50] and st.boxes[4].tolist() == [61.0, 11, 91, 49]
    assert st.num_clusters == 4 and torch.equal(mapped, props)
    # Rank Matching members: 5 candidates, P0 and P1 share a cluster, P4 is in two
    assert sorted(st.rm_sample.tolist()) == [0, 1, 3, 4, 4]
    assert len(set(st.rm_cluster[st.rm_sample <= 1].tolist())) == 1


def test_inc_keeps_every_cluster_beyond_the_detection_cap():
    # 150 well-separated confident proposals: 150 clusters (no detections_per_img = 100 cap before clustering)
    n = 150
    x = torch.arange(n, dtype=torch.float32) * 20
    props = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)
    logits = torch.tensor([0.0, 5.0]).expand(n, 2).clone()
    st, _ = rcnn_inc(_teacher(logits, props[:, None].expand(n, 2, 4).clone(), props), 0, torch.eye(3),
                     (20, 3100), tau=0.45, iou=0.5)
    assert st.num_clusters == n and (st.labels == 1).all()


def test_inc_maps_targets_through_the_views_and_ignores_clusters_that_leave_them():
    probs = torch.tensor([[.05, .95], [.05, .95], [.9, .1]])
    boxes = torch.tensor([[[0.0, 0, 1, 1], [8, 8, 24, 24]], [[0.0, 0, 1, 1], [9, 9, 24, 24]],
                          [[0.0, 0, 1, 1], [40, 40, 60, 60]]])
    props = boxes[:, 1].clone()
    mirror = torch.tensor([[-1.0, 0, 64], [0, 1, 0], [0, 0, 1]])
    st, mapped = rcnn_inc(_teacher(probs.log(), boxes, props), 0, mirror, (64, 64), tau=0.45, iou=0.5)
    assert st.labels.tolist() == [1, 1, 0]
    assert st.boxes[1].tolist() == [40.0, 8, 56, 24]  # the kept box (8,8,24,24) mirrored in a 64 px view
    assert mapped[0].tolist() == [40.0, 8, 56, 24]
    shift = torch.tensor([[1.0, 0, 100], [0, 1, 0], [0, 0, 1]])  # everything leaves the 64 px view
    st, _ = rcnn_inc(_teacher(probs.log(), boxes, props), 0, shift, (64, 64), tau=0.45, iou=0.5)
    assert st.labels.tolist() == [-1, -1, -1]  # ignored, not background


# -- RPN stage: correspondence and INC -----------------------------------------------------------------
def _grids():
    det = tiny_detector().eval()
    batch = det.preprocess([torch.zeros(3, 64, 64)])
    with torch.no_grad():
        rpn = det.rpn(det.features(batch), batch)
    return level_grids(rpn, batch), rpn.anchors[0]


def test_mirrored_anchor_matches_its_mirror_image():
    # level 0: stride 4, 16 x 16 cells, 3 ratios (0.5, 1, 2); the 8 px ratio-1 anchor at (x=3, y=5) is
    # (8,16,16,24), index (5 * 16 + 3) * 3 + 1 = 250; mirrored in 64 px: (48,16,56,24) at x = 13 -> (5*16+13)*3+1 = 280
    grids, anchors = _grids()
    assert grids[0].stride == (4, 4) and (grids[0].height, grids[0].width) == (16, 16)
    assert anchors[250].tolist() == [8.0, 16, 16, 24]
    mirrored = torch.tensor([[48.0, 16, 56, 24]])
    assert match_anchors(mirrored, torch.tensor([0]), grids).tolist() == [280]


def test_local_anchor_search_equals_the_brute_force_argmax():
    grids, anchors = _grids()
    g = torch.Generator().manual_seed(0)
    teacher = anchors[torch.randperm(len(anchors), generator=g)[:200]]
    scale = 0.5 + torch.rand(1, generator=g).item()
    matrix = torch.tensor([[scale, 0, 3.0], [0, scale, -2.0], [0, 0, 1]])
    mapped = dtg.transform_boxes(teacher, matrix)
    levels = anchor_levels(mapped, finest_anchor_size=8, num_levels=5)
    found = match_anchors(mapped, levels, grids)
    bounds = [gr.offset for gr in grids] + [len(anchors)]
    for i in range(len(mapped)):
        lo, hi = bounds[levels[i]], bounds[levels[i] + 1]
        best = box_iou(mapped[i:i + 1], anchors[lo:hi]).max()
        got = box_iou(mapped[i:i + 1], anchors[found[i]][None])[0, 0] if found[i] >= 0 else torch.tensor(0.0)
        assert float(got) == pytest.approx(float(best), abs=1e-6)


def test_rpn_tau_applies_to_the_objectness_probability():
    # one level, 16 x 16 cells of stride 4, one 8 px anchor per cell; logit 2.3 (sigmoid 0.909) at cell
    # (x=3, y=5) is a candidate at tau = 0.9, logit 2.0 (sigmoid 0.881) at (10, 10) is not: background
    xs, ys = torch.meshgrid(torch.arange(16.0) * 4, torch.arange(16.0) * 4, indexing="xy")
    centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    anchors = torch.cat([centres - 4, centres + 4], 1)
    grid = LevelGrid((4, 4), 16, 16, anchors[:1], 0)
    logits = torch.full((256,), -10.0)
    logits[5 * 16 + 3], logits[10 * 16 + 10] = 2.3, 2.0
    t = TeacherOutputs(logits[None], anchors[None], [anchors], torch.zeros(256, dtype=torch.long), [], [], [], [])
    st = rpn_inc(t, 0, torch.eye(3), (64, 64), [grid], 256, 8.0, tau=0.9, iou=0.7, radius=2)
    assert st.labels[5 * 16 + 3] == 1 and st.labels[10 * 16 + 10] == 0
    assert int((st.labels == 1).sum()) == 1 and int((st.labels == -1).sum()) == 0
    assert st.boxes[5 * 16 + 3].tolist() == anchors[5 * 16 + 3].tolist() and st.num_clusters == 1


# -- the method: options and wiring --------------------------------------------------------------------
def test_registered_and_options_are_checked():
    assert METHODS["dtg_ssod"] is DTGSSOD
    with pytest.raises(InputError, match="rpn_mode"):
        DTGSSOD(options={"rpn_mode": "off"})
    with pytest.raises(InputError, match="temperature"):
        DTGSSOD(options={"temperature": 0.0})


def _losses(options, monkeypatch=None, *, detector=tiny_detector):
    student = detector().train()
    teacher = detector().eval().requires_grad_(False)
    ctx = StepContext(teacher=teacher, iteration=10, burn_in=False, unsup_weight=2.0,
                      stats=PseudoLabelStats(num_classes=3))
    torch.manual_seed(0)
    return DTGSSOD(options=options).losses(student, ctx, tiny_batch(mirrored=True)), ctx


def test_tau_temperature_and_beta_reach_their_functions(monkeypatch):
    seen_tau, seen_t, values = [], [], []
    real_cc, real_rm = dtg.candidate_clusters, dtg.rank_matching_loss

    def spy_cc(boxes, scores, groups, *, tau, iou):
        seen_tau.append(tau)
        return real_cc(boxes, scores, groups, tau=tau, iou=iou)

    def spy_rm(t, s, c, temperature):
        seen_t.append(temperature)
        values.append(real_rm(t, s, c, temperature))
        return values[-1]

    monkeypatch.setattr(dtg, "candidate_clusters", spy_cc)
    monkeypatch.setattr(dtg, "rank_matching_loss", spy_rm)
    # low thresholds so that the random tiny teacher has candidates at both stages
    losses, ctx = _losses({"rpn_tau": 0.3, "rcnn_tau": 0.2, "temperature": 0.7, "beta": 2.5})
    assert sorted(set(seen_tau)) == [0.2, 0.3] and seen_t == [0.7, 0.7]
    # the unsupervised weight (2.0) and beta multiply the values the loss function returned
    assert len(values) == 2  # one per stage
    got = sorted([float(losses["loss_rpn_rm_unsup"]), float(losses["loss_rm_unsup"])])
    assert got == pytest.approx(sorted([5.0 * float(v) for v in values]))
    assert ctx.stats.counts["dtg_rpn_clusters"] > 0 and ctx.stats.counts["dtg_rcnn_clusters"] > 0


def test_stage_switches_remove_their_losses():
    off, _ = _losses({"rpn_mode": "none", "rcnn_rank_matching": False, "rcnn_inc_reg": False, "rcnn_tau": 0.2})
    assert "loss_rm_unsup" not in off and "loss_rpn_rm_unsup" not in off
    assert float(off["loss_rpn_cls_unsup"]) == 0 and float(off["loss_box_unsup"]) == 0
    assert float(off["loss_cls_unsup"]) > 0
    sparse, _ = _losses({"rpn_mode": "sparse", "rcnn_mode": "sparse", "sparse_threshold": 0.0})
    assert {"loss_rpn_cls_unsup", "loss_cls_unsup", "loss_box_unsup"} <= set(sparse)
    assert "loss_rm_unsup" not in sparse


def test_student_rcnn_runs_on_the_teachers_proposals(monkeypatch):
    calls = []
    real = dtg.FasterRCNN.roi_head

    def spy(self, feats, proposals, batch, **kw):
        calls.append([p.clone() for p in proposals])
        return real(self, feats, proposals, batch, **kw)

    monkeypatch.setattr(dtg.FasterRCNN, "roi_head", spy)
    _losses({"rcnn_tau": 0.2})
    teacher_props, student_rois = calls[0][0], calls[1][1]  # teacher's call; the student's unlabeled image
    mirror = torch.tensor([[-1.0, 0, 64], [0, 1, 0], [0, 0, 1]])
    mapped, keep = dtg.to_student_view(teacher_props, mirror, (64, 64))
    assert len(student_rois) <= len(teacher_props) and torch.allclose(student_rois, mapped[keep][:len(student_rois)])


# -- smoke training ------------------------------------------------------------------------------------
def test_smoke_training_runs_and_logs_inc_diagnostics(smoke_benchmark, tmp_path):
    config = train_config("smoke", method="dtg_ssod", data_root=str(smoke_benchmark.root.parent), iterations=4,
                          burn_in=2, eval_every=100, log_every=1, checkpoint_every=100, threads=1,
                          detector_options={"cls_loss": "focal"},
                          method_options={"rpn_tau": 0.5, "rcnn_tau": 0.3})
    Trainer(config, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > config.burn_in]
    assert after and all(math.isfinite(r["loss"]) for r in after)
    assert all("pl_dtg_rcnn_clusters_per_image" in r and "loss_rpn_cls_unsup" in r for r in after)
    # Figures 3-4's counts are logged by the dense R-CNN stage and are consistent
    assert all(f"pl_dtg_{k}_per_image" in r for r in after for k in ("assign_samples", "assign_dense_tp",
                                                                      "assign_sparse_fg", "rank_pairs"))
    for r in after:
        assert r["pl_dtg_assign_dense_tp_per_image"] <= r["pl_dtg_assign_dense_fg_per_image"] <= r["pl_dtg_assign_samples_per_image"]
        assert r["pl_dtg_rank_teacher_agree_per_image"] <= r["pl_dtg_rank_pairs_per_image"]


def test_smoke_training_with_the_students_own_resize(smoke_benchmark, tmp_path):
    # Soft Teacher's student view: the teacher's and student's views differ in size, so INC's targets and
    # the anchor correspondence go through a scaling matrix
    config = train_config("smoke", method="dtg_ssod", data_root=str(smoke_benchmark.root.parent), iterations=3,
                          burn_in=1, eval_every=100, log_every=1, checkpoint_every=100, threads=1,
                          train_scales=(48, 96), independent_student_view=True, geometric_jitter=True,
                          detector_options={"cls_loss": "focal"}, method_options={"rpn_tau": 0.5, "rcnn_tau": 0.3})
    Trainer(config, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > config.burn_in]
    assert after and all(math.isfinite(r["loss"]) for r in after)


# -- Figures 3-4: the diagnostics -----------------------------------------------------------------------
def test_iou_assignment_takes_the_box_of_largest_iou_at_the_threshold():
    # proposal 0 = box A (IoU 1, class 2 -> label 3); proposal 1 (0,0,10,5) has IoU 50/100 = 0.5 with A:
    # foreground at >= 0.5; proposal 2 overlaps B (20,0,30,10) by (22..30)x10 = 80 / 100 = 0.8 -> B's class
    # 0 -> label 1; proposal 3 touches nothing -> background
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    labels = torch.tensor([2, 0])
    props = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [22, 0, 30, 10], [50, 50, 60, 60]])
    assert dtg.iou_assignment(props, boxes, labels, iou_threshold=0.5).tolist() == [3, 3, 1, 0]
    assert dtg.iou_assignment(props, boxes, labels, iou_threshold=0.6).tolist() == [3, 0, 1, 0]
    assert dtg.iou_assignment(props, boxes[:0], labels[:0], iou_threshold=0.5).tolist() == [0, 0, 0, 0]


def test_assignment_agreement_counts_each_paradigm_against_the_truth():
    # sample:  0  1  2  3  4  5(ignored by INC)
    # dense:   1  0  2  1  0  -1
    # sparse:  1  1  0  2  0   1
    # truth:   1  0  2  2  0   1
    # dense fg {0,2,3}, correct {0,2}; sparse fg {0,1,3}, correct {0,3}; true fg {0,2,3};
    # they differ on 1 (dense right), 2 (dense right), 3 (sparse right)
    out = dtg.assignment_agreement(torch.tensor([1, 0, 2, 1, 0, -1]), torch.tensor([1, 1, 0, 2, 0, 1]),
                                   torch.tensor([1, 0, 2, 2, 0, 1]))
    assert out == {"assign_samples": 5, "assign_gt_fg": 3, "assign_dense_fg": 3, "assign_dense_tp": 2,
                   "assign_sparse_fg": 3, "assign_sparse_tp": 2, "assign_differ": 3,
                   "assign_differ_dense_right": 2, "assign_differ_sparse_right": 1}


def test_member_quality_judges_clusters_on_a_ground_truth_of_their_class():
    # cluster 0's kept box (0,0,10,10) class 0 matches GT 0 (class 0) at IoU 1; cluster 1's kept box is class 1
    # but the only class-1 GT is far away -> not judged. Members: (0,0,10,10) IoU 1; (0,0,10,5) IoU 0.5;
    # (0,0,10,8) IoU 0.8; the member of cluster 1 and the member of no cluster get -1
    kept = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
    members = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 8], [20, 0, 30, 10], [0, 0, 4, 4]])
    quality, cluster = dtg.member_quality(members, torch.tensor([0, 0, 0, 1, -1]), kept, torch.tensor([0, 1]),
                                          torch.tensor([[0.0, 0, 10, 10], [60, 60, 70, 70]]), torch.tensor([0, 1]))
    assert cluster.tolist() == [0, 0, 0, -1, -1]
    assert quality[:3].tolist() == pytest.approx([1.0, 0.5, 0.8])


def test_rank_agreement_counts_ordered_pairs_within_clusters():
    # cluster 0: qualities 1.0, 0.5, 0.8 -> pairs (0>1), (0>2), (2>1), all gaps >= 0.05;
    #   teacher scores 3, 1, 2 order all three right; student 1, 3, 2 orders none right
    # cluster 1: qualities 0.60 and 0.62 (gap 0.02 < 0.05): no pair; member 5 in no judged cluster
    out = dtg.rank_agreement(torch.tensor([3.0, 1, 2, 5, 4, 9]), torch.tensor([1.0, 3, 2, 4, 5, 9]),
                             torch.tensor([1.0, 0.5, 0.8, 0.60, 0.62, 0.9]), torch.tensor([0, 0, 0, 1, 1, -1]))
    assert out == {"rank_pairs": 3, "rank_teacher_agree": 3, "rank_student_agree": 0}
    # a tied score orders neither way
    tied = dtg.rank_agreement(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.9, 0.5]),
                              torch.tensor([0, 0]))
    assert tied == {"rank_pairs": 1, "rank_teacher_agree": 0, "rank_student_agree": 1}


# -- GFL (Table 3c) ------------------------------------------------------------------------------------
def _gfl_grid(n: int = 8, stride: int = 8, size: int = 16) -> torch.Tensor:
    """``n x n`` square anchors of side ``size`` centred at ``(x * stride, y * stride)``, index ``y * n + x``."""
    return torch.tensor([[x * stride - size / 2, y * stride - size / 2, x * stride + size / 2, y * stride + size / 2]
                         for y in range(n) for x in range(n)])


def _gfl_toy():
    # one stride-8 level of 8 x 8 locations (a 64 px view), anchors of 16 px, C = 2, tau = 0.4, NMS IoU 0.6;
    # every location's decoded box is its anchor unless set, its scores sigmoid(-10) unless set:
    #   L18 (x=2, y=2): c0 0.9, box (8,8,24,24); L19 (x=3, y=2): c0 0.7, box (9,8,25,24), IoU with L18's
    #   240 / 272 = 0.882 > 0.6 -> L18's cluster, target L18's box; L54 (x=6, y=6): c0 0.5 and c1 0.8 on one
    #   box (40,40,56,56) -> two clusters (class-wise NMS), its label is c1 (0.8 > 0.5); L27 (x=3, y=3):
    #   c0 0.3 < tau -> background (though its box overlaps L18's); L36 (x=4, y=4): c0 0.95 on a box 1 px
    #   wide, (0,30,1,40), which the student's view drops (min size 2) -> its members are ignored, not background
    anchors = _gfl_grid()
    logits, boxes = torch.full((64, 2), -10.0), anchors.clone()
    for loc, probs, box in [(18, (0.9, None), (8, 8, 24, 24)), (19, (0.7, None), (9, 8, 25, 24)),
                            (54, (0.5, 0.8), (40, 40, 56, 56)), (27, (0.3, None), (10, 10, 26, 26)),
                            (36, (0.95, None), (0, 30, 1, 40))]:
        logits[loc] = torch.tensor([p if p is not None else 0.0 for p in probs]).logit().clamp(min=-10)
        boxes[loc] = torch.tensor(box, dtype=torch.float32)
    teacher = dtg.GFLTeacherOutputs(logits[None], boxes[None], anchors, [])
    return teacher, [LevelGrid((8, 8), 8, 8, anchors[:1], 0)]


def test_gfl_inc_toy():
    teacher, grids = _gfl_toy()
    st = dtg.gfl_inc(teacher, 0, torch.eye(3), (64, 64), grids, 64, 16.0, tau=0.4, iou=0.6, radius=2)
    expected = torch.zeros(64, dtype=torch.long)
    expected[[18, 19]], expected[54], expected[36] = 1, 2, -1
    assert st.labels.tolist() == expected.tolist()
    assert st.boxes[19].tolist() == [8.0, 8, 24, 24] and st.boxes[54].tolist() == [40.0, 40, 56, 56]
    assert st.scores[[18, 19, 54]].tolist() == pytest.approx([0.9, 0.7, 0.8], abs=1e-6)  # the teacher's candidates
    assert st.num_clusters == 4  # {L18, L19} c0, {L54} c0, {L54} c1, {L36} c0
    # Rank Matching: the candidates of clusters inside the view, at their student locations, with their class
    members = sorted(zip(st.rm_sample[st.rm_cluster >= 0].tolist(), st.rm_class[st.rm_cluster >= 0].tolist()))
    assert members == [(18, 0), (19, 0), (54, 0), (54, 1)]
    c = st.rm_cluster
    assert c[st.rm_sample == 18].item() == c[st.rm_sample == 19].item() and len(set(c[st.rm_sample == 54].tolist())) == 2
    assert st.rm_teacher[st.rm_sample == 19].item() == pytest.approx(math.log(0.7 / 0.3), abs=1e-5)


def test_gfl_inc_maps_locations_and_targets_through_a_mirror():
    # mirrored 64 px view: the anchor of L18 (centre (16, 16)) -> centre (48, 16) = student location x=6, y=2 (22);
    # L19 (24, 16) -> (40, 16) = 21; L54 (48, 48) -> (16, 48) = 50; targets mirrored: (8,8,24,24) -> (40,8,56,24);
    # the student's column x=0 (centre 0) is no teacher anchor's image (x=8 would be): ignored
    teacher, grids = _gfl_toy()
    mirror = torch.tensor([[-1.0, 0, 64], [0, 1, 0], [0, 0, 1]])
    st = dtg.gfl_inc(teacher, 0, mirror, (64, 64), grids, 64, 16.0, tau=0.4, iou=0.6, radius=2)
    assert st.labels[[22, 21, 50]].tolist() == [1, 1, 2]
    assert st.boxes[21].tolist() == [40.0, 8, 56, 24] and st.boxes[50].tolist() == [8.0, 40, 24, 56]
    ignored = torch.where(st.labels == -1)[0].tolist()
    assert ignored == sorted([y * 8 for y in range(8)] + [36])  # column 0, and L36's image (centre (32, 32) stays)
    assert int((st.labels > 0).sum()) == 3
    assert sorted(st.rm_sample[st.rm_cluster >= 0].tolist()) == [21, 22, 50, 50]


def _gfl_detector():
    from ssodlib.models.detectors.gfl import GFL, GFL_PRESETS, GFLOptions
    torch.manual_seed(0)
    return GFL(options=GFLOptions(**GFL_PRESETS["smoke"]), num_classes=3)


def _gfl_losses(options):
    return _losses(options, detector=_gfl_detector)


def test_gfl_tau_temperature_beta_and_quality_reach_their_functions(monkeypatch):
    seen_tau, seen_t, values = [], [], []
    real_cc, real_rm = dtg.candidate_clusters, dtg.rank_matching_loss
    real_dense = dtg.GFL.dense_losses

    def spy_cc(boxes, scores, groups, *, tau, iou):
        seen_tau.append((tau, iou))
        return real_cc(boxes, scores, groups, tau=tau, iou=iou)

    def spy_rm(t, s, c, temperature):
        seen_t.append(temperature)
        values.append(real_rm(t, s, c, temperature))
        return values[-1]

    monkeypatch.setattr(dtg, "candidate_clusters", spy_cc)
    monkeypatch.setattr(dtg, "rank_matching_loss", spy_rm)
    # a low threshold, so that the untrained teacher (scores near the 0.01 prior) has candidates
    losses, ctx = _gfl_losses({"gfl_tau": 0.009, "temperature": 0.7, "beta": 2.5})
    assert seen_tau == [(0.009, 0.6)] and seen_t == [0.7]  # one image; the detector's NMS IoU
    assert float(losses["loss_rm_unsup"]) == pytest.approx(2.0 * 2.5 * float(values[0]))
    assert {"loss_cls_unsup", "loss_bbox_unsup", "loss_dfl_unsup", "loss_cls", "loss_bbox", "loss_dfl"} <= set(losses)
    assert ctx.stats.counts["dtg_gfl_clusters"] > 0 and ctx.stats.counts["dtg_gfl_fg_targets"] > 0
    seen = []
    monkeypatch.setattr(dtg.GFL, "dense_losses", lambda self, out, labels, boxes, quality=None:
                        seen.append(quality) or real_dense(self, out, labels, boxes, quality=quality))
    for option in ("iou", "teacher", "one"):
        _gfl_losses({"gfl_tau": 0.009, "gfl_quality": option})
    iou_q, teacher_q, one_q = seen[1], seen[3], seen[5]  # each step: the labeled images' call, then the unlabeled
    assert iou_q is None and torch.equal(one_q, torch.ones_like(one_q))
    assert teacher_q.shape == one_q.shape and 0.009 < float(teacher_q[teacher_q > 0].min()) < 1


def test_gfl_stage_switches():
    none, _ = _gfl_losses({"gfl_mode": "none"})
    assert all(float(none[k]) == 0 for k in ("loss_cls_unsup", "loss_bbox_unsup", "loss_dfl_unsup"))
    assert "loss_rm_unsup" not in none and float(none["loss_cls"]) > 0
    sparse, _ = _gfl_losses({"gfl_mode": "sparse", "gfl_sparse_threshold": 0.0})
    assert {"loss_cls_unsup", "loss_bbox_unsup", "loss_dfl_unsup"} <= set(sparse) and "loss_rm_unsup" not in sparse
    off, _ = _gfl_losses({"gfl_tau": 0.009, "gfl_inc_cls": False, "gfl_inc_reg": False, "gfl_rank_matching": False})
    assert float(off["loss_cls_unsup"]) == 0 and float(off["loss_bbox_unsup"]) == 0 and "loss_rm_unsup" not in off
    on, _ = _gfl_losses({"gfl_tau": 0.009})
    assert float(on["loss_cls_unsup"]) > 0 and float(on["loss_bbox_unsup"]) > 0


def test_faster_rcnn_ignores_the_gfl_options():
    base, _ = _losses({"rcnn_tau": 0.2})
    other, _ = _losses({"rcnn_tau": 0.2, "gfl_mode": "none", "gfl_tau": 0.9, "gfl_quality": "one"})
    assert base.keys() == other.keys() and all(torch.equal(base[k], other[k]) for k in base)


def test_dtg_ssod_runs_on_faster_rcnn_and_gfl_only(tmp_path):
    from ssodlib.models.detr_presets import detr_train_overrides

    with pytest.raises(InputError, match="'faster_rcnn' or 'gfl' detector family, not on 'dino'"):
        Trainer(train_config("smoke", method="dtg_ssod", **detr_train_overrides("dino", "smoke")), out_dir=tmp_path,
                progress=False)


def test_gfl_smoke_training_runs_and_logs_inc_diagnostics(smoke_benchmark, tmp_path):
    from ssodlib.models.detectors.gfl import GFL_PRESETS

    config = train_config("smoke", method="dtg_ssod", detector="gfl", detector_options=GFL_PRESETS["smoke"],
                          data_root=str(smoke_benchmark.root.parent), iterations=4, burn_in=2, eval_every=4,
                          log_every=1, checkpoint_every=100, threads=1, geometric_jitter=True,
                          method_options={"gfl_tau": 0.009})
    final = Trainer(config, out_dir=tmp_path, progress=False).run()
    after = [r for r in read_metrics(tmp_path) if r["kind"] == "train" and r["iteration"] > config.burn_in]
    assert after and all(math.isfinite(r["loss"]) for r in after)
    assert all("pl_dtg_gfl_clusters_per_image" in r and "loss_rm_unsup" in r and "loss_dfl_unsup" in r for r in after)
    assert 0.0 <= final["teacher"]["ap"] <= 1.0


def test_the_declaration_plans_table3c_on_gfl_at_every_scale(monkeypatch):
    from ssodlib.experiments.plan import plan, plan_items
    from ssodlib.models.detectors.gfl import GFL_PRESETS

    monkeypatch.delenv("SSOD_PAPERS_DIR", raising=False)
    for scale in ("smoke", "mini", "paper"):
        runs = plan_items("dtg_ssod", "table3c", scale)["table3c"]
        by_row = {s.row: s for s in runs}
        assert list(by_row) == ["Sup Baseline", "sparse-dense", "dense-dense"]
        assert all(s.config.detector == "gfl" and s.config.detector_options == GFL_PRESETS[scale] for s in runs)
        assert by_row["Sup Baseline"].config.method == "supervised"
        assert by_row["sparse-dense"].config.method_options == {"gfl_mode": "sparse"}
        assert by_row["dense-dense"].config.method_options == {} and by_row["dense-dense"].config.geometric_jitter
        assert {s.burn_in_from for s in runs if s.row != "Sup Baseline"} == {by_row["Sup Baseline"].key}
        assert len({s.key for s in runs}) == 3  # the metric columns are one run per row
        assert all(s.config.percent == 10 for s in runs)
        # the GFL runs are runs of their own, next to every Faster R-CNN run
        keys = {s.key for s in plan("dtg_ssod", "all", scale)}
        assert {s.key for s in runs} <= keys
        assert all(s.config.detector == "faster_rcnn" for s in plan("dtg_ssod", "all", scale) if s.item != "table3c"
                   and s.key not in {r.key for r in runs})
