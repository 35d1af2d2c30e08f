"""Backbones: transformers' ViltModel driven through one small injection interface."""
