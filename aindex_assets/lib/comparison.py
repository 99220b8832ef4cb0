"""Index comparison: which FAISS index benefits from activation, as in the paper's table.

One batch of images is evaluated for several factory strings side by side. For each factory:
train the index on the training descriptors, fill a database with the distractors, activate the
batch's images FOR THAT INDEX (the target is that index's own code, so activation depends on
it), add the batch's original descriptors, then edit, embed and search the passive originals
and the activated releases (`lib.evaluation.evaluate_robustness`). The result holds per factory
the recall@1 averages passive vs active, the per-edit rows, the PSNR of the releases and what
training, activation and evaluation cost.

Every factory is checked before any work starts: one that cannot be built, or trained with the
available vectors, is refused with the reason, so an hour of activation is never spent on a
list whose last entry was going to fail. Passive queries do not depend on the index: their
descriptors are computed once and reused for every factory.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.edits import PAPER_EDITS, Edit
from aindex_assets.lib.evaluation import Embed, RobustnessResult, evaluate_robustness
from aindex_assets.lib.extractors import Extractor

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvaluationSettings:
    """How the edited copies are searched: depth k, probed IVF lists, seed of the random edits."""

    k: int = 10
    nprobe: int = 1
    seed: int = 0
    metric: str = "l2"


@dataclass
class FactoryResult:
    """One factory's evaluation: robustness rows, release quality and costs (seconds)."""

    factory: str
    code_bytes: int
    n_train: int
    ntotal: int
    robustness: RobustnessResult
    psnr: list[float]
    train_seconds: float
    activation_seconds: float
    evaluation_seconds: float
    warnings: list[str] = field(default_factory=list)

    def recall_at_1(self, variant: str) -> float:
        return self.robustness.average(variant)["recall_at_1"]

    @property
    def gain(self) -> float:
        return self.recall_at_1("active") - self.recall_at_1("passive")

    @property
    def unchanged(self) -> int:
        """Releases identical to their original (infinite PSNR): activation had nothing to do."""
        return sum(1 for p in self.psnr if math.isinf(p))

    def psnr_summary(self) -> dict[str, float | None]:
        """Mean/min/std over the changed releases (None when every release is unchanged)."""
        finite = [p for p in self.psnr if math.isfinite(p)]
        if not finite:
            return {"mean": None, "min": None, "std": None}
        return {
            "mean": float(np.mean(finite)),
            "min": float(np.min(finite)),
            "std": float(np.std(finite)),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "code_bytes": self.code_bytes,
            "n_train": self.n_train,
            "ntotal": self.ntotal,
            "recall_at_1": {v: self.recall_at_1(v) for v in self.robustness.variants},
            "gain": self.gain,
            "psnr": self.psnr_summary(),
            "unchanged": self.unchanged,
            "seconds": {
                "train": self.train_seconds,
                "activation": self.activation_seconds,
                "evaluation": self.evaluation_seconds,
            },
            "warnings": self.warnings,
            "robustness": self.robustness.to_dict(),
        }


