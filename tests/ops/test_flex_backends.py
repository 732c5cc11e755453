"""The FlexAttention backends: chosen only where flex runs fused, block masks built once per shape, and compiled
(where flex really runs) equal to the reference. Eager forward, odd sizes and batch 1: the op contract."""
import pytest
import torch

from visionzoo.ops import get_op, list_ops
from visionzoo.ops._flex import cached_block_mask, window_mask_mod

FLEX_OPS = [name for name in list_ops() if "flex" in get_op(name).backends]
# Flex backends that also declare the CPU (where compiled flex runs fused); a CUDA-only one (neighbourhood
# attention's) is never offered on the CPU, and the op contract skips it there.
CPU_FLEX_OPS = [name for name in FLEX_OPS if "cpu" in (get_op(name).backends["flex"].devices or {"cpu"})]


def test_the_masked_biased_or_strip_ops_have_a_flex_backend():
    assert {"window_attention", "halo_attention", "aggregated_attention", "hilo_attention", "strip_attention"} <= set(FLEX_OPS)


@pytest.mark.parametrize("op_name", CPU_FLEX_OPS)
def test_eager_cpu_never_chooses_flex(op_name):
    # Eager flex on the CPU would materialise every score: auto mode must keep the ATen backend.
    op = get_op(op_name)
    for sample in op.samples():
        assert op.select(*sample.args, **sample.kwargs) is not op.implementation("flex")
        with pytest.raises(ValueError, match="does not support these arguments"):
            op(*sample.args, backend="flex", **sample.kwargs)


def test_block_masks_are_built_once_per_shape():
    first = cached_block_mask(window_mask_mod, (6, 3, 2), 36, 36, torch.device("cpu"))
    assert cached_block_mask(window_mask_mod, (6, 3, 2), 36, 36, torch.device("cpu")) is first
    other = cached_block_mask(window_mask_mod, (6, 2, 2), 36, 36, torch.device("cpu"))
    assert other is not first
    dense = other.to_dense()[0, 0]  # one 128-block: every (query, key) block is partly in some window
    assert dense.shape == (1, 1) and bool(dense.all())


def test_window_mask_keeps_each_token_in_its_window():
    same_window = window_mask_mod(6, 3, 2)
    tokens = torch.arange(36)
    allowed = same_window(0, 0, tokens[:, None], tokens[None, :])
    assert allowed.sum(1).tolist() == [6] * 36  # 3x2 windows
    assert bool(allowed[0, 1]) and bool(allowed[0, 13]) and not bool(allowed[0, 2]) and not bool(allowed[0, 18])


CPU_COMPILED = [name for name in CPU_FLEX_OPS if name != "halo_attention"]


@pytest.mark.slow  # an inductor compile per op and sample
@pytest.mark.parametrize("op_name", CPU_COMPILED)
def test_compiled_flex_matches_the_reference(op_name):
    op = get_op(op_name)
    for sample in op.samples():
        torch._dynamo.reset()
        compiled = torch.compile(op.implementation("flex"), fullgraph=True)
        with torch.no_grad():
            expected = op(*sample.args, backend="reference", **sample.kwargs)
            torch.testing.assert_close(compiled(*sample.args, **sample.kwargs), expected, rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"{sample.label}: {m}")


@pytest.mark.slow
def test_compiled_cpu_halo_flex_is_wrong_so_auto_mode_never_takes_it():
    # Inductor's CPU flex template misreads q, k, v computed inside the graph; drop this exclusion when it passes.
    op = get_op("halo_attention")
    sample = op.samples()[1]
    torch._dynamo.reset()
    compiled_flex = torch.compile(op.implementation("flex"), fullgraph=True)
    compiled_auto = torch.compile(lambda **kwargs: op(**kwargs), fullgraph=True)
    with torch.no_grad():
        expected = op(**sample.kwargs, backend="reference")
        assert not torch.allclose(compiled_flex(**sample.kwargs), expected, atol=1e-3)
        torch.testing.assert_close(compiled_auto(**sample.kwargs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_training_on_the_cpu_falls_back_from_flex():
    # FlexAttention has no CPU backward: a compiled training step must run another backend.
    op = get_op("window_attention")
    x, weight, bias, window, heads = op.samples()[0].args
    weight = weight.clone().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *args: op(*args), fullgraph=True)
    compiled(x, weight, bias, window, heads).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("op_name", CPU_FLEX_OPS)
def test_flex_ranks_below_the_aten_fast_path_it_measured_slower_than(op_name):
    # results/ops_cpu_compiled.md and results/ops_cpu_compiled_s2aformer_shvit.md (bench --ops --compile, CPU):
    # flex ran at 0.03-0.94x of the reference on every call of TransNeXt-micro, LiTv2-S, DaViT-T and S2AFormer-XS,
    # the ATen fast paths at 0.5-14x. Raise flex only with a measurement (a GPU) that shows it faster.
    op = get_op(op_name)
    aten = [backend for backend in op.backends.values() if backend.portable]
    assert aten and all(op.backends["flex"].priority < backend.priority for backend in aten)
