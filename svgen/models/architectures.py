"""The real base architectures as diffusers constructor arguments, so svgen can build them without
a checkpoint: on the meta device to count parameters (``python -m svgen.models.count``), or with
random weights at full size for benchmarks (``python -m svgen.models.tiny --full``).

Named in the config by ``model.audio.architecture`` / ``model.video.architecture``. A local
checkpoint's own ``config.json`` always wins where it exists.
"""

from __future__ import annotations

AUDIO = {
    # cvssp/audioldm-m-full: base width 192, multipliers 1-2-3-5, two layers per block, 32-channel
    # heads, CLAP (512) projected into the time embedding and concatenated to it.
    "audioldm-m-full": dict(
        sample_size=32, in_channels=8, out_channels=8, block_out_channels=(192, 384, 576, 960), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(192, 384, 576, 960), attention_head_dim=(6, 12, 18, 30), norm_num_groups=32,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=512, class_embeddings_concat=True,
    ),
}

VIDEO = {
    # SG161222/Realistic_Vision_V5.1_noVAE (the reference's video base; an SD-1.5 fine-tune, same
    # layout as runwayml SD-1.5) + guoyww/animatediff-motion-adapter-v1-5-2.
    "sd15+animatediff-v1-5-2": (
        dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
             layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
             attention_head_dim=8, norm_num_groups=32),
        dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_norm_num_groups=32,
             motion_num_attention_heads=8, motion_max_seq_length=32),
    ),
}


def audio_unet_kwargs(name: str) -> dict:
    if name not in AUDIO:
        raise ValueError(f"unknown audio architecture {name!r} (model.audio.architecture); known: {sorted(AUDIO)}")
    return dict(AUDIO[name])


def video_kwargs(name: str) -> tuple[dict, dict]:
    """(UNet2DConditionModel kwargs, MotionAdapter kwargs)."""
    if name not in VIDEO:
        raise ValueError(f"unknown video architecture {name!r} (model.video.architecture); known: {sorted(VIDEO)}")
    unet, adapter = VIDEO[name]
    return dict(unet), dict(adapter)
