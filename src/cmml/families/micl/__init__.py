"""The ``micl`` family: modality-inconsistent continual learning of a small multimodal generative model (MoInCL).

Data in :mod:`.data`, model in :mod:`.model`, metrics in :mod:`.metrics`, methods in :mod:`.methods`,
plan in :mod:`.plan`, stage handlers in :mod:`.prepare`, :mod:`.pretrain`, :mod:`.train` (which
also evaluates, :mod:`.evaluate`), :mod:`.aggregate` and :mod:`.report` (docs/micl.md).
"""
