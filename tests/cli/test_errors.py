"""The errors a user will hit, each with a message that says what was wrong and what to do."""
import os

import pytest
import torch

import visionzoo
from _zoo import smallest_per_family
from visionzoo.cli import main as cli_main
from visionzoo.layers.checks import check_image_input
from visionzoo.models import CheckpointError, UnknownModelError, load_checkpoint, load_state_dict

SOME_MODEL = sorted(smallest_per_family())[0]
# Point-cloud families check their own input (B x N x 3 clouds) in their model tests.
IMAGE_MODELS = sorted(name for name in smallest_per_family() if visionzoo.family_of(name).input_kind == "image")


def test_unknown_model_name_suggests_close_names():
    known = visionzoo.list_models()
    typo = known[0][:-1] + ("x" if known[0][-1] != "x" else "y")
    with pytest.raises(UnknownModelError) as info:
        visionzoo.create_model(typo)
    assert known[0] in str(info.value) and "visionzoo list" in str(info.value)


def test_timm_name_without_prefix_suggests_zoo_name():
    known = visionzoo.list_models()
    with pytest.raises(UnknownModelError, match=known[0]):
        visionzoo.create_model(known[0][len("vz_"):])


def test_cli_reports_unknown_model(capsys):
    assert cli_main(["info", "vz_definitely_not_a_model"]) == 2
    assert "unknown model 'vz_definitely_not_a_model'" in capsys.readouterr().err


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_wrong_input_channels(name):
    model = visionzoo.create_model(name).eval()
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="channels-last"):
        model(torch.randn(1, 64, 64, 3))
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_input_too_small_for_stride(name):
    model = visionzoo.create_model(name).eval()
    min_size = model.pretrained_cfg.get("min_input_size")
    if not min_size or min(min_size[1:]) <= 1:
        pytest.skip(f"{name} accepts any input size")
    too_small = min(min_size[1:]) - 1
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(1, 3, too_small, too_small))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_empty_batch_is_refused_the_same_way_by_every_family(name):
    model = visionzoo.create_model(name).eval()
    height, width = model.pretrained_cfg["input_size"][1:]
    empty = torch.randn(0, 3, height, width)
    with pytest.raises(ValueError, match=r"empty batch \(shape \(0, 3, .*\)\); pass at least one image"):
        model(empty)
    with pytest.raises(ValueError, match="empty batch"):
        model.forward_intermediates(empty)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_integer_input_says_to_convert_to_float(name):
    model = visionzoo.create_model(name).eval()
    height, width = model.pretrained_cfg["input_size"][1:]
    image = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"floating-point image batch, got dtype torch.uint8; convert it with x.float\(\)"):
        model(image)
    with pytest.raises(TypeError, match="torch.int64"):
        model.forward_intermediates(image.long())


def test_check_image_input_messages():
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_image_input([1, 2], 3)
    with pytest.raises(ValueError, match="at least 32x32"):
        check_image_input(torch.zeros(1, 3, 16, 40), 3, min_size=32)
    with pytest.raises(ValueError, match="multiples of 32, got 64x40; resize or pad to e.g. 64x64"):
        check_image_input(torch.zeros(1, 3, 64, 40), 3, multiple=32)


def test_checkpoint_with_mismatched_keys_lists_them(tmp_path):
    model = visionzoo.create_model(SOME_MODEL)
    state = model.state_dict()
    dropped = next(iter(state))
    state.pop(dropped)
    state["not.a.real.key"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "1 missing" in message and dropped in message
    assert "1 unexpected" in message and "not.a.real.key" in message


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict(path)
    path = tmp_path / "mixed.pth"
    torch.save({"weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_state_dict(path)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_state_dict(corrupt)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict(path)
    assert not os.path.exists(marker)


def test_safetensors_and_wrapped_checkpoints_load(tmp_path):
    from safetensors.torch import save_file

    state = {"layer.weight": torch.randn(2, 2)}
    save_file(state, tmp_path / "w.safetensors")
    assert torch.equal(load_state_dict(tmp_path / "w.safetensors")["layer.weight"], state["layer.weight"])
    torch.save({"model": {"module.layer.weight": state["layer.weight"]}, "epoch": 3}, tmp_path / "train.pth")
    assert set(load_state_dict(tmp_path / "train.pth")) == {"layer.weight"}
    torch.save({"state_dict": state, "state_dict_ema": {"layer.weight": torch.ones(2, 2)}}, tmp_path / "ema.pth")
    assert torch.equal(load_state_dict(tmp_path / "ema.pth", prefer_ema=True)["layer.weight"], torch.ones(2, 2))
