"""Parameter counts of the joint model, per module group, without weights or memory.

    python -m svgen.models.count --config configs/greatesthits.yaml
    python -m svgen.models.count --config configs/greatesthits.yaml --set model.train_motion_modules=false

The bases are built on the meta device from their checkpoints' config.json where those exist,
else from the architectures the config names (model.audio.architecture, model.video.architecture,
see svgen/models/architectures.py), so the paper's model is counted on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from svgen.config import Config, ConfigError, load_config
from svgen.models.architectures import audio_unet_kwargs, video_kwargs
from svgen.models.bases import AudioBase, VideoBase
from svgen.models.joint import JointModel


def _config_json(path: Path) -> dict | None:
    f = path / "config.json"
    return {k: v for k, v in json.loads(f.read_text()).items() if not k.startswith("_")} if f.is_file() else None


def meta_joint_model(cfg: Config) -> tuple[JointModel, dict[str, str]]:
    """The joint model over meta-device bases; also says where each base's shape came from."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    m = cfg.model
    audio_kw = _config_json(Path(m.audio.path) / "unet")
    video_kw, adapter_kw = _config_json(Path(m.video.path) / "unet"), _config_json(Path(m.video.motion_adapter_path))
    source = {"audio": str(Path(m.audio.path) / "unet") if audio_kw else f"architecture {m.audio.architecture}",
              "video": str(Path(m.video.path) / "unet") if video_kw and adapter_kw else f"architecture {m.video.architecture}"}
    if audio_kw is None:
        audio_kw = audio_unet_kwargs(m.audio.architecture)
    if video_kw is None or adapter_kw is None:
        video_kw, adapter_kw = video_kwargs(m.video.architecture)
    with torch.device("meta"):
        audio_unet = UNet2DConditionModel.from_config(audio_kw)
        video_unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_config(video_kw),
                                                 MotionAdapter.from_config(adapter_kw), load_weights=False)
        audio = AudioBase(unet=audio_unet, vae=None, vocoder=None, text_encoder=None, tokenizer=None)
        video = VideoBase(unet=video_unet, vae=None, text_encoder=None, tokenizer=None)
        model = JointModel(audio, video, m, fps=cfg.data.fps, seconds=cfg.data.seconds)
    return model, source


@dataclass
class Row:
    group: str
    trainable: int
    frozen: int


def _n(params) -> int:
    return sum(p.numel() for p in params)


def count(model: JointModel) -> list[Row]:
    """Trainable and frozen parameters per module group, then the totals."""
    motion = [p for n, p in model.video_unet.named_parameters() if "motion_modules" in n]
    motion_trained = model.cfg.train_motion_modules
    rows = [Row("audio environment encoder", _n(model.encoder_a.parameters()), 0),
            Row("video environment encoder", _n(model.encoder_v.parameters()), 0)]
    for key, block in model.blocks_a.items():
        rows.append(Row(f"audio {model.cfg.cmcpe.mode} block {key} (C={block.proj_in.in_features})",
                        _n(block.parameters()), 0))
    for key, block in model.blocks_v.items():
        rows.append(Row(f"video {model.cfg.cmcpe.mode} block {key} (C={block.proj_in.in_features})",
                        _n(block.parameters()), 0))
    rows.append(Row("video motion modules", _n(motion) if motion_trained else 0, 0 if motion_trained else _n(motion)))
    motion_ids = {id(p) for p in motion}
    rows.append(Row("audio UNet (frozen)", 0, _n(model.audio_unet.parameters())))
    rows.append(Row("video spatial UNet (frozen)", 0, _n(p for p in model.video_unet.parameters() if id(p) not in motion_ids)))
    rows.append(Row("total", sum(r.trainable for r in rows), sum(r.frozen for r in rows)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, source = meta_joint_model(cfg)
    rows = count(model)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1))
        return 0
    print(f"{args.config}: audio base from {source['audio']}, video base from {source['video']} (meta device)")
    width = max(len(r.group) for r in rows)
    print(f"{'group':<{width}}  {'trainable':>13}  {'frozen':>13}")
    for r in rows:
        if r.group == "total":
            print("-" * (width + 30))
        print(f"{r.group:<{width}}  {r.trainable:>13,}  {r.frozen:>13,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
