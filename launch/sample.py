"""Generate sounding videos (mp4, H.264 + AAC) from exported trained weights and the base models.

    python launch/sample.py --weights runs/demo/train/export/trained_ema.safetensors --prompt "a drum hit" --num 4
    python launch/sample.py --weights W --mode v2a --input clip.mp4     # video-to-audio: keep the video
    python launch/sample.py --weights W --mode a2v --input clip.mp4     # audio-to-video: keep the audio
    python launch/sample.py --weights W --mode continue --input clip.mp4 --prefix 0.5

The config stored in the weights' metadata is used unless --config is given; --set overrides
either. Conditional modes hold the given modality at its clean latent, re-noised to the current
timestep at every step (the reference code's replacement approach).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from launch._cli import add_config_args, config_from  # noqa: E402


# Sampling flags and the config keys they set (as --set would, so the config validates them).
FLAG_KEYS = {"steps": "sample.steps", "guidance_audio": "sample.guidance_audio",
             "guidance_video": "sample.guidance_video", "negative_prompt": "sample.negative_prompt",
             "gamma": "sample.gamma"}


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The given sampling flags as dotted overrides (strings JSON-quoted: a YAML scalar as typed)."""
    return [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items()
            if getattr(args, flag) is not None]


def load_input_clip(path: str, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The first window of a source video, decoded exactly as data prep decodes it."""
    from data_prep.decode import DecodeError, decode_first_clip

    try:
        clip = decode_first_clip(path, cfg.data, cfg.prep)
    except DecodeError as e:
        raise SystemExit(f"error: cannot use --input {e}") from None
    return torch.from_numpy(clip.frames)[None], torch.from_numpy(clip.wave)[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="exported trained weights (.safetensors)")
    add_config_args(ap, from_weights=True)
    ap.add_argument("--prompt", action="append", default=[], help="prompt, repeatable (default: sample.prompt)")
    ap.add_argument("--unconditional", action="store_true", help="empty prompts")
    ap.add_argument("--num", type=int, default=1, help="videos per prompt")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None, help="first seed (default sample.seed); video i uses seed+i")
    ap.add_argument("--steps", type=int, help="DDIM steps (sample.steps)")
    ap.add_argument("--guidance-audio", type=float, help="audio CFG scale (sample.guidance_audio)")
    ap.add_argument("--guidance-video", type=float, help="video CFG scale (sample.guidance_video)")
    ap.add_argument("--negative-prompt", help="negative prompt (sample.negative_prompt)")
    ap.add_argument("--gamma", type=float, help="timestep adjustment gamma (sample.gamma; 1 = off)")
    ap.add_argument("--mode", choices=["joint", "v2a", "a2v", "continue"], default="joint")
    ap.add_argument("--input", help="source clip for v2a / a2v / continue")
    ap.add_argument("--prefix", type=float, default=0.5, help="fraction of the clip kept by --mode continue")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="runs/samples", help="output folder")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error(f"--num must be >= 1 (videos per prompt), got {args.num}")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 < args.prefix < 1.0:
        ap.error(f"--prefix must be a fraction of the clip in (0, 1), got {args.prefix}")
    cfg = config_from(args, extra=flag_overrides(args))
    if cfg is None:
        return 2
    s = cfg.sample
    if args.mode != "joint" and not args.input:
        ap.error(f"--mode {args.mode} needs --input")

    from svgen.generate import generate, save_sounding_videos
    from svgen.models.codec import encode_audio, encode_video
    from svgen.system import Given, build_system
    from svgen.models.weights import WeightsError, load_trained_weights

    system = build_system(cfg)
    try:
        load_trained_weights(system.model, args.weights)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    system.to(dev)
    prompts = [""] if args.unconditional else (args.prompt or [s.prompt])
    jobs = [(p, i) for p in prompts for i in range(args.num)]
    given_a = given_v = None
    if args.mode != "joint":
        frames, wave = load_input_clip(args.input, cfg)
        za, zv = encode_audio(system.audio, wave.to(dev), cfg.data), encode_video(system.video, frames.to(dev))
        if args.mode == "v2a":
            given_v = Given.whole(zv)
        elif args.mode == "a2v":
            given_a = Given.whole(za)
        else:
            given_a, given_v = Given.prefix(za, args.prefix), Given.prefix(zv, args.prefix)
    seed0 = s.seed if args.seed is None else args.seed
    out, written = Path(args.out), []
    for start in tqdm(range(0, len(jobs), args.batch_size), desc="batches"):
        chunk = jobs[start:start + args.batch_size]
        # One seed per video: a video is the same whatever the batch size it was made in.
        frames, wave = generate(system, [p for p, _ in chunk], cfg.data, s,
                                seed=[seed0 + start + k for k in range(len(chunk))], progress=False,
                                given_a=given_a, given_v=given_v)
        written += save_sounding_videos(out, frames, wave, cfg.data, stem=f"{args.mode}_{start:05d}")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
