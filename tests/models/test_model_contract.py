"""The model contract every zoo family passes, modelled on timm's tests/test_models.py.

Cheap checks (registration, construction on the meta device, parameter counts) run on every
model; forward/backward checks run on each family's smallest variant by default and on the
others under the ``slow`` mark.
"""
from __future__ import annotations

import fnmatch
import math
import subprocess
import sys

import pytest
import timm
import torch
from timm.models import group_parameters

from _zoo import create, example_input, input_sizes, model_params, skip_if_opted_out, zoo_models
import visionzoo
from visionzoo.bench.flops import count_macs
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._cards import variant_card
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.ops import REFERENCE, use_backend

EVERY = model_params(every=True)
HEAVY = model_params()


def _input(name, size_index=0, batch=2):
    """The family's declared example input at the card's ``size_index``-th test size."""
    return example_input(name, size_index, batch)


def _close(a, b, rtol=1e-5, atol=1e-5):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


def _check_maps(maps, model, height, width):
    assert len(maps) == len(model.feature_info)
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.dim() == 4, f"{info['module']} is not an NCHW map: {tuple(fmap.shape)}"
        assert fmap.shape[1] == info["num_chs"], info["module"]
        reduction = info["reduction"]
        for actual, full in zip(fmap.shape[-2:], (height, width)):
            assert actual in (full // reduction, math.ceil(full / reduction)), (
                f"{info['module']}: size {actual} at reduction {reduction} of {full}"
            )


def test_zoo_is_not_empty():
    assert zoo_models(), "no vz_* model is registered"


def test_registered_once_without_overwriting():
    script = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import timm, visionzoo\n"
        "print('\\n'.join(str(w.message) for w in caught if 'Overwriting' in str(w.message)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", result.stdout


@pytest.mark.parametrize("name", EVERY)
def test_name_belongs_to_the_zoo(name):
    assert name.startswith("vz_")
    assert timm.models.model_entrypoint(name).__module__.startswith("visionzoo.models.")


@pytest.mark.parametrize("name", EVERY)
def test_meta_construction_and_param_count_matches_card(name):
    model = create(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    card = variant_card(name)
    assert card is not None, f"{name} has no entry in visionzoo/cards/*.yaml"
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - card["params"]) <= card["params_tolerance"] * card["params"], (
        f"{name}: {params:,} parameters, card says {card['params']:,} ± {card['params_tolerance']:.1%}"
    )


@pytest.mark.parametrize("name", EVERY)
def test_macs_match_card(name):
    """GMACs at the card's input size agree with the paper within the card's tolerance, through the fast path or
    the reference (the readable spec): a fast path may trade extra MACs for speed, the math must match."""
    skip_if_opted_out(name, "macs_match_card")
    card = variant_card(name)
    if not card or not card.get("paper_gmacs"):
        pytest.skip(f"{name}: the paper gives no MAC figure")
    model = create(name, device="meta")
    input_size = (3, card["input_size"], card["input_size"])
    measured = {}
    for backend in ("auto", REFERENCE):
        with use_backend(backend):
            measured[backend] = count_macs(model, input_size) / 1e9
    errors = {backend: abs(gmacs / card["paper_gmacs"] - 1.0) for backend, gmacs in measured.items()}
    assert min(errors.values()) <= card["gmacs_tolerance"], (
        f"{name}: {measured} GMACs, paper {card['paper_gmacs']} ± {card['gmacs_tolerance']:.0%}"
    )


@pytest.mark.parametrize("name", EVERY)
def test_unknown_kwarg_raises_type_error(name):
    with pytest.raises(TypeError):
        create(name, device="meta", not_a_real_argument=1)


