"""visionzoo: efficient-attention vision backbones registered in timm as ``vz_<family>_<variant>``.

Importing the package registers every zoo model in timm's registry and every family in the zoo's.
"""
from visionzoo import models  # noqa: F401  (registers the zoo in timm)
from visionzoo.models import create_model, example_input, family_of, list_families, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "example_input", "family_of", "list_families", "list_models", "__version__"]
