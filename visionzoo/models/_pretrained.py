"""Published weights: the pretrained tags of every zoo model, generated from the model cards, and their caches.

A card lists under each variant the checkpoints published for it (``weights:``, the default tag first): where
they live (a Hugging Face hub id, optionally with a file name, or a URL), their licence, the paper's top-1 and
the eval settings. :func:`pretrained_cfgs` turns those entries into the family's ``default_cfgs``, so the card is
the one source of both. ``timm.create_model(name, pretrained=True)`` then fetches the file through timm (into
the Hugging Face cache or the torch hub cache) and the family's ``checkpoint_filter_fn`` converts it on load.

Without network, a file fetched elsewhere enters the same caches through :func:`import_weights`
(``visionzoo weights import NAME FILE``), after it has been checked against the model.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from timm.models import get_pretrained_cfg
from torch import nn

from visionzoo.models._cards import CardError, load_cards, variant_card
from visionzoo.models._checkpoint import CheckpointError, load_checkpoint, load_state_dict

# timm's hub copies are loaded as model.safetensors, else as pytorch_model.bin (timm's _hub.load_state_dict_from_hf).
HF_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
EVAL_FIELDS = ("crop_pct", "crop_mode", "interpolation", "mean", "std")
# The revision an imported file is filed under when the cache has never seen the repository: a placeholder
# commit that an online `hf_hub_download` replaces by the real one.
LOCAL_REVISION = "0" * 40


class PretrainedWeightsError(CheckpointError):
    """Published weights are unavailable here, or a file offered for them was refused."""


def _variant_weights(entry: dict[str, Any], family: str, variant: str) -> list[dict[str, Any]]:
    weights = entry.get("weights")
    if weights is None:
        raise CardError(
            f"model card of {family}: {variant} has no 'weights' entry; list its published checkpoints, or write "
            "'weights: []' and a 'weights_note' saying why there are none"
        )
    if not weights and not entry.get("weights_note"):
        raise CardError(f"model card of {family}: {variant} has no weights and no 'weights_note' saying why")
    for item in weights:
        locations = [key for key in ("hf_hub_id", "url") if item.get(key)]
        if "tag" not in item or len(locations) != 1 or "eval" not in item or "top1" not in item:
            raise CardError(
                f"model card of {family}: every {variant} weights entry needs a tag, exactly one of hf_hub_id/url, "
                f"top1 and eval settings; got {item}"
            )
    return weights


def pretrained_cfgs(family: str, base_cfg: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name.tag: cfg}`` for ``generate_default_cfgs``: one entry per published checkpoint of each variant on the
    family's card (default first), and a tagless entry for a variant without weights. ``base_cfg(**overrides)``
    is the family's common cfg; it receives ``input_size`` as (3, H, W)."""
    cfgs = {}
    for variant, entry in load_cards()[family]["variants"].items():
        weights = _variant_weights(entry, family, variant)
        if not weights:
            size = entry["input_size"]
            cfgs[variant] = base_cfg(input_size=(3, size, size))
        for item in weights:
            size = item["eval"].get("input_size", entry["input_size"])
            overrides = {key: item["eval"][key] for key in EVAL_FIELDS if key in item["eval"]}
            for key in ("mean", "std"):
                if key in overrides:
                    overrides[key] = tuple(overrides[key])
            location = (
                {"hf_hub_id": item["hf_hub_id"], "hf_hub_filename": item.get("hf_hub_filename")}
                if item.get("hf_hub_id") else {"url": item["url"], "hf_hub_id": None}
            )
            # A pre-training checkpoint whose head is not for ImageNet-1k says `num_classes: 0`: the tag then
            # builds the bare backbone, and `num_classes=N` adds a fresh head for fine-tuning.
            if "num_classes" in item:
                overrides["num_classes"] = item["num_classes"]
            cfgs[f"{variant}.{item['tag']}"] = base_cfg(
                input_size=(3, size, size), license=item["license"], **location, **overrides
            )
    return cfgs