@dataclass
class ComparisonResult:
    """Every factory's result, in the order asked, and what they were evaluated with."""

    factories: list[FactoryResult]
    edits: list[str]
    n_images: int
    n_distractors: int
    settings: EvaluationSettings
    params: ActivationParams

    def factory(self, name: str) -> FactoryResult:
        for result in self.factories:
            if result.factory == name:
                return result
        raise KeyError(f"no result for factory {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities become null)."""
        return _finite(
            {
                "schema_version": SCHEMA_VERSION,
                "edits": self.edits,
                "n_images": self.n_images,
                "n_distractors": self.n_distractors,
                "evaluation": vars(self.settings),
                "activation": self.params.to_dict(),
                "factories": [f.to_dict() for f in self.factories],
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    def to_markdown(self) -> str:
        """The summary: factory | passive R@1 | active R@1 | gain | PSNR, plus size and costs."""
        lines = [
            "| factory | bytes/vector | passive R@1 | active R@1 | gain | PSNR (dB) | "
            "train (s) | activation (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in self.factories:
            lines.append(
                f"| `{f.factory}` | {f.code_bytes} | {f.recall_at_1('passive'):.3f} | "
                f"{f.recall_at_1('active'):.3f} | {f.gain:+.3f} | {_psnr_cell(f)} | "
                f"{f.train_seconds:.1f} | {f.activation_seconds:.1f} |"
            )
        return "\n".join(lines)

    def per_edit_markdown(self) -> str:
        """recall@1 passive -> active, one line per factory and one column per edit."""
        lines = [
            "| factory | " + " | ".join(self.edits) + " | avg |",
            "|---|" + "---|" * (len(self.edits) + 1),
        ]
        for f in self.factories:
            cells = [
                _arrow(f.robustness.row(e, "passive"), f.robustness.row(e, "active"))
                for e in self.edits
            ]
            average = f"{f.recall_at_1('passive'):.2f} -> {f.recall_at_1('active'):.2f}"
            lines.append(f"| `{f.factory}` | " + " | ".join([*cells, average]) + " |")
        return "\n".join(lines)


def _arrow(passive: Mapping[str, Any], active: Mapping[str, Any]) -> str:
    return f"{passive['recall_at_1']:.2f} -> {active['recall_at_1']:.2f}"


def _psnr_cell(result: FactoryResult) -> str:
    summary = result.psnr_summary()
    if summary["mean"] is None:
        return "unchanged"
    cell = f"{summary['mean']:.1f} (min {summary['min']:.1f})"
    return cell + (f", {result.unchanged} unchanged" if result.unchanged else "")


def _finite(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def ivf_lists(n_train: int, cap: int = 4096) -> int:
    """The largest power of two with the recommended 39 training points per inverted list."""
    affordable = max(1, n_train // faiss_index.RECOMMENDED_POINTS_PER_CENTROID)
    return min(cap, 1 << (affordable.bit_length() - 1))


def default_factories(n_train: int, served: str | None = None) -> list[str]:
    """The served factory (if any) and the paper's families, sized to the training data.

    IVF-PQ and OPQ-IVF-PQ with as many lists as the training vectors afford, PCA to 64
    dimensions then 64-bit LSH (8-byte codes, as PQ8x8), and exact search as the control.
    OPQ also reduces to 64 dimensions: a full-dimension OPQ rotation of a 1280-d descriptor
    takes minutes to train on a CPU.
    """
    n = ivf_lists(n_train)
    families = [f"IVF{n},PQ8x8", f"OPQ8_64,IVF{n},PQ8x8", "PCA64,LSH", "Flat"]
    return list(dict.fromkeys([served, *families] if served else families))


def check_factories(factories: Sequence[str], n_train: int, dim: int, metric: str = "l2") -> None:
    """Refuse, before any work, every factory that cannot be built or trained here."""
    if not factories:
        raise faiss_index.IndexSpecError("no factory to compare")
    duplicated = sorted({f for f in factories if list(factories).count(f) > 1})
    problems = [f"{f!r} is listed twice" for f in duplicated]
    for factory in dict.fromkeys(factories):
        problem = factory_problem(factory, n_train, dim, metric)
        if problem:
            problems.append(problem)
    if problems:
        raise faiss_index.IndexSpecError("cannot compare these indexes: " + "; ".join(problems))


def factory_problem(factory: str, n_train: int, dim: int, metric: str = "l2") -> str | None:
    """Why `factory` cannot be trained on `n_train` vectors of dimension `dim` (None: it can)."""
    if metric not in faiss_index.METRICS:
        return f"unknown metric {metric!r}"
    try:
        index = faiss.index_factory(dim, factory, faiss_index.METRICS[metric])
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "invalid"
        return f"{factory!r} is not a valid factory string for dimension {dim} ({reason})"
    minimum, _, reasons = faiss_index.training_requirements(index)
    if n_train < minimum:
        return (
            f"{factory!r} cannot be trained with the {n_train} available training vectors: "
            f"it needs at least {minimum} ({'; '.join(reasons)})"
        )
    return None


class CachedEmbed:
    """An `Embed` that remembers descriptors by pixel content.

    The passive queries (edited originals) are the same images for every factory, so they
    are embedded once; activated releases differ per factory and miss the cache.
    """

    def __init__(self, embed: Embed) -> None:
        self._embed = embed
        self._cache: dict[bytes, np.ndarray] = {}
        self.hits = 0

    @staticmethod
    def _key(image: Image.Image) -> bytes:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(f"{image.mode}{image.size}".encode())
        return digest.digest()

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        keys = [self._key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        self.hits += len(images) - len(missing)
        if missing:
            vectors = np.asarray(self._embed([images[i] for i in missing]), dtype=np.float32)
            for i, vector in zip(missing, vectors, strict=True):
                self._cache[keys[i]] = vector
        return np.stack([self._cache[key] for key in keys])


def compare_indexes(
    originals: Sequence[Image.Image],
    features: np.ndarray,
    ids: Sequence[int],
    training: np.ndarray,
    distractors: np.ndarray,
    distractor_ids: np.ndarray,
    extractor: Extractor,
    factories: Sequence[str],
    params: ActivationParams | None = None,
    edits: Mapping[str, Edit] = PAPER_EDITS,
    settings: EvaluationSettings | None = None,
) -> ComparisonResult:
    """Evaluate the same batch for every factory (see the module docstring).

    `features`: the originals' descriptors (what every index stores for them); `ids`: their
    ids, disjoint from `distractor_ids`. Raises `IndexSpecError` before any work when a
    factory cannot be built or trained with `training`.
    """
    params = params or ActivationParams()
    settings = settings or EvaluationSettings()
    x = faiss_index.as_matrix(training, extractor.dim, "training vectors")
    y = faiss_index.as_matrix(features, extractor.dim, "batch descriptors")
    crowd = faiss_index.as_matrix(distractors, extractor.dim, "distractors")
    check_batch(originals, y, ids, distractor_ids, len(crowd))
    check_factories(factories, len(x), extractor.dim, settings.metric)
    embed = CachedEmbed(extractor.embed_images)
    results = [
        evaluate_factory(
            factory,
            (x, crowd, np.asarray(distractor_ids, np.int64)),
            (list(originals), y, np.asarray(ids, np.int64)),
            extractor,
            embed,
            params,
            edits,
            settings,
        )
        for factory in factories
    ]
    return ComparisonResult(results, list(edits), len(y), len(crowd), settings, params)


def check_batch(
    originals: Sequence[Image.Image],
    features: np.ndarray,
    ids: Sequence[int],
    distractor_ids: np.ndarray,
    n_distractors: int,
) -> None:
    if not len(originals):
        raise ValueError("nothing to compare: the batch has no images")
    if not len(originals) == len(features) == len(ids):
        raise ValueError(f"{len(originals)} images, {len(features)} descriptors, {len(ids)} ids")
    if len(distractor_ids) != n_distractors:
        raise ValueError(f"{n_distractors} distractors but {len(distractor_ids)} distractor ids")
    if set(np.asarray(ids).tolist()) & set(np.asarray(distractor_ids).tolist()):
        raise ValueError("batch ids and distractor ids overlap")


def evaluate_factory(
    factory: str,
    corpus: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch: tuple[list[Image.Image], np.ndarray, np.ndarray],
    extractor: Extractor,
    embed: Embed,
    params: ActivationParams,
    edits: Mapping[str, Edit],
    settings: EvaluationSettings,
) -> FactoryResult:
    """Train, fill, activate for this index, index the originals, evaluate passive vs active."""
    training, distractors, distractor_ids = corpus
    originals, features, ids = batch
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = faiss_index.train_index(factory, training, metric=settings.metric)
    train_seconds = time.perf_counter() - start
    database = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(database, distractors, distractor_ids)
    start = time.perf_counter()
    # Activation depends on the index: its targets are this index's codes, its competitors
    # the distractors' codes in this index.
    released = activate(originals, extractor, trained, params, features, database=database)
    activation_seconds = time.perf_counter() - start
    served = faiss.clone_index(database)
    faiss_index.add_with_ids(served, features, ids)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_index.search(served, queries, k=k, nprobe=settings.nprobe)

    start = time.perf_counter()
    robustness = evaluate_robustness(
        originals,
        [Image.fromarray(r.image) for r in released],
        ids.tolist(),
        embed,
        search,
        edits,
        k=settings.k,
        seed=settings.seed,
    )
    return FactoryResult(
        factory=factory,
        code_bytes=code_bytes(trained),
        n_train=len(training),
        ntotal=served.ntotal,
        robustness=robustness,
        psnr=[r.psnr for r in released],
        train_seconds=train_seconds,
        activation_seconds=activation_seconds,
        evaluation_seconds=time.perf_counter() - start,
        warnings=sorted({str(w.message) for w in caught}),
    )


def code_bytes(index: faiss.Index) -> int:
    """Bytes of one stored code (ids aside; an inverted list stores no coarse code)."""
    ivf = faiss_index.ivf_of(index)
    return int(ivf.code_size if ivf is not None else faiss_index.unwrap(index).sa_code_size())
