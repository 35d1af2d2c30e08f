"""Every registered benchmark satisfies the interface: name, modalities, label type, metric, prepare."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmml.data.benchmarks.base import LABEL_TYPES, Benchmark
from cmml.data.benchmarks.registry import BENCHMARKS, load, module_of
from cmml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KNOWN_MODALITIES = {"image", "text", "audio", "video"}


PRESET = {"embedded": "params.yaml", "food101": "presets/rebq_food101.yaml", "mmimdb": "presets/rebq_mmimdb.yaml",
          "manifest": "presets/user_manifest.yaml"}
HATEFUL = {"name": "hateful_memes", "layout": "raw", "root": "data/hateful_memes", "vocab": "models/vilt-b32-mlm",
           "on_bad_sample": "fail", "image_resize": "vilt"}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_registered_benchmark_declares_the_interface(name: str) -> None:
    b = load(module_of(name))
    assert isinstance(b, Benchmark) and b.NAME == name and b.TASK_POLICY
    assert b.MODALITIES and set(b.MODALITIES) <= KNOWN_MODALITIES and len(set(b.MODALITIES)) == len(b.MODALITIES)
    bench = yaml.safe_load((ROOT / PRESET[name]).read_text())["benchmark"] if name in PRESET else HATEFUL
    b.validate(bench, PRESET.get(name, "params.yaml"))
    assert b.label_type(bench) in LABEL_TYPES
    for f in b.raw_files(bench):
        assert f.path and f.source and not Path(f.path).is_absolute()


def test_embedded_label_types_and_metrics() -> None:
    b = load(module_of("embedded"))
    bench = yaml.safe_load((ROOT / "params.yaml").read_text())["benchmark"]
    assert b.label_type(bench) == "single" and b.primary_metric(bench) == "accuracy"
    assert b.label_type({**bench, "variant": "multi"}) == "multi" and b.primary_metric({**bench, "variant": "multi"}) == "f1_macro"
    assert set(b.METRICS) == set(LABEL_TYPES)
    with pytest.raises(ConfigError, match="benchmark.variant"):
        b.validate({**bench, "variant": "triple"}, "params.yaml")
    with pytest.raises(ConfigError, match="multiple of 4"):
        b.validate({**bench, "num_classes": 10}, "params.yaml")


def test_unknown_benchmark_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no such benchmark in this version; known: \['embedded', 'food101', "):
        module_of("imagenet")


def test_embedded_prepare_refuses_to_cut_captions(tmp_path: Path) -> None:
    """The captions are the whole text modality: a too short benchmark.max_text_len is an error, not a cut."""
    from cmml.errors import DataError

    b = load(module_of("embedded"))
    bench = {**yaml.safe_load((ROOT / "params.yaml").read_text())["benchmark"], "variant": "multi", "num_classes": 8,
             "per_class": {"pretrain": 4, "train": 8, "val": 2, "test": 4}, "max_text_len": 12}
    with pytest.raises(DataError, match=r"benchmark.max_text_len = 12 cuts \d+ generated pretrain captions"):
        b.prepare(tmp_path, bench, "embedded-multi")
    assert not (tmp_path / "pretrain.parquet").exists()
