"""The synthetic "hits" corpus of the ablation (issue 12): a ball of one material bounces on a
floor, and every time it strikes, that material's recorded sound starts at that exact instant.

Timing is the link the ablation measures: impacts sit on frame boundaries (t = k / fps), the
ball touches the floor (and squashes) on exactly those frames, and the sound's first sample is
at round(t * sample_rate). The material is a second, semantic link: it decides both the sound
(a recorded one-shot, from the folder passed as ``media``) and the ball's colour, and it is named in the
caption. Clips have 0 to ``max_hits`` impacts at random times, at least ``min_gap`` seconds apart,
with a random position, size, background and loudness.

Pure functions of (seed, index): the same corpus on every machine. Written as ordinary mp4
(H.264 + AAC, svgen.media.mp4) with the ground truth in ``impacts.json``. The video is coded
lossless, so the pixels the data prep decodes are the same on every run too: x264's lossy coding
is not bit-reproducible, and one level's difference in one frame is enough to send training,
and with it a seed's result, down another path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SOUNDS_HELP = ("a folder holding the one-shot recordings elec_wood.flac, drum_cowbell.flac, drum_tom_lo_hard.flac "
               "and drum_snare_hard.flac (CC0, from Debian's sonic-pi-samples: apt-get install sonic-pi-samples, "
               "then /usr/share/sonic-pi/samples)")


@dataclass(frozen=True)
class Material:
    sound: str
    """One-shot recording in the sounds folder (see SOUNDS_HELP)."""
    colour: tuple[int, int, int]
    caption: str


MATERIALS = {
    "wood": Material("elec_wood.flac", (170, 110, 50), "a wooden ball bounces on the floor"),
    "metal": Material("drum_cowbell.flac", (200, 200, 215), "a metal ball bounces on the floor"),
    "drum": Material("drum_tom_lo_hard.flac", (220, 50, 50), "a red ball bounces on a drum"),
    "snare": Material("drum_snare_hard.flac", (60, 100, 230), "a blue ball bounces on a snare drum"),
}


@dataclass(frozen=True)
class Spec:
    """What every clip of a corpus shares."""

    seconds: float = 4.0
    fps: int = 8
    size: int = 64
    sample_rate: int = 16000
    max_hits: int = 4
    min_gap: float = 0.5
    """Seconds between impacts at least (room for a visible bounce)."""

    @property
    def frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))


@dataclass
class HitsClip:
    frames: np.ndarray
    """(F, H, W, 3) uint8."""
    wave: np.ndarray
    """(N,) float32 mono in [-1, 1]."""
    material: str
    caption: str
    impacts: list[float]
    """Seconds of each impact (frame boundaries)."""


VIDEO_CODING = "h264 lossless (qp 0)"
"""How the clips' video is coded; part of a split's identity (impacts.json), so a corpus coded
otherwise (the lossy crf 18 of blocks 0-3 of the 2026-12 run) is rewritten, not reused, and saved
blocks from it are not merged with this one's."""

_SOUNDS: dict[tuple[str, int], np.ndarray] = {}


def load_sound(material: str, sample_rate: int, media: Path) -> np.ndarray:
    """The material's one-shot, mono at ``sample_rate``, peak-normalised to 1."""
    key = (material, sample_rate)
    if key not in _SOUNDS:
        import librosa

        path = media / MATERIALS[material].sound
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: --media must be {SOUNDS_HELP}")
        wave, _ = librosa.load(str(path), sr=sample_rate, mono=True)
        start = int(np.argmax(np.abs(wave) > 0.05 * np.abs(wave).max()))  # trim leading silence: onset = impact
        wave = wave[start:]
        _SOUNDS[key] = (wave / np.abs(wave).max()).astype(np.float32)
    return _SOUNDS[key]


def impact_frames(rng: np.random.Generator, spec: Spec) -> list[int]:
    """0..max_hits frame indices, at least min_gap apart, none on the first two frames (the ball
    falls into view first)."""
    n = int(rng.integers(0, spec.max_hits + 1))
    gap = max(1, int(np.ceil(spec.min_gap * spec.fps)))
    chosen: list[int] = []
    for candidate in rng.permutation(np.arange(2, spec.frames)):
        if len(chosen) == n:
            break
        if all(abs(int(candidate) - c) >= gap for c in chosen):
            chosen.append(int(candidate))
    return sorted(chosen)