@dataclass(frozen=True)
class WeightSource:
    """Where one pretrained tag's file lives and where timm caches it."""

    name: str  # vz_model.tag
    source: str  # "timm" (timm's hub copy) or "official" (the authors' own files)
    license: str
    top1: float | None  # None: a pre-training checkpoint without an ImageNet-1k head
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    url: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The file names that satisfy the loader, the preferred one first."""
        if self.url:
            return (Path(urlparse(self.url).path).name,)
        return (self.hf_hub_filename,) if self.hf_hub_filename else HF_DEFAULT_FILES

    @property
    def location(self) -> str:
        if self.url:
            return self.url
        return f"https://huggingface.co/{self.hf_hub_id}/resolve/main/{self.files[0]}"

    def cached_file(self) -> Path | None:
        """The cached file ``pretrained=True`` would load, or ``None``."""
        for name in self.files:
            path = self.cache_path(name, existing_only=True)
            if path is not None and path.is_file():
                return path
        return None

    def cache_path(self, file_name: str, existing_only: bool = False) -> Path | None:
        """Where timm's loader looks for ``file_name`` (``None`` if ``existing_only`` and the hub cache has never
        seen the repository)."""
        if self.url:
            return Path(torch.hub.get_dir()) / "checkpoints" / file_name
        repo = hf_repo_dir(self.hf_hub_id)
        ref = repo / "refs" / "main"
        if ref.is_file():
            revision = ref.read_text().strip()
        elif existing_only:
            return None
        else:
            revision = LOCAL_REVISION
        return repo / "snapshots" / revision / file_name

    def unavailable_message(self, reason: str) -> str:
        where = f"the Hugging Face hub ({self.hf_hub_id})" if self.hf_hub_id else "its release URL"
        cache_variable = "HF_HUB_CACHE" if self.hf_hub_id else "TORCH_HOME"
        reason = reason.rstrip(".")
        alternatives = (
            f" (or {' / '.join(self.files[1:])})" if len(self.files) > 1 else ""
        )
        return (
            f"pretrained weights {self.name} are not cached here and could not be fetched from {where}: {reason}. "
            f"Download {self.location}{alternatives} on a machine with network, then run "
            f"`visionzoo weights import {self.name} FILE` here; it checks the file and caches it where "
            f"pretrained=True finds it (or point {cache_variable} at a cache that holds it)."
        )


def hf_repo_dir(repo_id: str) -> Path:
    """The Hugging Face cache folder of a model repository (read at call time, so HF_HUB_CACHE may change)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def weight_source(name: str) -> WeightSource:
    """The source of a pretrained name, ``vz_model.tag`` or ``vz_model`` (its default tag)."""
    variant, _, tag = name.partition(".")
    entry = variant_card(variant)
    if entry is None:
        raise PretrainedWeightsError(
            f"{name!r} is not a zoo model with a model card; `visionzoo weights list` shows them"
        )
    weights = entry.get("weights") or []
    if not weights:
        raise PretrainedWeightsError(
            f"{variant} has no published weights: {entry.get('weights_note', 'its card lists none')}"
        )
    for item in weights:
        if not tag or item["tag"] == tag:
            return WeightSource(
                name=f"{variant}.{item['tag']}", source=item["source"], license=item["license"],
                top1=item["top1"], hf_hub_id=item.get("hf_hub_id"), hf_hub_filename=item.get("hf_hub_filename"),
                url=item.get("url"),
            )
    tags = ", ".join(f"{variant}.{item['tag']}" for item in weights)
    raise PretrainedWeightsError(f"{variant} has no pretrained tag {tag!r}; its tags: {tags}")


def list_weight_sources() -> list[WeightSource]:
    """Every published checkpoint of the zoo, in card order."""
    return [
        weight_source(f"{variant}.{item['tag']}")
        for card in load_cards().values()
        for variant, entry in card["variants"].items()
        for item in entry.get("weights") or []
    ]


