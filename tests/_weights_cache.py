"""Offline caches for pretrained-weight tests: generated files written where the Hugging Face hub and torch hub
would have put the real ones, in each source's own layout and format. Nothing here touches the network."""
from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from visionzoo.models import family_of, load_checkpoint

DATA = Path(__file__).parent / "data"
MANIFESTS = {
    "vz_transnext_micro": DATA / "transnext_keys" / "transnext_micro.tsv",
    "vz_litv2_small": DATA / "keys" / "litv2_small.tsv",
    "vz_nat_mini": DATA / "nat" / "nat_mini.tsv",
    "vz_dinat_mini": DATA / "nat" / "dinat_mini.tsv",
    "vz_dinat_s_tiny": DATA / "nat" / "dinat_s_tiny.tsv",
    "vz_overlock_xt": DATA / "overlock" / "overlock_xt.tsv",
    "vz_overlock_xt_reparam": DATA / "overlock" / "overlock_xt_reparam.tsv",
}
COMMIT = "c0ffee" + "0" * 34


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty HF_HUB_CACHE (offline) and TORCH_HOME under tmp_path; URL downloads fail as they would offline."""
    hf_cache, torch_home = tmp_path / "hf", tmp_path / "torch"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    # huggingface_hub reads these once at import; its download functions look them up at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))

    def no_download(url, *args, **kwargs):
        raise OSError(f"tests never download ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def hf_snapshot(repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in the current HF cache, as ``hf_hub_download`` leaves it."""
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def torch_hub_file(url: str) -> Path:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / url.rsplit("/", 1)[1]


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float tensor moved off its initial value, so zero-initialised branches and BN statistics count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.05
            if key.endswith("running_var"):
                tensor.copy_(tensor.abs() + noise.abs() + 0.5)
            else:
                tensor.add_(noise)
    return model.eval()


def cache_timm_copy(timm_name: str, tag: str, seed: int = 0) -> torch.nn.Module:
    """timm's model with random weights, saved as timm's hub copy ``timm/<name>.<tag>/model.safetensors``."""
    model = perturbed(timm.create_model(timm_name), seed)
    state_dict = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state_dict, str(hf_snapshot(f"timm/{timm_name}.{tag}") / "model.safetensors"))
    return model


def official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with every key and shape of the official release (its key manifest)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for line in MANIFESTS[name].read_text().splitlines():
        key, shape = line.split("\t")
        size = [int(dim) for dim in shape.split(",")] if shape else []
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state_dict[key] = torch.rand(size, generator=generator) + 0.5
        else:
            state_dict[key] = torch.randn(size, generator=generator) * 0.05
    return state_dict


def official_reference(name: str, official: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our model loaded with the official weights through the family's converter."""
    model = timm.create_model(name)
    return load_checkpoint(model, {"model": official}, filter_fn=family_of(name).checkpoint_filter_fn).eval()


def assert_same_logits(model: torch.nn.Module, reference: torch.nn.Module, size: int, batch: int = 1,
                       exact: bool = False) -> None:
    """Both models give the same logits on one random batch (bit for bit when ``exact``)."""
    x = torch.randn(batch, 3, size, size)
    tolerance = 0 if exact else 1e-4
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=tolerance, atol=tolerance)