def heights(frames: list[int], spec: Spec, top: float, rng: np.random.Generator) -> np.ndarray:
    """Height of the ball's bottom above the floor per frame: a fall onto the first impact,
    parabolic arcs between impacts, at rest after the last; 0 exactly on impact frames."""
    t = np.arange(spec.frames, dtype=np.float64)
    h = np.zeros(spec.frames)
    if not frames:
        return np.full(spec.frames, top if rng.random() < 0.5 else 0.0)  # held up or lying still: no hit
    first = frames[0]
    h[:first] = top * (1 - (t[:first] / first) ** 2)
    for a, b in zip(frames[:-1], frames[1:]):
        apex = top * min(1.0, (b - a) / (spec.fps * 1.0))
        seg = t[a:b]
        h[a:b] = 4 * apex * (seg - a) * (b - seg) / (b - a) ** 2
    return h


def make_clip(seed: int, index: int, spec: Spec, media: Path) -> HitsClip:
    rng = np.random.default_rng([seed, index])
    material = list(MATERIALS)[int(rng.integers(len(MATERIALS)))]
    m = MATERIALS[material]
    s = spec.size
    floor = s - max(3, s // 8)                       # first floor row
    radius = float(rng.uniform(0.06, 0.1) * s)
    x = float(rng.uniform(radius + 2, s - radius - 2))
    frames_at = impact_frames(rng, spec)
    top = floor - 2 * radius - 2.0
    h = heights(frames_at, spec, top, rng)
    background = rng.integers(10, 50, size=3)
    colour = np.clip(np.array(m.colour) + rng.integers(-20, 21, size=3), 0, 255)

    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    video = np.empty((spec.frames, s, s, 3), np.uint8)
    for f in range(spec.frames):
        img = np.broadcast_to(background, (s, s, 3)).astype(np.float64).copy()
        img[floor:] = (110, 110, 110)
        squash = 1.35 if f in frames_at else 1.0     # the strike is visible at 8 fps
        rx, ry = radius * squash, radius / squash
        cy = floor - ry - h[f]
        dist = np.sqrt(((xx - x) / rx) ** 2 + ((yy - cy) / ry) ** 2) * radius  # ~pixels from the centre
        inside = np.clip(radius + 0.5 - dist, 0, 1)[..., None]                    # anti-aliased edge
        img = img * (1 - inside) + colour * inside
        video[f] = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)

    wave = rng.normal(0, 0.002, spec.samples).astype(np.float32)
    sound = load_sound(material, spec.sample_rate, media)
    for f in frames_at:
        start = int(round(f / spec.fps * spec.sample_rate))
        seg = sound[: spec.samples - start] * float(rng.uniform(0.5, 0.9))
        wave[start:start + len(seg)] += seg
    return HitsClip(video, np.clip(wave, -1, 1), material, m.caption, [f / spec.fps for f in frames_at])


def write_split(out: Path, n: int, seed: int, spec: Spec, media: Path, progress: bool = True) -> Path:
    """``n`` clips as out/clips/NNNNN.mp4, out/list.csv (path,caption) for data_prep and the ground
    truth out/impacts.json, written last: a split whose impacts.json matches (n, seed, spec) is
    complete and is left as it is; an interrupted one is finished (clips already there are kept,
    unless they were written for another design: clips.json says which)."""
    from svgen.fileio import write_json, write_text
    from svgen.media.mp4 import write_mp4

    truth_file = out / "impacts.json"
    want = {"n": n, "seed": seed, "spec": asdict(spec), "video": VIDEO_CODING}
    if truth_file.is_file():
        done = json.loads(truth_file.read_text())
        if {k: done.get(k) for k in want} == want:
            return truth_file
    clips = out / "clips"
    design = out / "clips.json"  # what the clips there were written for, written before them
    if clips.is_dir() and (not design.is_file() or json.loads(design.read_text()) != want):
        shutil.rmtree(clips)  # another design's (or an unknown one's) clips: rewritten, not mixed in
    clips.mkdir(parents=True, exist_ok=True)
    write_json(design, want, indent=1)
    truth, rows = {}, ["path,caption"]
    from tqdm import tqdm

    for i in tqdm(range(n), desc=f"hits {out.name}", disable=not progress, unit="clip"):
        name = f"{i:05d}.mp4"
        clip = make_clip(seed, i, spec, media)
        if not (clips / name).is_file():
            write_mp4(clips / name, clip.frames, fps=spec.fps, wave=clip.wave, sample_rate=spec.sample_rate, lossless=True)
        truth[name] = {"material": clip.material, "caption": clip.caption, "impacts": clip.impacts}
        rows.append(f"clips/{name},{clip.caption}")
    write_text(out / "list.csv", "\n".join(rows) + "\n")
    write_json(truth_file, {**want, "clips": truth}, indent=1)
    return truth_file
