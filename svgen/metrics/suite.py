"""Score sets of sounding videos: AV-Align, DeSync (Synchformer) and the ImageBind score per clip, and
distances between
feature distributions of a generated and a reference set (FAD with VGGish, PANNs-FD, FVD and KVD
with I3D).

One code path serves launch/eval.py and the training loop's validation. Clips stream through the
feature networks in batches and only features are kept, so large sets need no memory for pixels.
Feature networks load from the local files that ``eval.*_path`` name, before any clip is decoded,
so a missing file fails at once with its config key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from svgen.config import EvalConfig
from svgen.metrics.av_align import av_align

RATE = 16000  # VGGish and the 16 kHz CNN14 both take 16 kHz audio
NEEDS_REFERENCE = ("fad_vggish", "fd_panns", "fvd", "kvd")
NETWORK = {"fad_vggish": "vggish", "fd_panns": "panns", "fvd": "i3d", "kvd": "i3d", "desync": "synchformer",
           "ib_score": "imagebind"}
PER_CLIP = ("av_align", "desync", "ib_score")   # one score a clip; the set's is their mean


@dataclass
class Clip:
    name: str
    frames: np.ndarray
    """(T, H, W, 3) uint8."""
    wave: np.ndarray
    """(N,) float32 at ``RATE``."""
    fps: float


class ClipSourceError(ValueError):
    """A clip source cannot be read; the message names it and says what is expected."""


def iter_clips(source: str | Path, limit: int = 0) -> Iterator[Clip]:
    """Clips of a folder of .mp4 files (sorted by name), or of data_prep shards (a folder of
    shard-*.tar, one .tar, or a list file), with audio at 16 kHz. ``limit``: at most this many."""
    src = Path(source)
    count = 0
    if src.is_dir() and any(src.glob("*.mp4")):
        from svgen.media.mp4 import read_mp4

        for path in sorted(src.glob("*.mp4")):
            if limit and count >= limit:
                return
            frames, wave, fps = read_mp4(path, RATE)
            count += 1
            yield Clip(path.stem, frames, wave.astype(np.float32), fps)
        return
    import torchaudio
    import webdataset as wds

    from svgen.data.source import ShardError, resolve_shards
    from svgen.shards import decode_sample

    try:
        urls = list(resolve_shards(src).urls)
    except ShardError as e:
        raise ClipSourceError(f"'{src}' is neither a folder of .mp4 files nor data_prep shards ({e})") from None
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        if limit and count >= limit:
            return
        s = decode_sample(sample)
        wave = torch.as_tensor(s["wave"], dtype=torch.float32)
        rate = int(s["meta"].get("sample_rate", RATE))
        if rate != RATE:
            wave = torchaudio.functional.resample(wave, rate, RATE)
        count += 1
        yield Clip(s["key"], s["frames"], wave.numpy(), float(s["meta"]["fps"]))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FeatureNets:
    """The feature networks the requested metrics need, loaded from their configured files."""

    def __init__(self, cfg: EvalConfig, metrics: Iterable[str], device: torch.device | None = None):
        self.device = device or resolve_device(cfg.device)
        self.fvd_frames = cfg.fvd_frames
        need = {NETWORK[m] for m in metrics if m in NETWORK}
        self.vggish = self.panns = self.i3d = self.synchformer = self.imagebind = None
        if "vggish" in need:
            from svgen.metrics.fad import load_vggish
            self.vggish = load_vggish(cfg.vggish_path).to(self.device)
        if "panns" in need:
            from svgen.metrics.panns import load_panns
            self.panns = load_panns(cfg.panns_path).to(self.device)
        if "i3d" in need:
            from svgen.metrics.i3d import load_i3d
            self.i3d = load_i3d(cfg.i3d_path).to(self.device)
        if "synchformer" in need:
            from svgen.metrics.synchformer import load_synchformer
            self.synchformer = load_synchformer(cfg.synchformer_path).to(self.device)
        if "imagebind" in need:
            from svgen.metrics.imagebind import load_imagebind
            self.imagebind = load_imagebind(cfg.imagebind_path).to(self.device)


def _run_batched(fn, items: list) -> list[np.ndarray]:
    """fn over a batch, or item by item where shapes differ (clips of unequal length)."""
    shapes = {np.shape(x) for x in items}
    return [fn(items)] if len(shapes) == 1 else [fn([x]) for x in items]


def extract(clips: Iterable[Clip], nets: FeatureNets, metrics: Iterable[str], *, batch_size: int = 8,
            desc: str = "clips", progress: bool = True) -> dict[str, np.ndarray]:
    """Per-clip AV-Align scores and feature arrays for ``metrics`` over a stream of clips."""
    from svgen.metrics.fad import vggish_embeddings
    from svgen.metrics.i3d import i3d_features
    from svgen.metrics.panns import panns_embeddings

    metrics = set(metrics)
    out: dict[str, list] = {"av_align": [], "vggish": [], "panns": [], "i3d": [], "desync": [], "ib_score": []}
    count = 0

    def flush(batch: list[Clip]) -> None:
        if nets.panns is not None:
            out["panns"] += _run_batched(lambda w: panns_embeddings(nets.panns, w), [c.wave for c in batch])
        if nets.i3d is not None:
            out["i3d"] += _run_batched(lambda f: i3d_features(nets.i3d, f, nets.fvd_frames), [c.frames for c in batch])

    batch: list[Clip] = []
    for clip in tqdm(clips, desc=desc, unit="clip", disable=not progress):
        count += 1
        if "av_align" in metrics:
            out["av_align"].append(av_align(clip.frames, clip.wave, clip.fps, RATE)["av_align"])
        if nets.vggish is not None:
            out["vggish"].append(vggish_embeddings(nets.vggish, clip.wave, RATE))
        if nets.synchformer is not None:
            from svgen.metrics.synchformer import desync

            out["desync"].append(desync(nets.synchformer, clip.frames, clip.wave, fps=clip.fps, rate=RATE))
        if nets.imagebind is not None:
            from svgen.metrics.imagebind import ib_score

            out["ib_score"].append(ib_score(nets.imagebind, clip.frames, clip.wave, fps=clip.fps, rate=RATE))
        batch.append(clip)
        if len(batch) >= batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    feats = {k: (np.concatenate(v) if k not in PER_CLIP else np.asarray(v, np.float64))
             for k, v in out.items() if v}
    feats["count"] = np.asarray(count)
    return feats


def distances(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray], metrics: Iterable[str]) -> dict[str, float]:
    from svgen.metrics.fad import frechet_distance, kernel_distance

    result = {}
    for m in metrics:
        if m not in NEEDS_REFERENCE:
            continue
        net = NETWORK[m]
        a, b = ref[net], gen[net]
        if len(a) < 2 or len(b) < 2:
            raise ValueError(f"{m} compares distributions: it needs >= 2 clips on each side, got "
                             f"{len(b)} generated and {len(a)} reference")
        result[m] = kernel_distance(a, b) if m == "kvd" else frechet_distance(a, b)
    return result


def evaluate(generated: Iterable[Clip], reference: Iterable[Clip] | None, cfg: EvalConfig, *,
             metrics: Iterable[str] | None = None, nets: FeatureNets | None = None,
             reference_features: dict[str, np.ndarray] | None = None,
             progress: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Scores of a generated set (and the reference's features, for reuse).

    Keys: num_generated, num_reference; av_align, desync and ib_score (means over the generated
    clips) with av_align_reference, desync_reference and ib_score_reference when a reference is
    given; and each requested distance
    (fad_vggish, fd_panns, fvd, kvd).
    ``reference_features``: features from an earlier call, to skip re-reading the reference.
    """
    metrics = list(cfg.metrics if metrics is None else metrics)
    wanted = [m for m in metrics if m in NEEDS_REFERENCE]
    if wanted and reference is None and reference_features is None:
        raise ValueError(f"{', '.join(wanted)} compare against real clips: set eval.reference (a folder of .mp4 "
                         "or data_prep shards) or drop them from eval.metrics")
    nets = nets or FeatureNets(cfg, metrics)
    gen = extract(generated, nets, metrics, batch_size=cfg.batch_size, desc="generated", progress=progress)
    if int(gen["count"]) == 0:
        raise ValueError("no generated clips to score")
    result: dict[str, float] = {"num_generated": int(gen["count"])}
    for m in PER_CLIP:
        if m in metrics:
            result[m] = float(gen[m].mean())
    ref = reference_features
    if ref is None and reference is not None:
        ref = extract(reference, nets, metrics, batch_size=cfg.batch_size, desc="reference", progress=progress)
    if ref is not None:
        result["num_reference"] = int(ref["count"])
        for m in PER_CLIP:
            if m in ref:
                result[f"{m}_reference"] = float(ref[m].mean())
        result.update(distances(gen, ref, metrics))
    return result, ref
