"""The ``cmml`` family: continual missing-modality learning (RebQ and the continual baselines).

Plan in :mod:`.plan`, run resolution in :mod:`.runs`, stage handlers in :mod:`.train`,
:mod:`.evaluate`, :mod:`.aggregate` and :mod:`.report`.
"""
