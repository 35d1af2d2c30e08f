"""Stage ``prepare``: write the benchmark's splits, vocabulary and manifest (runs/<bench>/data/).

Only the embedded benchmark (cmml.data.embedded) can be prepared in this version. Outputs:
``{split}.parquet`` for pretrain/train/val/test (sample_id, image PNG bytes, text, labels, primary),
``vocab.txt`` (BERT-style) and ``manifest.json`` (sizes, sha256 of every file, class structure).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmml.config import benchmark_id
from cmml.data import embedded
from cmml.data.tokenizer import load_tokenizer
from cmml.errors import ConfigError, DataError
from cmml.pipeline.atomic import write_json
from cmml.provenance.hashing import hash_file
from cmml.provenance.sidecar import stage_run

if TYPE_CHECKING:
    from cmml.pipeline.plan import Stage

VOCAB_FILE = "vocab.txt"


def write_split(path: Path, samples: embedded.SplitSamples) -> None:
    """Write one split as parquet with a fixed schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("sample_id", pa.string()), ("image", pa.binary()), ("text", pa.string()),
                        ("labels", pa.list_(pa.int64())), ("primary", pa.int64())])
    table = pa.table([samples.sample_ids, samples.images, samples.texts, samples.labels, samples.primary.tolist()],
                     schema=schema)
    pq.write_table(table, path, compression="zstd")


def prepare_embedded(out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
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
        write_split(out / f"{split}.parquet", samples)
        splits[split] = {"file": f"{split}.parquet", "count": len(samples.sample_ids),
                         "sha256": hash_file(out / f"{split}.parquet")["sha256"]}
        text_stats[split] = stats
    manifest = {
        "benchmark": bench_id, "name": bench["name"], "variant": bench["variant"], "seed": bench["seed"],
        "generator": embedded.GENERATOR_VERSION, "num_classes": num_classes,
        "class_names": [c["name"] for c in classes], "classes": classes,
        "label_type": "multi" if multi else "single", "image_size": size, "per_class": dict(bench["per_class"]),
        "splits": splits, "vocab": {"file": VOCAB_FILE, "sha256": hash_file(out / VOCAB_FILE)["sha256"], "size": len(words)},
        "text": {"max_text_len": bench["max_text_len"], **{s: text_stats[s] for s in embedded.SPLITS}},
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Stage ``prepare``."""
    bench = params["benchmark"]
    if bench["name"] != "embedded":
        raise ConfigError(f"key 'benchmark.name' is {bench['name']!r}: preparing real datasets is not available in "
                          "this version yet; only 'embedded' (generated, no download) can be prepared")
    embedded.check_num_classes(bench["num_classes"])
    with stage_run(stage, params, seed=bench["seed"], extra={"generator": embedded.GENERATOR_VERSION}) as sr:
        manifest = prepare_embedded(sr.tmp(stage.outs[0]), bench, benchmark_id(params))
        sr.extra["counts"] = {s: r["count"] for s, r in manifest["splits"].items()}
