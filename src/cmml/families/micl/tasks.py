"""The micl family's task names: modality × kind, and the paper's two task orders.

Kept free of torch so that planning the DAG (Snakemake parses the plan on every run) stays cheap.
"""

from __future__ import annotations

MODALITIES = ("image", "video", "audio")
KINDS = ("cap", "qa")
TASKS = {f"{m}_{k}": (m, k) for m in MODALITIES for k in KINDS}
ORDERS = {  # the paper's two task orders
    "order1": ["audio_cap", "image_cap", "video_qa", "audio_qa", "image_qa", "video_cap"],
    "order2": ["image_cap", "video_cap", "video_qa", "image_qa", "audio_cap", "audio_qa"],
}
