"""Zoo backbones and necks for mmdetection 3 and mmsegmentation 1.

Load it from a config with ``custom_imports = dict(imports=['visionzoo.mm'], allow_failed_imports=False)``;
importing registers ``VisionZooBackbone`` and ``TransposedConvFPN`` (MODELS) and
``ZooOptimWrapperConstructor`` in the registries of whichever of mmdet and mmseg is installed.
"""
import importlib

import visionzoo  # noqa: F401  (registers the zoo in timm)
from visionzoo.mm.backbone import VisionZooBackbone
from visionzoo.mm.necks import TransposedConvFPN
from visionzoo.mm.optim import ZooOptimWrapperConstructor

REGISTRIES = {}
for _package in ("mmdet", "mmseg"):
    try:
        REGISTRIES[_package] = importlib.import_module(f"{_package}.registry").MODELS
    except ImportError:
        continue
    for _module in (VisionZooBackbone, TransposedConvFPN):
        REGISTRIES[_package].register_module(module=_module)
    importlib.import_module(f"{_package}.registry").OPTIM_WRAPPER_CONSTRUCTORS.register_module(
        module=ZooOptimWrapperConstructor
    )

if not REGISTRIES:
    raise ImportError("visionzoo.mm needs mmdet 3.3.0 or mmsegmentation 1.2.2: pip install -e '.[mm]'")

__all__ = ["REGISTRIES", "TransposedConvFPN", "VisionZooBackbone", "ZooOptimWrapperConstructor"]
