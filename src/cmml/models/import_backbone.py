"""Stage handler ``data/backbone``: bring a published ViLT into the project (``backbone.source: pretrained``).

``backbone.pretrained`` is a local ``save_pretrained`` directory (then it is a dep of this stage,
so a change of its content reruns everything downstream) or a hub id, resolved from the local
Hugging Face cache only (``huggingface_hub.snapshot_download(..., local_files_only=True)``; the
pipeline never downloads). The model (config + weights) and its tokenizer vocabulary are copied
into ``runs/data/backbones/<slug>/``; the sidecar records the resolved source, the hub revision
and every file's sha256, and train/evaluate depend on that directory, whose digest covers the
weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cmml.errors import DataError
from cmml.provenance.sidecar import stage_run

MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def resolve(ref: str) -> tuple[Path, dict[str, str]]:
    """Local directory of ``ref`` (a path or a cached hub id) and what identifies it."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local, {"kind": "local", "path": ref}
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(ref, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception as exc:  # noqa: BLE001 - every failure means "not available offline"
        raise DataError(f"backbone.pretrained = {ref!r}: neither a local directory nor a hub id in the local "
                        f"Hugging Face cache ({type(exc).__name__}). Download it once where the hub is reachable "
                        f"(`huggingface-cli download {ref}`) or save it with `save_pretrained` to a directory "
                        "and set backbone.pretrained to that path.") from None
    return snap, {"kind": "hub", "repo_id": ref, "revision": snap.name}


def run(stage: Any, params: dict[str, Any]) -> None:
    """Copy the model and its vocabulary into the stage output, checking that ViLT loads from it."""
    from cmml.models.backbone import load_backbone

    src, ident = resolve(stage.args["ref"])
    if not (src / "config.json").is_file() or not any((src / f).is_file() for f in MODEL_FILES[1:]):
        raise DataError(f"{src}: expected a transformers model directory (config.json and model.safetensors "
                        "or pytorch_model.bin)")
    if not (src / "vocab.txt").is_file():
        raise DataError(f"{src}: no vocab.txt; cmml tokenises with the model's BERT WordPiece vocabulary")
    with stage_run(stage, params, extra={"source": ident}) as sr:
        out = sr.tmp(stage.args["out"])
        for name in (*MODEL_FILES, *TOKENIZER_FILES):
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        backbone = load_backbone(out)  # fails here, naming the directory, if the weights do not load
        positions = backbone.vilt.config.max_position_embeddings
        if positions < int(stage.args["max_text_len"]):
            stretch_positions(backbone.vilt, int(stage.args["max_text_len"]), out)
            sr.extra["text_positions"] = {"pretrained": positions, "interpolated_to": int(stage.args["max_text_len"])}


def stretch_positions(vilt: Any, length: int, out: Path) -> None:
    """Re-save ``vilt`` into ``out`` with its text position embeddings interpolated to ``length`` (MAP's
    stretch of ViLT's 40 positions; docs/data.md §7.1); every other weight is unchanged."""
    from transformers import ViltModel

    from cmml.data.vilt_input import interpolate_positions

    config = vilt.config
    config.max_position_embeddings = length
    state = vilt.state_dict()
    key = "embeddings.text_embeddings.position_embeddings.weight"
    state[key] = interpolate_positions(state[key], length)
    longer = ViltModel(config, add_pooling_layer=False)
    longer.load_state_dict(state)  # strict: every weight carried over
    for name in MODEL_FILES:
        (out / name).unlink(missing_ok=True)
    longer.save_pretrained(out)
