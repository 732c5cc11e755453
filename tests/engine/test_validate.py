"""`visionzoo validate NAME --data DIR`: a published checkpoint from the (generated) cache on a generated folder,
with the tag's own eval transform, its top-1/top-5 beside the card's paper top-1, written as JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

from _training import ROOT, subprocess_env
from _weights_cache import cache_timm_copy, hf_snapshot, offline  # noqa: F401
from visionzoo.data.loader import eval_transform
from visionzoo.cli import main
from visionzoo.engine.validate import tag_data_config
from visionzoo.models._cards import variant_card


def _image_folder(root, per_class: int = 3):
    rng = np.random.default_rng(0)
    paths = []
    for label in ("class_a", "class_b"):
        (root / "val" / label).mkdir(parents=True)
        for index in range(per_class):
            # Non-square, so the resize and centre crop of the transform both matter.
            pixels = rng.integers(0, 256, size=(180 + 20 * index, 260, 3), dtype=np.uint8)
            path = root / "val" / label / f"{index}.png"
            Image.fromarray(pixels).save(path)
            paths.append((path, 0 if label == "class_a" else 1))
    return paths


def test_validate_scores_the_cached_checkpoint_with_its_own_transform(offline, capsys):
    reference = cache_timm_copy("shvit_s1", "in1k")
    # Push classes 0 and 1 (the two folders) to the top, so that top-1 depends on the images and top-5 is 100 %.
    with torch.no_grad():
        reference.head.l.bias[:2] += 50.0
    state_dict = {key: value.contiguous() for key, value in reference.state_dict().items()}
    save_file(state_dict, str(hf_snapshot("timm/shvit_s1.in1k") / "model.safetensors"))
    images = _image_folder(offline / "data")

    # The expected scores, independently: timm's own model, transform from timm's own pretrained cfg.
    transform = create_transform(**resolve_data_config(model=reference))
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in images])
        predictions = reference(batch).argmax(dim=1)
    expected_top1 = 100.0 * sum(int(p) == label for p, (_, label) in zip(predictions, images)) / len(images)
    assert 0 < expected_top1 < 100  # the images, not the bias, decide between the two classes

    output = offline / "result.json"
    code = main(["validate", "vz_shvit_s1", "--data", str(offline / "data"), "--output", str(output),
                 "--workers", "0", "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "paper top-1 72.8" in printed and f"top-1 {expected_top1:.3f}" in printed
    result = json.loads(output.read_text())
    assert result["model"] == "vz_shvit_s1.in1k" and result["images"] == len(images)
    assert result["top1"] == pytest.approx(expected_top1)
    assert result["top5"] == 100.0
    assert result["paper_top1"] == variant_card("vz_shvit_s1")["weights"][0]["top1"]
    assert result["img_per_s"] > 0
    cfg = timm.models.get_pretrained_cfg("vz_shvit_s1.in1k")
    assert (tuple(result["input_size"]), result["crop_pct"], result["interpolation"]) == (
        cfg.input_size, cfg.crop_pct, cfg.interpolation
    )


@pytest.mark.parametrize("name, resize", [
    ("vz_transnext_small.in1k_384", "Resize(size=(384, 384)"),  # warped to the square, no crop
    ("vz_halonet26t.a1h_in1k", "Resize(size=269"),  # 256 / 0.95 on the short side, then a 256 centre crop
])
def test_each_tag_gets_its_own_eval_transform(name, resize):
    config = tag_data_config(name)
    cfg = timm.models.get_pretrained_cfg(name)
    assert (config["input_size"], config["crop_pct"], config["crop_mode"]) == (
        cfg.input_size, cfg.crop_pct, cfg.crop_mode
    )
    assert resize in repr(eval_transform(config))


def test_validate_without_cached_weights_is_a_one_line_error(offline, capsys):
    _image_folder(offline / "data", per_class=1)
    assert main(["validate", "vz_litv2_small", "--data", str(offline / "data"), "--output",
                 str(offline / "r.json"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionzoo validate: error: pretrained weights vz_litv2_small.in1k are not cached")
    assert "visionzoo weights import vz_litv2_small.in1k FILE" in err
    assert not (offline / "r.json").exists()


def test_validate_refuses_a_pretraining_tag_without_an_imagenet_1k_head(offline, capsys):
    _image_folder(offline / "data", per_class=1)
    assert main(["validate", "vz_dinat_large.in22k", "--data", str(offline / "data"), "--output",
                 str(offline / "r.json"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "vz_dinat_large.in22k is a pre-training checkpoint without an ImageNet-1k head" in err
    assert not (offline / "r.json").exists()


def test_eval_tool_reaches_validate():
    done = subprocess.run(["bash", str(ROOT / "tools" / "eval.sh"), "validate", "--help"],
                          env=dict(subprocess_env(), PYTHON=sys.executable), capture_output=True, text=True)
    assert done.returncode == 0 and "--data" in done.stdout and "pretrained tag" in done.stdout
