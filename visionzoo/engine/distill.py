"""Distillation from a frozen teacher: the classification loss plus weighted terms comparing student and teacher.

The terms, each with its weight in the recipe's ``distill`` section (0 turns a term off):

* ``logits_weight``: KL(teacher ‖ student) of the class distributions, batch mean (DeiT's soft distillation).
* ``tokens_weight``: mean squared error between the final patch tokens (forward_features without prefix tokens).
* ``attention_weight``: for models whose ``forward_distill`` records ``approx_attention`` (Sparsifiner's mask
  predictors), the squared error, summed, between each block's approximate attention and the teacher's dense
  attention of the patch queries, averaged over blocks (Sparsifiner's attention-reconstruction loss).
* ``task_weight`` scales the recipe's classification loss (0 in a reconstruction-only phase).

``teacher: student`` builds the student's architecture with ``teacher_kwargs`` and gives it the student's initial
weights (Sparsifiner: a dense copy of the same DeiT); another name builds that model from ``teacher_checkpoint``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

SAME_AS_STUDENT = "student"


def model_outputs(model: nn.Module, images: torch.Tensor, record: tuple[str, ...] = ()) -> dict[str, Any]:
    """``logits`` and final patch ``tokens`` of any timm-style model (plus what its ``forward_distill`` records)."""
    if hasattr(model, "forward_distill"):
        return model.forward_distill(images, record=record)
    if record:
        raise ValueError(f"{type(model).__name__} has no forward_distill to record {', '.join(record)}; set the "
                         "distill weights of those terms to 0")
    features = model.forward_features(images)
    tokens = features[:, getattr(model, "num_prefix_tokens", 0):] if features.dim() == 3 else features
    return dict(logits=model.forward_head(features), tokens=tokens)


class DistillationStudent(nn.Module):
    """The student whose one forward returns every output the terms compare (so DDP sees a single forward)."""

    def __init__(self, model: nn.Module, record: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.record = record

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        return model_outputs(self.model, images, self.record)


class DistillationLoss(nn.Module):
    """``task_weight`` · task loss + the weighted teacher terms (module docstring); ``parts`` holds the last values."""

    def __init__(self, teacher: nn.Module, task_loss: Callable, task_weight: float = 1.0, logits_weight: float = 0.0,
                 tokens_weight: float = 0.0, attention_weight: float = 0.0):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.task_loss = task_loss
        self.weights = dict(task=task_weight, logits=logits_weight, tokens=tokens_weight, attention=attention_weight)
        self.parts: dict[str, float] = {}

    @property
    def student_record(self) -> tuple[str, ...]:
        return ("approx_attention",) if self.weights["attention"] else ()

    def train(self, mode: bool = True) -> "DistillationLoss":
        super().train(mode)
        self.teacher.eval()  # frozen: dropout and drop-path stay off whatever the loop asks
        return self

    def forward(self, student: dict[str, Any], images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = model_outputs(self.teacher, images, ("attention",) if self.weights["attention"] else ())
        terms = {}
        if self.weights["task"]:
            terms["task"] = self.task_loss(student["logits"], targets)
        if self.weights["logits"]:
            terms["logits"] = F.kl_div(F.log_softmax(student["logits"], dim=-1),
                                       F.log_softmax(teacher["logits"], dim=-1), reduction="batchmean", log_target=True)
        if self.weights["tokens"]:
            terms["tokens"] = F.mse_loss(student["tokens"], teacher["tokens"])
        if self.weights["attention"]:
            pairs = list(zip(student["approx_attention"], teacher["attention"]))
            terms["attention"] = sum(
                (approx - dense[:, :, dense.shape[2] - approx.shape[2]:]).square().sum() for approx, dense in pairs
            ) / len(pairs)
        self.parts = {name: value.item() for name, value in terms.items()}
        return sum(self.weights[name] * value for name, value in terms.items())


def build_teacher(spec: dict[str, Any], student: nn.Module, student_name: str, num_classes: int,
                  create: Callable[..., nn.Module]) -> nn.Module:
    """The frozen teacher that ``spec`` (the recipe's ``distill`` section) names, on the student's device."""
    reference = next(student.parameters())
    if spec["teacher"] == SAME_AS_STUDENT:
        teacher = create(student_name, num_classes=num_classes, **spec["teacher_kwargs"])
        teacher.load_state_dict(copy.deepcopy(student.state_dict()))
    else:
        if not spec["teacher_checkpoint"]:
            raise ValueError(f"distill.teacher={spec['teacher']!r} needs distill.teacher_checkpoint (its weights); "
                             f"or use distill.teacher={SAME_AS_STUDENT} for a copy of the student's initial weights")
        teacher = create(spec["teacher"], num_classes=num_classes, checkpoint_path=spec["teacher_checkpoint"],
                         **spec["teacher_kwargs"])
    return teacher.to(device=reference.device).eval().requires_grad_(False)


def build_distillation(spec: dict[str, Any], student: nn.Module, student_name: str, num_classes: int,
                       task_loss: Callable, create: Callable[..., nn.Module]) -> DistillationLoss:
    teacher = build_teacher(spec, student, student_name, num_classes, create)
    return DistillationLoss(teacher, task_loss, task_weight=spec["task_weight"], logits_weight=spec["logits_weight"],
                            tokens_weight=spec["tokens_weight"], attention_weight=spec["attention_weight"])
