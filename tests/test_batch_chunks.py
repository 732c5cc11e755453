"""Batch-chunked CPU inference: exact, only in eager CPU inference, and kept only where measured faster."""
import time

import pytest
import timm
import torch
from torch import nn

from visionzoo.layers.batch_chunks import BatchChunked, stage_chunks, tune_stage_chunks


class CallLog(nn.Module):
    """Doubles its input and records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return 2 * x


def test_chunks_in_eager_cpu_inference_and_runs_whole_otherwise():
    log = CallLog()
    chunked = BatchChunked(log, chunk=3)
    x = torch.randn(8, 4)
    with torch.inference_mode():
        torch.testing.assert_close(chunked(x), 2 * x)
    assert log.batches == [3, 3, 2]
    log.batches.clear()
    chunked(x)  # autograd on: a training step must see the whole batch
    with torch.inference_mode():
        chunked(x[:3])
    assert log.batches == [8, 3]


def test_a_chunked_davit_stage_matches_the_whole_batch():
    torch.manual_seed(0)
    model = timm.create_model("vz_davit_tiny").eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        model.stages[0] = BatchChunked(model.stages[0], chunk=1)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


class SleepStage(nn.Module):
    """Takes ``per_image_squared`` x batch² seconds (chunks help) or ``per_call`` seconds a call (they hurt)."""

    def __init__(self, per_image_squared: float = 0.0, per_call: float = 0.0):
        super().__init__()
        self.per_image_squared, self.per_call = per_image_squared, per_call

    def forward(self, x):
        time.sleep(self.per_image_squared * x.shape[0] ** 2 + self.per_call)
        return x + 1


class Staged(nn.Module):
    def __init__(self, *stages):
        super().__init__()
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        return self.stages(x)


def test_tuning_chunks_the_stages_that_run_faster_and_stops_at_the_first_that_does_not():
    # Stage 2 would gain too, but follows a stage that did not: later stages are smaller and are not tried.
    model = Staged(SleepStage(per_image_squared=1e-3), SleepStage(per_call=5e-3),
                   SleepStage(per_image_squared=1e-3)).eval()
    images = torch.zeros(8, 2)
    assert tune_stage_chunks(model, images, repeats=1) == [1, None, None]
    assert stage_chunks(model) == [1, None, None]
    assert isinstance(model.stages[0], BatchChunked) and isinstance(model.stages[1], SleepStage)
    with torch.inference_mode():
        torch.testing.assert_close(model(images), images + 3)


def test_tuning_leaves_training_models_and_models_without_stages_alone():
    model = Staged(SleepStage(per_image_squared=1e-3))
    assert tune_stage_chunks(model.train(), torch.zeros(4, 2), repeats=1) == [None]
    assert tune_stage_chunks(nn.Linear(2, 2), torch.zeros(4, 2)) == [] and stage_chunks(nn.Linear(2, 2)) is None


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="positive number of images"):
        BatchChunked(nn.Identity(), chunk=0)
