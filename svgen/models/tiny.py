"""Build tiny, randomly initialised base models and save them in the real checkpoint layout.

The classes are exactly those of AudioLDM (UNet2DConditionModel with a projected class embedding,
mel AutoencoderKL, SpeechT5HifiGan, ClapTextModelWithProjection, Roberta tokenizer) and of
AnimateDiff (SD UNet2DConditionModel + MotionAdapter, image AutoencoderKL, CLIPTextModel, CLIP
tokenizer), only narrower, so tests and the demo exercise the same loading path a real
checkpoint takes. Weights are random: outputs are noise, not sound or pictures.

    python -m svgen.models.tiny --out runs/tiny_bases
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from svgen.models.architectures import audio_unet_kwargs, video_kwargs

TOKEN_LENGTH = 16  # tiny tokenizers' model_max_length


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies use)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def _write_bpe_files(path: Path, vocab: dict[str, int]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per byte


def save_clip_tokenizer(path: Path) -> CLIPTokenizer:
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    tmp = path / "_src"
    _write_bpe_files(tmp, {t: i for i, t in enumerate(tokens)})
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=TOKEN_LENGTH,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(path)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return tok


def save_roberta_tokenizer(path: Path) -> RobertaTokenizer:
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + _byte_alphabet() + ["<mask>"]
    tmp = path / "_src"
    _write_bpe_files(tmp, {t: i for i, t in enumerate(tokens)})
    tok = RobertaTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=TOKEN_LENGTH)
    tok.save_pretrained(path)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return tok


def _audio_unet(width: int, text_dim: int, full: bool) -> UNet2DConditionModel:
    """AudioLDM's UNet: self-attention blocks (cross_attention_dim = block width, no text
    sequence) and the CLAP embedding projected into the time embedding. ``full``: the
    AudioLDM-m layout of svgen.models.architectures."""
    if full:
        return UNet2DConditionModel(**audio_unet_kwargs("audioldm-m-full"))
    w = (width, width, 2 * width, 2 * width)
    return UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=8, block_out_channels=w, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=w, attention_head_dim=8, norm_num_groups=8,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=text_dim,
        class_embeddings_concat=True,
    )


def _video_unet_and_adapter(width: int, text_dim: int, full: bool) -> tuple[UNet2DConditionModel, MotionAdapter]:
    """SD-1.5's UNet and an AnimateDiff motion adapter; ``full``: the real SD-1.5 / v1-5-2 layout."""
    if full:
        unet_kw, adapter_kw = video_kwargs("sd15+animatediff-v1-5-2")
        return UNet2DConditionModel(**unet_kw), MotionAdapter(**adapter_kw)
    w = (width, width, 2 * width, 2 * width)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=w, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=8,
    )
    adapter = MotionAdapter(block_out_channels=w, motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=2, motion_max_seq_length=32)
    return unet, adapter


def build_tiny_audio_base(out: str | Path, *, n_mels: int = 64, hop_length: int = 160,
                          sample_rate: int = 16000, width: int = 16, seed: int = 0, full: bool = False,
                          dtype: torch.dtype = torch.float32) -> Path:
    """AudioLDM in miniature (or, with ``full``, with an AudioLDM-m sized UNet), saved under ``out``
    in diffusers layout."""
    out = Path(out)
    torch.manual_seed(seed)
    text_dim = 512 if full else 32
    unet = _audio_unet(width, text_dim, full).to(dtype)
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=64,
    )
    rates = _factorise_hop(hop_length)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=n_mels, sampling_rate=sample_rate, upsample_initial_channel=32,
        upsample_rates=rates, upsample_kernel_sizes=[2 * r for r in rates],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False,
    ))
    tok = save_roberta_tokenizer(out / "tokenizer")
    text = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=text_dim, max_position_embeddings=TOKEN_LENGTH + 4,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ))
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    vocoder.save_pretrained(out / "vocoder")
    text.save_pretrained(out / "text_encoder")
    DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(out / "scheduler")
    _model_index(out, "AudioLDMPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "vocoder": ["transformers", "SpeechT5HifiGan"], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "ClapTextModelWithProjection"],
        "tokenizer": ["transformers", "RobertaTokenizer"]})
    return out


def build_tiny_video_base(out: str | Path, adapter_out: str | Path, *, width: int = 16,
                          seed: int = 0, full: bool = False, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """SD-1.5 + AnimateDiff motion adapter in miniature (or, with ``full``, at their real sizes),
    saved in diffusers layout."""
    out, adapter_out = Path(out), Path(adapter_out)
    torch.manual_seed(seed)
    text_dim = 768 if full else 32
    unet, adapter = _video_unet_and_adapter(width, text_dim, full)
    unet, adapter = unet.to(dtype), adapter.to(dtype)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64,
    )
    tok = save_clip_tokenizer(out / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=text_dim, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=TOKEN_LENGTH,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    text.save_pretrained(out / "text_encoder")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(out / "scheduler")
    _model_index(out, "StableDiffusionPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"]})
    adapter.save_pretrained(adapter_out)
    return out, adapter_out


def build_tiny_bases(root: str | Path, *, n_mels: int = 64, hop_length: int = 160, sample_rate: int = 16000,
                     width: int = 16, seed: int = 0, full: bool = False,
                     dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """All three directories under ``root``; the paths match configs/tiny.yaml's layout.

    ``full``: the UNets and motion adapter at the real AudioLDM-m / SD-1.5 / v1-5-2 sizes (random
    weights; text encoders, VAEs and vocoder stay tiny since the training step does not run them),
    for benchmarks of the adapter overhead at realistic widths. ``dtype``: the saved weights'."""
    root = Path(root)
    audio = build_tiny_audio_base(root / "audioldm", n_mels=n_mels, hop_length=hop_length, sample_rate=sample_rate,
                                  width=width, seed=seed, full=full, dtype=dtype)
    video, adapter = build_tiny_video_base(root / "sd15", root / "motion_adapter", width=width, seed=seed + 1, full=full,
                                           dtype=dtype)
    return {"audio": audio, "video": video, "motion_adapter": adapter}


def _factorise_hop(hop: int) -> list[int]:
    """Vocoder upsample rates whose product is the STFT hop (160 -> [5, 4, 4, 2])."""
    rates, n = [], hop
    for p in (5, 4, 3, 2):
        while n % p == 0 and n > 1:
            rates.append(p)
            n //= p
    if n != 1:
        raise ValueError(f"hop_length {hop} must factor into 2, 3, 4 and 5 for the tiny vocoder")
    return sorted(rates, reverse=True)


def _model_index(out: Path, cls: str, parts: dict) -> None:
    import diffusers

    index = {"_class_name": cls, "_diffusers_version": diffusers.__version__, **parts}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description="Build tiny random AudioLDM / SD-1.5 / motion-adapter "
                                             "checkpoints in diffusers layout (for tests and the demo).")
    ap.add_argument("--out", required=True, help="output root; gets audioldm/, sd15/, motion_adapter/")
    ap.add_argument("--width", type=int, default=16, help="UNet base width (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true",
                    help="UNets and motion adapter at the real AudioLDM-m / SD-1.5 sizes (bf16, ~3.5 GB)")
    args = ap.parse_args()
    paths = build_tiny_bases(args.out, width=args.width, seed=args.seed, full=args.full,
                             dtype=torch.bfloat16 if args.full else torch.float32)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