def import_weights(name: str, file: str | Path) -> Path:
    """Check ``file`` against the model of ``name`` and copy it, byte for byte, to where ``pretrained=True`` reads.

    The file must load safely (safetensors or a ``weights_only`` torch file), convert through the family's
    checkpoint filter and then match the model's keys and shapes strictly. A file already cached is never
    replaced. Returns the cached path.
    """
    import timm

    from visionzoo.models._registry import family_of

    source = weight_source(name)
    file = Path(file)
    existing = source.cached_file()
    if existing is not None:
        raise PretrainedWeightsError(
            f"{source.name} is already cached at {existing}; remove that file first to replace it"
        )
    variant = source.name.split(".")[0]
    try:
        state_dict = load_state_dict(file)
        # Shapes are all the check needs: a model on the meta device costs no memory, whatever its size.
        model = timm.create_model(variant, pretrained_cfg=source.name.split(".")[1], device="meta")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
            load_checkpoint(model, state_dict, filter_fn=family_of(variant).checkpoint_filter_fn)
    except CheckpointError as error:
        raise PretrainedWeightsError(f"refused {file} for {source.name}; nothing was cached. {error}") from None
    if source.source == "timm":
        _check_timm_layout(source, file, state_dict)
    target = source.cache_path(_target_name(source, file))
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.hf_hub_id:
        ref = hf_repo_dir(source.hf_hub_id) / "refs" / "main"
        if not ref.is_file():
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(target.parent.name)
    # Copy beside the target, then rename: a reader never sees half a file, and a failed copy leaves nothing.
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(handle)
    try:
        shutil.copyfile(file, partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _check_timm_layout(source: WeightSource, file: Path, state_dict: dict) -> None:
    """timm's own model reads the same hub cache, so a file filed under timm's hub id must be in timm's layout."""
    import timm

    timm_name = source.hf_hub_id.split("/", 1)[1].split(".")[0]
    expected = set(timm.create_model(timm_name, device="meta").state_dict())
    if set(state_dict) != expected:
        strange = sorted(set(state_dict) - expected)[:3] or sorted(expected - set(state_dict))[:3]
        raise PretrainedWeightsError(
            f"refused {file} for {source.name}; nothing was cached. It fits {source.name.split('.')[0]} but is not "
            f"in the layout of timm's {timm_name} (e.g. {strange}), which timm's own model reads from the same "
            f"cache entry ({source.hf_hub_id}). Import the file from {source.location}, or load this one directly: "
            f"visionzoo.create_model({source.name.split('.')[0]!r}, checkpoint_path=FILE)"
        )


def _target_name(source: WeightSource, file: Path) -> str:
    if source.url or source.hf_hub_filename:
        return source.files[0]
    # timm's hub copies: a safetensors file is read as model.safetensors, a torch file as pytorch_model.bin.
    return HF_DEFAULT_FILES[0] if file.suffix == ".safetensors" else HF_DEFAULT_FILES[1]


def _requested_source(variant: str, kwargs: dict[str, Any]) -> WeightSource | None:
    """The published checkpoint a ``pretrained=True`` call asks for (``None`` for a custom pretrained_cfg)."""
    requested = kwargs.get("pretrained_cfg")
    if isinstance(requested, str) or requested is None:
        tag = requested or get_pretrained_cfg(variant).tag
        try:
            return weight_source(f"{variant}.{tag}" if tag else variant)
        except PretrainedWeightsError:
            return None
    return None


def with_weights_help(entrypoint: Callable[..., nn.Module], variant: str) -> Callable[..., nn.Module]:
    """Wrap a model entrypoint so that ``pretrained=True`` without network or cache says what to fetch and how to
    import it."""

    @functools.wraps(entrypoint)
    def create(pretrained: bool = False, **kwargs) -> nn.Module:
        try:
            model = entrypoint(pretrained=pretrained, **kwargs)
        except OSError as error:  # hub and URL fetches fail with OSError subclasses (offline, no network, 404)
            source = _requested_source(variant, kwargs) if pretrained else None
            if source is None or source.cached_file() is not None or kwargs.get("cache_dir") is not None:
                raise
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PretrainedWeightsError(source.unavailable_message(reason)) from error
        return model

    return create


SOURCE_LABELS = {"timm": "timm hub", "official": "authors"}


def weights_summary(variant: str) -> str:
    """One line for tables: the published tags of ``variant`` and where they come from, or ``none``."""
    entry = variant_card(variant)
    if entry is None:
        return "-"
    weights = entry.get("weights") or []
    if not weights:
        return "none"
    hosts = []
    for item in weights:
        host = SOURCE_LABELS[item["source"]]
        if item["source"] == "official":
            if item.get("hf_hub_id"):
                host += ", HF hub"
            else:
                host += ", GitHub release" if "github.com/" in item["url"] else ", authors' site"
        hosts.append(host)
    tags = ", ".join(f"`{item['tag']}`" for item in weights)
    return f"{tags} ({' / '.join(dict.fromkeys(hosts))})"
