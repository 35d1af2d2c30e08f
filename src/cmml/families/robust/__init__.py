"""The ``robust`` family: Reza et al.'s parameter-efficient adaptation per missing-modality combination.

A re-implementation from the paper's description (no code was released; docs/robust.md lists every
choice it leaves open). Plan and params in :mod:`.plan`, models and checkpoints in :mod:`.models`,
stage handlers in :mod:`.train`, :mod:`.evaluate` and :mod:`.report`.
"""
