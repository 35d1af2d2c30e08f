"""Data layer: the embedded benchmark, tokenizer, task split, missing-modality tables, modality masks,
lazily read splits.

Stage handlers: :mod:`cmml.data.prepare`, :mod:`cmml.data.tasks`, :mod:`cmml.data.missing`;
training and evaluation code reads data through :func:`cmml.data.dataset.load_split`.
"""
