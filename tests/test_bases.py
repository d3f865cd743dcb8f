import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetMotionModel

from svgen.models.bases import BaseModelError, load_audio_base, load_video_base


def test_tiny_bases_load_through_the_real_path(tiny_bases):
    audio = load_audio_base(tiny_bases["audio"])
    video = load_video_base(tiny_bases["video"], tiny_bases["motion_adapter"])
    assert isinstance(audio.unet, UNet2DConditionModel) and audio.unet.config.class_embed_type == "simple_projection"
    assert isinstance(video.unet, UNetMotionModel)
    for module in (audio.unet, audio.vae, audio.vocoder, audio.text_encoder, video.unet, video.vae, video.text_encoder):
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training
    ea, ev = audio.encode_text(["a drum hit", ""]), video.encode_text(["a drum hit"])
    assert ea.shape == (2, audio.unet.config.projection_class_embeddings_input_dim)
    assert torch.allclose(ea.norm(dim=-1), torch.ones(2), atol=1e-5)  # AudioLDM L2-normalises CLAP
    assert ev.shape[0] == 1 and ev.shape[2] == video.unet.config.cross_attention_dim
    assert len(video.motion_parameters()) > 0


def test_bf16_bases(tiny_bases):
    audio = load_audio_base(tiny_bases["audio"], torch.bfloat16)
    video = load_video_base(tiny_bases["video"], tiny_bases["motion_adapter"], torch.bfloat16)
    assert audio.unet.dtype == torch.bfloat16 and video.unet.dtype == torch.bfloat16
    assert audio.vae.dtype == torch.bfloat16 and video.vae.dtype == torch.bfloat16


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(BaseModelError, match=str(tmp_path / "nowhere")):
        load_audio_base(tmp_path / "nowhere")


@pytest.mark.parametrize("remove,expect", [
    ("unet/config.json", "unet/config.json' is missing"),
    ("vae/diffusion_pytorch_model.safetensors", "no weights in .*vae"),
    ("vocoder/model.safetensors", "no weights in .*vocoder"),
    ("tokenizer/tokenizer.json", "tokenizer. lacks vocab.json, merges.txt"),
    ("text_encoder", "expected a directory at .*text_encoder"),
])
def test_malformed_audio_checkpoint(tiny_bases, tmp_path, remove, expect):
    root = tmp_path / "audioldm"
    shutil.copytree(tiny_bases["audio"], root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(BaseModelError, match=expect):
        load_audio_base(root)


def test_malformed_video_checkpoint_and_adapter(tiny_bases, tmp_path):
    root = tmp_path / "sd15"
    shutil.copytree(tiny_bases["video"], root)
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BaseModelError, match="no weights in .*sd15/unet"):
        load_video_base(root, tiny_bases["motion_adapter"])
    with pytest.raises(BaseModelError, match="motion adapter.*expected a directory"):
        load_video_base(tiny_bases["video"], tmp_path / "no_adapter")
