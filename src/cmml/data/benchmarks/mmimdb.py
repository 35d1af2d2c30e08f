"""MM-IMDb: film posters and plots, 23 genres multi-hot (F1-macro), read from three layouts.

``benchmark.layout``:

- ``raw``: ``<root>/images/<id>.jpeg``, ``<root>/labels/<id>.json`` (``plot``: list of strings,
  ``genres``: list of names) and ``<root>/split.json`` (``train``/``dev``/``test`` id lists; dev is val);
  images and labels may also sit together in ``<root>/dataset/``, as the archive ships them. When
  ``<root>`` is absent, ``mmimdb.tar.gz`` beside it is verified (sha256 recorded on first use) or
  downloaded (resumable; archive.org mirror, then the original host) and extracted
  (:mod:`cmml.data.acquire`);
- ``arrow``: MAP's ``<root>/mmimdb_{train,dev,test}.arrow`` (columns ``image``, ``plots``, ``label``,
  ``genres``, ``image_id``, ``split``);
- ``cmml_manifest``: RebQ's MM-IMDB-CMML JSON (``benchmark.manifest``, images under ``<root>/images``).

Genres follow MAP's order (by frequency); ``benchmark.num_genres`` keeps the first N (RebQ: 20, the
three rarest dropped; MAP: 23). A film's primary genre is its first kept genre in that order; a
film with none of them is a bad sample. ``benchmark.plots``: ``each`` (MAP: one sample per plot)
or ``joined`` (RebQ: the plots joined with ". "). ``benchmark.missing_unit``: ``movie`` (all plots
of a film share one missing code) or ``plot`` (one code per plot row: MAP's drift, kept as a
compatibility switch). Task policy: genres in MAP's order, cut into ``tasks.num_tasks`` contiguous
tasks (20 genres, 5 tasks: 4 each); a film belongs to the task of its primary genre and keeps its
whole multi-hot vector. The manifest layout takes the tasks from the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmml.data.acquire import ensure_archive
from cmml.data.benchmarks.base import Benchmark, RawFile
from cmml.data.benchmarks.realdata import (
    Record,
    arrow_rows,
    check_common,
    check_keys,
    convert,
    read_arrow,
    read_cmml_manifest,
    read_json_file,
    split_of,
)
from cmml.errors import ConfigError, DataError

GENRES = ("Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
          "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical",
          "Western", "Sport", "Short", "Film-Noir")
URL = "https://archive.org/download/mmimdb/mmimdb.tar.gz"  # the archive.org mirror
ORIGINAL_URL = "http://lisi1.unal.edu.co/mmimdb/mmimdb.tar.gz"  # the gmu-mmimdb project's own host
ARROW_SPLITS = ("train", "dev", "test")


def first_existing(path: Path, alternative: Path) -> Path:
    """``path`` (MAP's layout), or ``alternative`` (the archive's own ``dataset/`` folder) when only that exists."""
    return alternative if not path.exists() and alternative.exists() else path


def film_records(split: str, source: str, film: str, image: Path | bytes, plots: list[str], genres: list[str],
                 bench: dict[str, Any]) -> Iterator[Record]:
    """The samples of one film: its kept genres (primary first) and its plots, each or joined."""
    kept = [GENRES.index(g) for g in GENRES[:bench["num_genres"]] if g in genres]
    labels = tuple(kept)
    group = film if bench["missing_unit"] == "movie" else None
    if bench["plots"] == "joined" or not plots:
        yield Record(split, source, image, ". ".join(plots) if plots else None, labels, film, group)
        return
    for k, plot in enumerate(plots):
        yield Record(split, f"{source} plot {k}", image, plot, labels, f"{film}#{k}", group)


class MMIMDb(Benchmark):
    """MM-IMDb; see the module docstring."""

    NAME = "mmimdb"
    TASK_POLICY = ("genres in MAP's frequency order, first benchmark.num_genres kept, cut into tasks.num_tasks "
                   "contiguous tasks; a film in the task of its first kept genre")

    def validate(self, bench: dict[str, Any], where: str) -> None:
        """layout, root, num_genres, plots, missing_unit (+ manifest for the manifest layout)."""
        check_common(bench, where)
        check_keys(bench, where, {"root": str, "num_genres": int},
                   {"layout": ("raw", "arrow", "cmml_manifest"), "plots": ("each", "joined"),
                    "missing_unit": ("movie", "plot")})
        if not 1 <= bench["num_genres"] <= len(GENRES):
            raise ConfigError(f"{where}: key 'benchmark.num_genres' must lie in [1, {len(GENRES)}], got {bench['num_genres']}")
        if bench["layout"] == "cmml_manifest":
            check_keys(bench, where, {"manifest": str})

    def label_type(self, bench: dict[str, Any]) -> str:
        """Multi-hot genres."""
        return "multi"

    def raw_files(self, bench: dict[str, Any]) -> list[RawFile]:
        """The dataset folder; the raw layout comes from the gmu-mmimdb archive (archive.org mirror)."""
        if bench["layout"] == "raw":
            return [RawFile(bench["root"], None, URL)]
        if bench["layout"] == "arrow":
            return [RawFile(bench["root"], None, "MAP's write_mmimdb over the raw layout (mmimdb_{train,dev,test}.arrow)")]
        return [RawFile(bench["manifest"], None, "RebQ's data/MM-IMDB-CMML/MM-IMDB-CMML.json"),
                RawFile(str(Path(bench["root"]) / "images"), None, URL)]

    def prepare(self, out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
        """Read the layout, convert, record the genre order and the task rule."""
        root = Path(bench["root"])
        if bench["layout"] == "cmml_manifest":
            man = read_cmml_manifest(Path(bench["manifest"]), root / "images")
            if man.label_type != "multi":
                raise DataError(f"{bench['manifest']}: MM-IMDb manifests hold multi-hot labels, found single-label ones")
            names = list(GENRES[:man.num_classes]) if man.num_classes <= len(GENRES) else man.class_names
            return convert(out, bench, bench_id, man.records, class_names=names, label_type="multi",
                           sources={"manifest": Path(bench["manifest"])}, layout="cmml_manifest",
                           task_policy={"rule": "the manifest's task_id", "class_order": man.class_order,
                                        "offsets": man.offsets})
        if bench["layout"] == "raw":
            ensure_archive(root, root.with_name("mmimdb.tar.gz"), [URL, ORIGINAL_URL])
            sources = {"split.json": root / "split.json"}
            records = self._raw(root, bench)
        else:
            sources = {f"mmimdb_{s}.arrow": root / f"mmimdb_{s}.arrow" for s in ARROW_SPLITS}
            records = self._arrow(root, bench)
        names = list(GENRES[:bench["num_genres"]])
        return convert(out, bench, bench_id, records, class_names=names, label_type="multi", sources=sources,
                       layout=bench["layout"], grouped=bench["missing_unit"] == "movie" and bench["plots"] == "each",
                       task_policy={"rule": self.TASK_POLICY, "class_order": list(range(len(names)))},
                       extra={"plots": bench["plots"], "missing_unit": bench["missing_unit"]})

    @staticmethod
    def _raw(root: Path, bench: dict[str, Any]) -> Iterator[Record]:
        split_file = root / "split.json"
        splits = read_json_file(split_file, "MM-IMDb split file")
        if not isinstance(splits, dict) or not set(splits) <= {"train", "dev", "val", "test"}:
            raise DataError(f"{split_file}: expected an object with id lists under train, dev and test")
        for name, ids in splits.items():
            split = split_of(name, str(split_file))
            for film in ids:
                label_file = first_existing(root / "labels" / f"{film}.json", root / "dataset" / f"{film}.json")
                info = read_json_file(label_file, f"labels of film {film} (listed in {split_file} under {name!r})")
                if not isinstance(info, dict) or not isinstance(info.get("genres"), list):
                    raise DataError(f"{label_file}: expected an object with a 'genres' list")
                plots = info.get("plot") or []
                image = first_existing(root / "images" / f"{film}.jpeg", root / "dataset" / f"{film}.jpeg")
                yield from film_records(split, f"{split_file}: {name} id {film}", film, image, list(plots),
                                        info["genres"], bench)

    @staticmethod
    def _arrow(root: Path, bench: dict[str, Any]) -> Iterator[Record]:
        for name in ARROW_SPLITS:
            path = root / f"mmimdb_{name}.arrow"
            rows = arrow_rows(read_arrow(path), path, ("image", "plots", "genres", "image_id"))
            split = split_of(name, str(path))
            for n, (image, plots, genres, film) in enumerate(rows):
                yield from film_records(split, f"{path}: row {n} ({film})", str(film), image, list(plots or []),
                                        list(genres or []), bench)


BENCHMARK = MMIMDb()