@pytest.mark.parametrize("name", HEAVY)
def test_device_and_dtype_kwargs(name):
    skip_if_opted_out(name, "device_and_dtype_kwargs")
    model = create(name, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", HEAVY)
def test_forward_and_backward(name):
    skip_if_opted_out(name, "forward_and_backward")
    model = create(name).eval()
    x = _input(name)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()

    model.train()
    model(_input(name, size_index=1)).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"


@pytest.mark.parametrize("name", HEAVY)
def test_classifier_options(name):
    skip_if_opted_out(name, "classifier_options")
    x = _input(name)
    model = create(name, num_classes=0).eval()
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)
    model = create(name, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert model(x).dim() >= 3, "global_pool='' must leave the spatial/token axes"

    model = create(name).eval()
    model.reset_classifier(7)
    assert model.num_classes == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", HEAVY)
def test_forward_features_and_head(name):
    skip_if_opted_out(name, "forward_features_and_head")
    model = create(name).eval()
    x = _input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
        full = model(x)
    assert pre_logits.shape == (2, model.head_hidden_size)
    if features.dim() == 4:
        assert features.shape[1] == model.num_features
    else:
        assert features.shape[-1] == model.num_features
    assert _close(logits, full)
    assert model.get_classifier() is not None


@pytest.mark.parametrize("name", HEAVY)
@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only(name, feature_cls):
    skip_if_opted_out(name, "features_only")
    kwargs = {"feature_cls": feature_cls} if feature_cls else {}
    model = create(name, features_only=True, **kwargs).eval()
    reference = create(name, device="meta")
    assert model.feature_info.channels() == [info["num_chs"] for info in reference.feature_info]
    for size_index in (0, 1):
        x = _input(name, size_index)
        with torch.no_grad():
            maps = model(x)
        _check_maps(maps, reference, *x.shape[-2:])
        assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("name", HEAVY)
def test_forward_intermediates(name):
    skip_if_opted_out(name, "forward_intermediates")
    model = create(name).eval()
    for size_index in (0, 1):
        x = _input(name, size_index)
        with torch.no_grad():
            final, maps = model.forward_intermediates(x)
            features = model.forward_features(x)
            only = model.forward_intermediates(x, intermediates_only=True)
            _, normed = model.forward_intermediates(x, norm=True)
        _check_maps(maps, model, *x.shape[-2:])
        assert _close(final, features), "forward_intermediates' final output differs from forward_features"
        assert len(only) == len(maps) and all(_close(a, b) for a, b in zip(only, maps))
        if features.dim() == 4 and features.shape == normed[-1].shape:
            assert _close(normed[-1], features), "last intermediate (norm=True) differs from forward_features"


@pytest.mark.parametrize("name", HEAVY)
def test_prune_intermediate_layers(name):
    skip_if_opted_out(name, "prune_intermediate_layers")
    model = create(name).eval()
    x = _input(name)
    with torch.no_grad():
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    model.prune_intermediate_layers(indices=[0], prune_head=True)
    with torch.no_grad():
        pruned_first = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    assert _close(first, pruned_first)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in create(name, device="meta").parameters())


@pytest.mark.parametrize("name", HEAVY)
def test_gradient_checkpointing_gives_same_output(name):
    skip_if_opted_out(name, "gradient_checkpointing_gives_same_output")
    model = create(name).train()
    x = _input(name)
    expected = model(x)
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    actual = model(x)
    assert _close(actual, expected, rtol=1e-4, atol=1e-4)
    actual.mean().backward()


@pytest.mark.parametrize("name", EVERY)
def test_group_matcher_and_no_weight_decay(name):
    skip_if_opted_out(name, "group_matcher_and_no_weight_decay")
    model = create(name, device="meta")
    names = {n for n, _ in model.named_parameters()}
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = set().union(*(set(g) for g in groups.values()))
        assert grouped == names, f"group_matcher(coarse={coarse}) misses {sorted(names - grouped)[:5]}"
    for entry in model.no_weight_decay():
        assert any(n == entry or fnmatch.fnmatch(n, entry) or n.startswith(entry + ".") for n in names), (
            f"no_weight_decay names {entry!r}, which matches no parameter"
        )


