"""The embedded benchmark (generated offline, no download): image + text, single- or multi-label.

The generator is :mod:`cmml.data.embedded` (class quads: the group is visible in both modalities,
one bit only in the image, one bit only in the text; docs/data.md §4). Task policy: the classes
are permuted with ``tasks.order_seed`` and cut into balanced, contiguous tasks (the tasks stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmml.data import embedded
from cmml.data.benchmarks.base import VOCAB_FILE, Benchmark, write_split
from cmml.data.tokenizer import load_tokenizer
from cmml.errors import ConfigError, DataError
from cmml.pipeline.atomic import write_json
from cmml.provenance.hashing import hash_file


class Embedded(Benchmark):
    """Generated class quads; see the module docstring."""

    NAME = "embedded"
    MODALITIES = ("image", "text")
    TASK_POLICY = "classes permuted with tasks.order_seed, cut into balanced contiguous tasks"

    def validate(self, bench: dict[str, Any], where: str) -> None:
        """``variant`` single|multi and a class count the generator can draw."""
        if bench.get("variant") not in ("single", "multi"):
            raise ConfigError(f"{where}: key 'benchmark.variant' must be one of ['single', 'multi'], got {bench.get('variant')!r}")
        try:
            embedded.check_num_classes(bench["num_classes"])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def label_type(self, bench: dict[str, Any]) -> str:
        """Single- or multi-label by ``benchmark.variant``."""
        return "multi" if bench["variant"] == "multi" else "single"

    def prepare(self, out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
        """Generate every split into ``out``; return the manifest (also written to ``out/manifest.json``)."""
        return prepare_embedded(out, bench, bench_id, self.MODALITIES)


def prepare_embedded(out: Path, bench: dict[str, Any], bench_id: str, modalities: tuple[str, ...]) -> dict[str, Any]:
    """Generate every split into ``out``; return the manifest (also written to ``out/manifest.json``)."""
    num_classes, size, multi = bench["num_classes"], bench["image_size"], bench["variant"] == "multi"
    classes = embedded.class_info(num_classes)
    words = [*embedded.SPECIAL_TOKENS, *embedded.vocabulary()]
    (out / VOCAB_FILE).write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(out / VOCAB_FILE, bench["max_text_len"])
    splits, text_stats = {}, {}
    for split in embedded.SPLITS:
        samples = embedded.generate_split(split, seed=bench["seed"], num_classes=num_classes,
                                          per_class=bench["per_class"][split], image_size=size, multilabel=multi)
        stats = tokenizer.stats(samples.texts)
        if stats["unknown"]:
            raise DataError(f"{out / VOCAB_FILE}: {stats['unknown']} generated {split} tokens map to [UNK] "
                            f"(generator {embedded.GENERATOR_VERSION} and its vocabulary disagree)")
        if stats["truncated"]:
            raise DataError(f"benchmark.max_text_len = {bench['max_text_len']} cuts {stats['truncated']} generated {split} "
                            f"captions (the longest has {stats['max_tokens']} tokens): set it to at least "
                            f"{stats['max_tokens']}; the captions are the whole text modality")
        write_split(out / f"{split}.parquet", samples)
        splits[split] = {"file": f"{split}.parquet", "count": len(samples.sample_ids),
                         "sha256": hash_file(out / f"{split}.parquet")["sha256"]}
        text_stats[split] = stats
    manifest = {
        "benchmark": bench_id, "name": bench["name"], "variant": bench["variant"], "seed": bench["seed"],
        "generator": embedded.GENERATOR_VERSION, "num_classes": num_classes,
        "class_names": [c["name"] for c in classes], "classes": classes,
        "pretrain_classes": embedded.class_info(num_classes, "pretrain"),
        "label_type": "multi" if multi else "single", "modalities": list(modalities), "image_size": size, "per_class": dict(bench["per_class"]),
        "splits": splits, "vocab": {"file": VOCAB_FILE, "sha256": hash_file(out / VOCAB_FILE)["sha256"], "size": len(words)},
        "text": {"max_text_len": bench["max_text_len"], **{s: text_stats[s] for s in embedded.SPLITS}},
    }
    write_json(out / "manifest.json", manifest)
    return manifest


BENCHMARK = Embedded()
