"""The op contract: every (op, backend) pair computes its op's reference on the op's own sample inputs.

Checked per pair: forward (and on CUDA where present), backward where the backend declares itself
differentiable, ``torch.compile`` on one small call (fullgraph), and the meta device (shapes and dtypes only).
The samples include batch 1 and sizes that are not multiples of anything. A pair that cannot run here (a device
it does not run on, a package that does not import) is skipped with that reason, which pytest's ``-ra`` prints.
"""
import pytest
import torch

from visionzoo.ops import REFERENCE, get_op, list_ops

OPS = [name for name in list_ops() if get_op(name).__module__.startswith("visionzoo.ops.")]
BACKENDS = [(op, backend) for op in OPS for backend in get_op(op).backends]
EVERY_IMPLEMENTATION = [(op, REFERENCE) for op in OPS] + BACKENDS
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _pair_id(pair) -> str:
    return "-".join(pair)


def _moved(value, device=None, dtype=None, requires_grad=False):
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        value = value.to(device=device, dtype=dtype)
        return value.requires_grad_(requires_grad)
    return value.to(device=device)


def _call(op_name: str, backend: str, sample, **move):
    args = tuple(_moved(a, **move) for a in sample.args)
    kwargs = {key: _moved(v, **move) for key, v in sample.kwargs.items()}
    return get_op(op_name).implementation(backend)(*args, **kwargs), args, kwargs


def _skip_unless_runs(op_name: str, backend: str, device: str) -> None:
    if backend == REFERENCE:
        return
    declared = get_op(op_name).backends[backend]
    if not declared.runs_on(device):
        pytest.skip(f"{op_name}/{backend} declares devices {sorted(declared.devices)}, not {device}")
    if not declared.importable:
        pytest.skip(f"{op_name}/{backend} needs {', '.join(declared.requires)}, which does not import here")


@pytest.mark.parametrize("op_name", OPS)
def test_samples_include_batch_1_and_odd_sizes(op_name):
    samples = get_op(op_name).samples()
    shapes = [tuple(t.shape) for s in samples for t in (*s.args, *s.kwargs.values()) if isinstance(t, torch.Tensor)]
    firsts = [next(t for t in (*s.args, *s.kwargs.values()) if isinstance(t, torch.Tensor)) for s in samples]
    assert any(t.shape[0] == 1 for t in firsts), f"{op_name} has no batch-1 sample"
    assert any(size % 2 and size > 1 for shape in shapes for size in shape), f"{op_name} has no odd-sized sample"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pair", BACKENDS, ids=_pair_id)
def test_forward_matches_reference(pair, device):
    op_name, backend = pair
    _skip_unless_runs(op_name, backend, device)
    tolerance = 1e-5 if device == "cpu" else 2e-3  # CUDA matmuls may run in TF32
    for sample in get_op(op_name).samples():
        expected, _, _ = _call(op_name, REFERENCE, sample, device=device)
        actual, _, _ = _call(op_name, backend, sample, device=device)
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, sample.label
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance,
                                   msg=lambda m: f"{sample.label}: {m}")


@pytest.mark.parametrize("pair", BACKENDS, ids=_pair_id)
def test_backward_matches_reference(pair):
    op_name, backend = pair
    _skip_unless_runs(op_name, backend, "cpu")
    if not get_op(op_name).backends[backend].differentiable:
        pytest.skip(f"{op_name}/{backend} declares no backward")
    for sample in get_op(op_name).samples():
        grads = []
        for name in (REFERENCE, backend):
            out, args, kwargs = _call(op_name, name, sample, dtype=torch.float64, requires_grad=True)
            leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
            weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
            grads.append(torch.autograd.grad((out * weights).sum(), leaves))
        for reference_grad, backend_grad in zip(*grads):
            torch.testing.assert_close(backend_grad, reference_grad, rtol=1e-6, atol=1e-6,
                                       msg=lambda m: f"{sample.label}: {m}")


@pytest.mark.slow  # about 1-2 s a pair; the dispatcher test below compiles each op's CPU choice by default
@pytest.mark.parametrize("pair", EVERY_IMPLEMENTATION, ids=_pair_id)
def test_compiles_without_graph_breaks(pair):
    op_name, backend = pair
    _skip_unless_runs(op_name, backend, "cpu")
    sample = get_op(op_name).samples()[0]
    torch._dynamo.reset()
    compiled = torch.compile(get_op(op_name).implementation(backend), backend="aot_eager", fullgraph=True)
    eager, args, kwargs = _call(op_name, backend, sample)
    torch.testing.assert_close(compiled(*args, **kwargs), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_name", OPS)
def test_dispatcher_compiles_without_graph_breaks(op_name):
    op = get_op(op_name)
    sample = op.samples()[0]
    torch._dynamo.reset()
    compiled = torch.compile(lambda *args, **kwargs: op(*args, **kwargs), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*sample.args, **sample.kwargs), op(*sample.args, **sample.kwargs),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pair", EVERY_IMPLEMENTATION, ids=_pair_id)
def test_meta_device_gives_the_reference_shapes(pair):
    op_name, backend = pair
    _skip_unless_runs(op_name, backend, "meta")
    for sample in get_op(op_name).samples():
        expected, _, _ = _call(op_name, REFERENCE, sample)
        actual, _, _ = _call(op_name, backend, sample, device="meta")
        assert actual.is_meta, sample.label
        assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype), sample.label
