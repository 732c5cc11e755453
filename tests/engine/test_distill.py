"""Distillation from a frozen teacher (engine/distill.py), on Sparsifiner's two training phases."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import visionzoo.models.sparsifiner as sparsifiner
from _training import TINY_OVERRIDES, parse_train_cli
from visionzoo.data.digits import make_digits
from visionzoo.engine.distill import DistillationStudent, build_distillation, model_outputs
from visionzoo.engine.logging import read_summary
from visionzoo.engine.train import SUMMARY, freeze_parameters, run_train

STUDENT = "vz_sparsifiner_deit_tiny"
SIZE = 48  # 1 + 9 tokens: K = ceil(0.25 * 10) = 3 keys per patch query
PHASE_B = dict(teacher="student", teacher_kwargs={"keep_rate": 1.0}, teacher_checkpoint=None, task_weight=1.0,
               logits_weight=0.5, tokens_weight=0.5, attention_weight=0.0)
PHASE_A = dict(PHASE_B, task_weight=0.0, logits_weight=0.0, tokens_weight=0.0, attention_weight=0.01)


def _train(spec, frozen, steps=8, perturb=0.0, **model_kwargs):
    """``steps`` AdamW steps on one generated batch (after adding ``perturb``-sized noise to the trained weights,
    so that the student starts away from its teacher); the loss terms of each step."""
    torch.manual_seed(0)
    student = timm.create_model(STUDENT, num_classes=5, **model_kwargs)
    freeze_parameters(student, frozen)
    loss_fn = build_distillation(spec, student, STUDENT, 5, torch.nn.CrossEntropyLoss(), timm.create_model)
    with torch.no_grad():
        for param in student.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * perturb)
    trained = DistillationStudent(student, loss_fn.student_record).train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-4)
    images, targets = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 5, (8,))
    history = []
    for _ in range(steps):
        loss = loss_fn(trained(images), images, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(dict(loss_fn.parts))
    return student, loss_fn, history


def _distill_terms(parts):
    return 0.5 * parts["logits"] + 0.5 * parts["tokens"]


def test_phase_b_distillation_loss_falls_and_predictors_stay_frozen(monkeypatch):
    """The recipe's two teacher terms alone (a random teacher's near-uniform logits and random labels would pull
    against each other; the recipe run below takes all three)."""
    kept = []
    choose = sparsifiner.predicted_top_keys

    def recording_top_keys(coefficients, basis, coef_topk, keep_rate):
        index = choose(coefficients, basis, coef_topk, keep_rate)
        kept.append((index.shape[-1], basis.shape[-1], len(set(index[0, 0, 0].tolist()))))
        return index

    monkeypatch.setattr(sparsifiner, "predicted_top_keys", recording_top_keys)
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in timm.create_model(STUDENT, num_classes=5).state_dict().items()}
    student, loss_fn, history = _train(dict(PHASE_B, task_weight=0.0), "mask_predictor", steps=10, perturb=0.02)
    assert set(history[0]) == {"logits", "tokens"}
    assert _distill_terms(history[-1]) < 0.5 * _distill_terms(history[0]), history
    budget = math.ceil(0.25 * (1 + (SIZE // 16) ** 2))
    assert kept and all(entry == (budget, 1 + (SIZE // 16) ** 2, budget) for entry in kept)
    state = student.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in state if ".mask_predictor." in k)
    teacher_state = loss_fn.teacher.state_dict()
    assert all(torch.equal(teacher_state[k], before[k]) for k in teacher_state), "the teacher stays frozen"


def test_phase_a_trains_only_the_predictors_and_reconstruction_falls():
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in timm.create_model(STUDENT, num_classes=5).state_dict().items()}
    student, _, history = _train(PHASE_A, "^(?!.*mask_predictor)", reconstruction=True)
    assert set(history[0]) == {"attention"}
    losses = [parts["attention"] for parts in history]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])) and losses[-1] < 0.97 * losses[0], losses
    state = student.state_dict()
    changed = {k for k in state if not torch.equal(state[k], before[k])}
    assert changed and all(".mask_predictor." in k for k in changed)


def test_a_teacher_by_name_needs_its_checkpoint():
    student = timm.create_model(STUDENT, num_classes=5, device="meta")
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        build_distillation(dict(PHASE_B, teacher="deit_tiny_patch16_224"), student, STUDENT, 5, None,
                           timm.create_model)


def test_any_timm_model_gives_logits_and_patch_tokens():
    model = timm.create_model("deit_tiny_patch16_224", img_size=32, num_classes=3).eval()
    outputs = model_outputs(model, torch.randn(2, 3, 32, 32))
    assert outputs["logits"].shape == (2, 3) and outputs["tokens"].shape == (2, 4, 192)
    with pytest.raises(ValueError, match="forward_distill"):
        model_outputs(model, torch.randn(2, 3, 32, 32), ("approx_attention",))


def test_recipe_runs_through_visionzoo_train(tmp_path, one_thread):
    data = tmp_path / "digits"
    make_digits(data, size=32, max_per_class=8)
    args = parse_train_cli(
        "train", "sparsifiner_deit_tiny", *TINY_OVERRIDES, "model.name=vz_sparsifiner_deit_tiny", "model.kwargs={}",
        "train.epochs=1", "train.global_batch_size=16", "optim.lr_base_batch=16",
        "--data-dir", str(data), "--output", str(tmp_path / "run"))
    assert run_train(args) == 0
    row = read_summary(tmp_path / "run" / SUMMARY)[-1]
    assert math.isfinite(float(row["train_loss"]))
