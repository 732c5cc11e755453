import os

import pytest
import torch
from hypothesis import settings

import visionzoo  # noqa: F401  (registers the zoo)

settings.register_profile("visionzoo", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "visionzoo"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
