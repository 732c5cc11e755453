"""Batch-chunked CPU inference: exact, only in eager CPU inference, and kept only where measured faster."""
import pytest
import timm
import torch
from torch import nn

from visionzoo.bench.chunks import tune_stage_chunks
from visionzoo.layers.batch_chunks import BatchChunked, stage_chunks


class CallLog(nn.Module):
    """Scales its input by a weight and records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.weight * x


def test_chunks_in_eager_cpu_inference_and_runs_whole_otherwise():
    log = CallLog()
    chunked = BatchChunked(log, chunk=3)
    x = torch.randn(8, 4)
    with torch.inference_mode():
        torch.testing.assert_close(chunked(x), 2 * x)
        chunked(x[:3])
    assert log.batches == [3, 3, 2, 3]
    log.batches.clear()
    chunked(x)  # autograd records the weight: a training step must see the whole batch
    log.weight.requires_grad_(False)
    chunked(x)  # grad mode on, but nothing to record: chunks
    assert log.batches == [8, 3, 3, 2]


def test_a_chunked_davit_stage_matches_the_whole_batch():
    torch.manual_seed(0)
    model = timm.create_model("vz_davit_tiny").eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        model.stages[0] = BatchChunked(model.stages[0], chunk=1)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


class CostClock:
    """A timer reporting the cost that :class:`CostedStage` calls charge, instead of wall time."""

    def __init__(self):
        self.charged = 0.0

    def time_call(self, fn) -> float:
        before = self.charged
        fn()
        return self.charged - before

    def synchronize(self) -> None:
        return None


class CostedStage(nn.Module):
    """Charges ``per_image_squared`` x batch² (chunks help) plus ``per_call`` (chunks hurt) to ``clock``."""

    def __init__(self, clock: CostClock, per_image_squared: float = 0.0, per_call: float = 0.0):
        super().__init__()
        self.clock, self.per_image_squared, self.per_call = clock, per_image_squared, per_call

    def forward(self, x):
        self.clock.charged += self.per_image_squared * x.shape[0] ** 2 + self.per_call
        return x + 1


class Staged(nn.Module):
    def __init__(self, *stages):
        super().__init__()
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        return self.stages(x)


def test_tuning_chunks_the_stages_that_run_faster_and_stops_at_the_first_that_does_not():
    clock = CostClock()
    # Stage 2 would gain too, but follows a stage that did not: later stages are smaller and are not tried.
    # Stage 0 costs 64 whole, 32 in fours, 16 in twos, 8 one at a time.
    model = Staged(CostedStage(clock, per_image_squared=1.0), CostedStage(clock, per_call=1.0),
                   CostedStage(clock, per_image_squared=1.0)).eval()
    images = torch.zeros(8, 2)
    assert tune_stage_chunks(model, images, timer=clock) == [1, None, None]
    assert stage_chunks(model) == [1, None, None]
    assert isinstance(model.stages[0], BatchChunked) and isinstance(model.stages[1], CostedStage)
    with torch.inference_mode():
        torch.testing.assert_close(model(images), images + 3)


def test_a_chunk_must_gain_more_than_timing_noise():
    clock = CostClock()
    # Whole: 64a + 1 = 3.19; in fours 2 x (16a + 1) = 3.09, 3% faster; twos and ones are slower still.
    model = Staged(CostedStage(clock, per_image_squared=0.0342, per_call=1.0)).eval()
    assert tune_stage_chunks(model, torch.zeros(8, 2), timer=clock) == [None]


def test_tuning_leaves_training_models_and_models_without_stages_alone():
    clock = CostClock()
    model = Staged(CostedStage(clock, per_image_squared=1.0))
    assert tune_stage_chunks(model.train(), torch.zeros(4, 2), timer=clock) == [None]
    assert isinstance(model.stages[0], CostedStage)
    assert tune_stage_chunks(nn.Linear(2, 2), torch.zeros(4, 2)) == [] and stage_chunks(nn.Linear(2, 2)) is None


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="positive number of images"):
        BatchChunked(nn.Identity(), chunk=0)
