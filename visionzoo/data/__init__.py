"""Datasets and loaders: ImageNet-style folders through timm's pipeline, and generated/shipped data for tests."""
