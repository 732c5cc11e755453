"""`visionzoo weights import/list`: a file fetched elsewhere is checked, then cached where pretrained=True finds it;
a bad file is refused and the cache left as it was. And every way a timm user loads a file converts it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from _weights_cache import (
    assert_same_logits,
    hf_snapshot, offline, official_reference, official_state_dict, perturbed, torch_hub_file,  # noqa: F401
)
from visionzoo.cli import main
from visionzoo.models._pretrained import PretrainedWeightsError, import_weights


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def _timm_file(tmp_path: Path, timm_name: str = "shvit_s1", seed: int = 0) -> tuple[Path, torch.nn.Module]:
    reference = perturbed(timm.create_model(timm_name), seed)
    path = tmp_path / "downloads" / f"{timm_name}_{seed}.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(path))
    return path, reference


def test_import_places_timms_copy_where_pretrained_finds_it(offline):
    path, reference = _timm_file(offline)
    target = import_weights("vz_shvit_s1", path)
    assert target.name == "model.safetensors" and target.read_bytes() == path.read_bytes()
    assert "models--timm--shvit_s1.in1k" in str(target)
    model = timm.create_model("vz_shvit_s1", pretrained=True).eval()
    assert_same_logits(model, reference, 96)


def test_import_places_the_authors_release_file(offline):
    official = official_state_dict("vz_litv2_small")
    path = offline / "litv2_s.pth"
    torch.save({"model": official, "epoch": 299}, path)
    target = import_weights("vz_litv2_small.in1k", path)
    assert target == torch_hub_file("https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_s.pth")
    model = timm.create_model("vz_litv2_small", pretrained=True).eval()
    assert_same_logits(model, official_reference("vz_litv2_small", official), 64, exact=True)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("problem, expected", [
    ("truncated", "not a readable safetensors file"),
    ("other variant", "shape mismatch"),
    ("code", "contains Python objects other than tensors"),
])
def test_bad_file_is_refused_and_the_cache_left_alone(offline, problem, expected):
    path, _ = _timm_file(offline, "shvit_s2" if problem == "other variant" else "shvit_s1")
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if problem == "code":
        path = offline / "evil.pth"
        torch.save({"model": _Payload()}, path)
    before = _files(offline / "hf")
    with pytest.raises(PretrainedWeightsError, match=expected) as error:
        import_weights("vz_shvit_s1.in1k", path)
    assert "nothing was cached" in str(error.value)
    assert _files(offline / "hf") == before


def test_a_cached_file_is_never_replaced(offline):
    path, _ = _timm_file(offline)
    target = import_weights("vz_shvit_s1", path)
    other, _ = _timm_file(offline, seed=1)
    with pytest.raises(PretrainedWeightsError, match="already cached"):
        import_weights("vz_shvit_s1", other)
    assert target.read_bytes() == path.read_bytes()


def test_cli_import_and_list(offline, capsys):
    path, _ = _timm_file(offline)
    assert main(["weights", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["vz_shvit_s1.in1k"]["cached"] is None
    assert rows["vz_litv2_base.in1k_384"]["location"].endswith("/v1.0/litv2_b_384.pth")
    assert "vz_convit_tiny_plus" not in " ".join(rows)

    assert main(["weights", "import", "vz_shvit_s1", str(path)]) == 0
    assert "cached it at" in capsys.readouterr().out
    assert main(["weights", "list", "--json"]) == 0
    row = {row["name"]: row for row in json.loads(capsys.readouterr().out)}["vz_shvit_s1.in1k"]
    assert row["cached"] and row["size_mb"] == round(path.stat().st_size / 2**20, 1)

    assert main(["weights", "import", "vz_shvit_s2", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionzoo weights: error: refused") and "Traceback" not in err


def test_timm_checkpoint_path_converts_timms_layout(offline):
    path, reference = _timm_file(offline)
    model = timm.create_model("vz_shvit_s1", checkpoint_path=str(path)).eval()
    assert_same_logits(model, reference, 96)


def test_plain_load_state_dict_converts_the_official_layout(tmp_path):
    official = official_state_dict("vz_transnext_micro")
    path = tmp_path / "transnext_micro_224_1k.pth"
    torch.save({"model": official}, path)
    model = timm.create_model("vz_transnext_micro").eval()
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    assert_same_logits(model, official_reference("vz_transnext_micro", official), 64, exact=True)


def test_model_built_from_its_class_converts_timms_layout():
    timm_model = timm.create_model("shvit_s1").eval()
    model = type(timm.create_model("vz_shvit_s1"))().eval()  # the class itself, no entrypoint or factory involved
    model.load_state_dict(timm_model.state_dict())
    assert_same_logits(model, timm_model, 96)


def test_plain_load_state_dict_of_another_family_says_what_it_found():
    model = timm.create_model("vz_shvit_s1")
    with pytest.raises(RuntimeError, match="no tensor of this file fits SHViT: .*none of the layouts the shvit converter reads"):
        model.load_state_dict(timm.create_model("convit_tiny").state_dict())
    # strict=False keeps torch's permissive behaviour: extra keys are ignored, ours load.
    extra = {**model.state_dict(), "unrelated.weight": torch.zeros(1)}
    result = model.load_state_dict(extra, strict=False)
    assert result.unexpected_keys == ["unrelated.weight"] and not result.missing_keys


def test_readme_weights_column_comes_from_the_cards(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- zoo:start -->\n<!-- zoo:end -->\n")
    assert main(["list", "vz_litv2_base", "--details", "--readme", str(readme)]) == 0
    row = next(line for line in readme.read_text().splitlines() if line.startswith("| vz_litv2_base "))
    assert row.endswith("| `in1k`, `in1k_384` (authors, GitHub release) |")
    # The checked-in table was generated from the cards as they are now.
    from visionzoo.models._pretrained import weights_summary

    text = (Path(__file__).parents[2] / "README.md").read_text()
    table = text[text.index("<!-- zoo:start -->"):text.index("<!-- zoo:end -->")]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| vz_")]
    assert rows and all(cells[-1].rstrip(" |") == weights_summary(cells[0][2:]) for cells in rows)


def test_official_layout_is_not_filed_under_timms_hub_id(offline):
    """timm's own shvit_s1 reads the same cache entry, so only timm's layout may go there."""
    official = {}
    for line in (Path(__file__).parents[1] / "data" / "keys" / "shvit_s1.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        official[key] = torch.ones([int(dim) for dim in shape.split(",")] if shape else [])
    path = offline / "shvit_s1.pth"
    torch.save({"model": official}, path)
    with pytest.raises(PretrainedWeightsError, match="not in the layout of timm's shvit_s1") as error:
        import_weights("vz_shvit_s1", path)
    assert "visionzoo.create_model('vz_shvit_s1', checkpoint_path=FILE)" in str(error.value)
    assert not (offline / "hf").exists()