@pytest.mark.parametrize("name", HEAVY)
def test_bf16_forward(name):
    skip_if_opted_out(name, "bf16_forward")
    model = create(name).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(_input(name, batch=1).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", HEAVY)
def test_checkpoint_filter_round_trip(name):
    skip_if_opted_out(name, "checkpoint_filter_round_trip")
    model = create(name).eval()
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    state = model.state_dict()
    converted = visionzoo.family_of(name).checkpoint_filter_fn(dict(state), model)
    assert set(converted) == set(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": torch.tensor(3)}
    clone = create(name).eval()
    load_checkpoint(clone, wrapped, filter_fn=visionzoo.family_of(name).checkpoint_filter_fn)
    x = _input(name)
    with torch.no_grad():
        assert _close(clone(x), model(x))


@pytest.mark.parametrize("name", HEAVY)
def test_deploy_form_folds_every_conv_batchnorm_and_keeps_outputs(name):
    """``fuse_model`` is what bench --deploy and export run: same outputs, and no BatchNorm left behind a conv
    (a conv whose weights are rescaled at run time is one exporters cannot hand to XNNPACK as a constant)."""
    skip_if_opted_out(name, "deploy_form_folds_every_conv_batchnorm_and_keeps_outputs")
    model = create(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    deployed = fuse_model(model)
    x = _input(name)
    with torch.no_grad():
        assert _close(deployed(x), model(x), rtol=1e-4, atol=1e-4)
    for module_name, module in deployed.named_modules():
        conv_then_norm = [type(child).__name__ for child in module.children()][:2]
        assert not (isinstance(getattr(module, "conv", None), torch.nn.Conv2d)
                    and isinstance(getattr(module, "bn", None), torch.nn.BatchNorm2d)), f"{module_name} kept its BatchNorm"
        assert conv_then_norm != ["Conv2d", "BatchNorm2d"], f"{module_name} kept a Conv2d → BatchNorm2d pair"


@pytest.mark.parametrize("name", HEAVY)
def test_compile_fullgraph_captures_whole_model(name):
    """Dynamo must capture the model in one graph; ``aot_eager`` checks that without inductor's codegen."""
    skip_if_opted_out(name, "compile_fullgraph_captures_whole_model")
    # Every family shares Backbone.forward: without a reset, the previous family's input marks its shapes dynamic
    # and this compile traces symbolic shapes (minutes for HaloNet after a point-cloud model).
    torch._dynamo.reset()
    model = create(name).eval()
    x = _input(name, batch=1)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert _close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_compile_inductor_matches_eager(name):
    skip_if_opted_out(name, "compile_inductor_matches_eager")
    torch._dynamo.reset()  # as in test_compile_fullgraph_captures_whole_model
    model = create(name).eval()
    x = _input(name, batch=1)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert _close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def _module_outputs(model, module_names, x):
    """Eager outputs of the named submodules for input ``x`` (what FX feature extraction must reproduce)."""
    outputs = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(name, output)
        )
        for name in module_names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [outputs[name] for name in module_names]


@pytest.mark.parametrize("name", HEAVY)
def test_fx_symbolic_trace_matches_eager(name):
    """The graph records the input checks and size-dependent choices as calls, so it runs at other sizes too."""
    skip_if_opted_out(name, "fx_symbolic_trace_matches_eager")
    model = create(name).eval()
    traced = torch.fx.symbolic_trace(model)
    for size_index in (0, 1):
        x = _input(name, size_index)
        with torch.no_grad():
            assert _close(traced(x), model(x)), f"traced output differs at input {tuple(x.shape)}"
    with pytest.raises(ValueError, match="input channels"):
        traced(torch.randn(1, 1, *input_sizes(name)[0]))


@pytest.mark.parametrize("name", HEAVY)
def test_fx_feature_extraction_matches_eager(name):
    """torchvision's create_feature_extractor and timm's ``feature_cls='fx'`` return the feature modules'
    eager outputs."""
    skip_if_opted_out(name, "fx_feature_extraction_matches_eager")
    from torchvision.models.feature_extraction import create_feature_extractor

    model = create(name).eval()
    modules = [info["module"] for info in model.feature_info]
    x = _input(name)
    expected = _module_outputs(model, modules, x)
    extractor = create_feature_extractor(model, return_nodes={module: module for module in modules})
    with torch.no_grad():
        extracted = extractor(x)
    assert list(extracted) == modules
    assert all(_close(extracted[m], e) for m, e in zip(modules, expected))

    graph_net = create(name, features_only=True, feature_cls="fx").eval()
    loaded = graph_net.graph_module.load_state_dict(model.state_dict(), strict=False)
    assert not loaded.missing_keys, loaded.missing_keys[:5]
    with torch.no_grad():
        features = graph_net(x)
    assert len(features) == len(expected)
    assert all(_close(f, e) for f, e in zip(features, expected))


CONSTRUCTION_DEVICES = ["meta", pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
)]


@pytest.mark.parametrize("device", CONSTRUCTION_DEVICES)
@pytest.mark.parametrize("name", EVERY)
def test_construction_under_a_default_device_context(name, device):
    """Deferred initialisation (accelerate's init_empty_weights, FSDP) builds under ``with torch.device(...)``:
    every parameter and buffer lands there, as with the ``device=`` keyword."""
    with torch.device(device):
        model = timm.create_model(name)
    tensors = [*model.parameters(), *model.buffers()]
    assert {t.device.type for t in tensors} == {device}
    reference = create(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    if device != "meta":
        model.eval()
        with torch.no_grad():
            out = model(_input(name, batch=1).to(device))
        assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
