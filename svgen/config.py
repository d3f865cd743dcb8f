"""The typed config schema of svgen: nested dataclasses, one docstring per field.

A YAML file under ``configs/`` is a serialized instance of :class:`Config`. It may name a
``base:`` YAML (relative to itself) that it overrides, so experiment files stay short deltas.
Command-line overrides are dotted: ``--set model.cmcpe.depth=2``. Unknown keys are errors that
name the nearest valid key; values are type-checked and range-checked on construction.

A loaded config is immutable (frozen dataclasses): every entry point changes it through ``--set``
or ``dataclasses.replace``, so nothing bypasses validation. Rules between sections (the two
bases' step counts, validation's I3D frames vs the clip's frames) are checked in one place,
:func:`check_cross_section`.

This module imports nothing from the rest of svgen (it is the bottom of the import graph).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseSchedule:
    """One base model's DDPM noise schedule (docs/method.md, "Base models")."""

    num_train_timesteps: int = 1000
    """Number of discrete diffusion steps T the base was trained with."""
    beta_start: float = 0.00085
    """First beta of the schedule."""
    beta_end: float = 0.012
    """Last beta of the schedule."""
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    """Beta interpolation: 'linear' (AnimateDiff) or 'scaled_linear' (AudioLDM)."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the base UNet predicts: noise ('epsilon') or velocity ('v_prediction')."""
    timestep_spacing: Literal["leading", "linspace", "trailing"] = "leading"
    """How the sampler's DDIM grid is spaced (diffusers' names): AudioLDM 'leading' (981 ... 1),
    the reference's video scheduler 'linspace' (999 ... 0)."""
    steps_offset: int = 1
    """Added to a 'leading' grid (AudioLDM and SD use 1)."""

    def validate(self, where: str) -> None:
        _check(self.num_train_timesteps >= 2, f"{where}.num_train_timesteps", "must be >= 2")
        _check(0 < self.beta_start < self.beta_end < 1, f"{where}.beta_start/beta_end",
               "need 0 < beta_start < beta_end < 1")


@dataclass(frozen=True)
class AudioBaseConfig:
    """The frozen audio diffusion model (AudioLDM, diffusers layout)."""

    path: str = "checkpoints/audioldm-m-full"
    """Local directory in diffusers layout: unet/, vae/, vocoder/, text_encoder/ (CLAP), tokenizer/."""
    vocoder: Literal["hifigan", "griffin_lim"] = "hifigan"
    """Mel -> waveform: the checkpoint's HiFi-GAN (vocoder/), or Griffin-Lim phase recovery from
    the mel settings in ``data`` (no vocoder/ needed: bases trained without one, e.g. the
    ablation's; slower and rougher)."""
    architecture: str = "audioldm-m-full"
    """The UNet's shape when no checkpoint is at ``path`` (python -m svgen.models.count); see
    svgen/models/architectures.py."""
    schedule: NoiseSchedule = field(default_factory=lambda: NoiseSchedule(
        beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear"))
    """The audio base's noise schedule."""


@dataclass(frozen=True)
class VideoBaseConfig:
    """The frozen video diffusion model: an SD-1.5-layout UNet + the AnimateDiff motion adapter.
    The reference uses Realistic Vision V5.1 (noVAE), an SD-1.5 fine-tune; plain SD-1.5 has the
    same layout and loads the same way."""

    path: str = "checkpoints/Realistic_Vision_V5.1_noVAE"
    """Local directory in diffusers layout: unet/, vae/, text_encoder/ (CLIP), tokenizer/ (the
    reference: SG161222/Realistic_Vision_V5.1_noVAE; or runwayml SD-1.5)."""
    architecture: str = "sd15+animatediff-v1-5-2"
    """The UNet + motion-adapter shape when no checkpoint is at ``path`` (model count); see
    svgen/models/architectures.py."""
    motion_adapter_path: str = "checkpoints/animatediff-motion-adapter-v1-5-2"
    """Local directory of the diffusers MotionAdapter (config.json + weights)."""
    schedule: NoiseSchedule = field(default_factory=lambda: NoiseSchedule(timestep_spacing="linspace"))
    """The video base's noise schedule (the reference forces beta_schedule linear, spacing linspace)."""


@dataclass(frozen=True)
class EncoderConfig:
    """Environment encoders E_a, E_v (docs/method.md, "Added modules" 1). Their widths follow each
    base UNet's first width m (m/2, 2m, 4m), as the reference's; only the output width is set here."""

    context_dim: int = 1280
    """Output width C_ctx of the pooled features p_m (1280 in the reference)."""
    temporal_heads: int = 8
    """Heads of the video encoder's temporal attention (8 in the reference; head width C/4)."""
    temporal_norm: Literal["time", "channel"] = "time"
    """The norm before the video encoder's temporal attention: 'time' standardises each channel
    of each pixel across the frames, as the reference does (the parameters have the same shape
    either way, so a checkpoint loads under both: this must match how it was trained);
    'channel' is the layer norm over channels that the code the reference copied uses since."""

    def validate(self, where: str) -> None:
        _check(self.context_dim >= 1, f"{where}.context_dim", "must be >= 1")
        _check(self.temporal_heads >= 1, f"{where}.temporal_heads", "must be >= 1")


@dataclass(frozen=True)
class CMCPEConfig:
    """The cross-modal blocks inserted into both UNets (docs/method.md, "Added modules" 3-4)."""

    mode: Literal["cmcpe", "xattn_pooled", "xattn_seq", "xattn_timed"] = "cmcpe"
    """'cmcpe' (the paper's method), 'xattn_pooled' (cross-attention to one pooled token, as the
    reference code), 'xattn_seq' (cross-attention to one token per time step), or 'xattn_timed'
    (per time step, queries and keys carrying rotary time positions in seconds)."""
    xattn_context_norm: bool = False
    """Cross-attention modes: LayerNorm the other modality's tokens before the key and value
    projections (CMC-PE normalises its context; the reference's cross-attention does not, and at
    small scale its keys then stay too small for attention to learn anything, issue 20)."""
    down_blocks: list[int] = field(default_factory=lambda: [2, 3])
    """Indices of down blocks after which a block is inserted (default: docs/method.md's)."""
    up_blocks: list[int] = field(default_factory=lambda: [0, 1])
    """Indices of up blocks after which a block is inserted."""
    head_dim: int = 8
    """Width of each attention head inside the blocks (heads = block width / head_dim). The
    reference uses 8 (160 heads at C = 1280, from a misreading of the base's attention_head_dim);
    it is slow on GPUs: 64 is the usual choice when reproducing the paper is not the aim."""
    depth: int = 1
    """Number of (self-attention + feed-forward) layers after the conditioning attention."""
    resample: Literal["nearest", "linear"] = "nearest"
    """How the other modality's embedding is resampled to this modality's time axis."""
    kernel: Literal["auto", "reference", "compile", "triton"] = "auto"
    """Implementation of the fused norm + add hot path: 'auto' picks Triton on CUDA."""

    def validate(self, where: str) -> None:
        _check(self.head_dim >= 1, f"{where}.head_dim", "must be >= 1")
        _check(self.depth >= 0, f"{where}.depth", "must be >= 0")
        for name in ("down_blocks", "up_blocks"):
            idx = getattr(self, name)
            _check(all(isinstance(i, int) and i >= 0 for i in idx), f"{where}.{name}",
                   "must be a list of non-negative block indices")
            _check(len(set(idx)) == len(idx), f"{where}.{name}", "has duplicate indices")


@dataclass(frozen=True)
class ModelConfig:
    """The joint model: two frozen bases plus the trainable cross-modal modules."""

    audio: AudioBaseConfig = field(default_factory=AudioBaseConfig)
    """The frozen audio base."""
    video: VideoBaseConfig = field(default_factory=VideoBaseConfig)
    """The frozen video base."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Environment encoders."""
    cmcpe: CMCPEConfig = field(default_factory=CMCPEConfig)
    """Cross-modal blocks."""
    base_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """Storage and compute dtype of the frozen bases."""
    glue_kernel: Literal["auto", "reference", "compile", "triton"] = "reference"
    """Implementation of the fused glue of the step: every GEGLU feed-forward (the bases', the
    motion modules', the encoders' and the cross-modal blocks', the video encoder's with its token
    shift), every resnet's GroupNorm + SiLU, every transformer block's residual add + layer norm
    (+ the motion modules' position embedding) and the encoders' gain norm. 'triton' (and 'auto'
    on CUDA) runs one fused operator each way (Triton kernels on
    CUDA, their PyTorch maths elsewhere; benchmarks/profile_step.py counts the bytes they save);
    'reference' runs PyTorch's ops as diffusers does. The default stays 'reference' until the
    kernels' speed is measured on a GPU (benchmarks/glue_kernels.py, mfu.py --levers eager,glue)."""
    train_motion_modules: bool = True
    """Also train the video motion modules (about 453 M at the real size): the reference code does,
    and it produced the published checkpoint; false keeps both base UNets frozen whole."""


@dataclass(frozen=True)
class DataConfig:
    """Clip geometry and audio features (docs/method.md, "Data")."""

    seconds: float = 4.0
    """Clip length in seconds."""
    fps: int = 8
    """Video frame rate; frames = seconds * fps."""
    size: int = 256
    """Square frame size in pixels (center crop)."""
    sample_rate: int = 16000
    """Audio sample rate in Hz (mono)."""
    n_mels: int = 64
    """Mel bins of the log-mel spectrogram."""
    hop_length: int = 160
    """STFT hop in samples."""
    win_length: int = 1024
    """STFT window (and FFT size) in samples."""
    fmax: float = 8000.0
    """Highest mel frequency in Hz."""

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)

    @property
    def mel_frames(self) -> int:
        return self.num_samples // self.hop_length

    def validate(self, where: str) -> None:
        _check(self.seconds > 0, f"{where}.seconds", "must be > 0")
        _check(self.fps >= 1, f"{where}.fps", "must be >= 1")
        _check(self.size >= 8 and self.size % 8 == 0, f"{where}.size",
               "must be a positive multiple of 8 (the image VAE downsamples by 8)")
        _check(self.sample_rate >= 1000, f"{where}.sample_rate", "must be >= 1000")
        _check(self.fmax <= self.sample_rate / 2, f"{where}.fmax",
               f"must be <= sample_rate/2 = {self.sample_rate / 2}")
        _check(self.num_frames >= 1, f"{where}.seconds", "gives zero frames at this fps")


@dataclass(frozen=True)
class PrepConfig:
    """Data prep: how source videos become WebDataset shards (data_prep/). Clip geometry
    (window length = data.seconds, fps, size, sample rate, mel settings) comes from ``data``."""

    stride: float = 0.0
    """Seconds between the starts of consecutive windows; 0 means data.seconds (no overlap)."""
    min_seconds: float = 0.0
    """Shortest usable A/V overlap; 0 means one full window (data.seconds)."""
    inputs_per_shard: int = 16
    """Source videos per shard at most (a shard is the unit of work, retry and skip-on-rerun)."""
    min_shards: int = 64
    """A corpus too small to fill this many shards of inputs_per_shard gets smaller shards (down
    to one input each), so that a small corpus still keeps every worker busy. Depends only on the
    input count, so a re-run on another cluster finds the same shards."""
    no_audio: Literal["skip", "silence"] = "skip"
    """A video without an audio stream: record an error ('skip') or write silent clips."""
    mel: bool = True
    """Also store the log-mel spectrogram of each clip."""
    jpeg_quality: int = 90
    """Store each frame as a JPEG of this quality (1-100; about a tenth of the raw size); 0 stores
    raw uint8 arrays."""
    extensions: list[str] = field(default_factory=list)
    """Only these file extensions when the input is a folder (e.g. ['.mp4', '.mkv']); empty: every
    file is an input, probe decides what is media, and the rest get error records."""
    video_backend: Literal["auto", "decord", "pyav"] = "pyav"
    """Frame decoder: 'pyav' (one pass per input, honours the stream's start time and display
    rotation, flat memory); 'decord' (random access; it ignores a late-starting video stream's
    offset and fails on some small frames; rotated inputs go through PyAV whatever is chosen,
    since decord turns them itself and fails at 180 degrees); 'auto' uses decord where it
    reports valid timestamps, else PyAV."""
    workers: int = 0
    """Parallel shard tasks (Ray tasks or local worker processes); 0 uses every CPU."""
    executor: Literal["auto", "ray", "local"] = "auto"
    """Where shard tasks run: 'ray' (the cluster of --address / RAY_ADDRESS, else an embedded
    one on this machine), 'local' (worker processes of this machine, no Ray: no cluster start-up,
    the same stage code), or 'auto': Ray when attaching to a cluster or when more than
    local_max_inputs inputs are to do, local otherwise."""
    local_max_inputs: int = 256
    """With executor 'auto' on one machine: up to this many inputs to do run locally (where a Ray
    cluster's start-up of several seconds would weigh most); more go to an embedded Ray."""
    max_retries: int = 2
    """Times a failed shard task is retried before its inputs are recorded as errors."""
    verify_shards: bool = True
    """On a re-run, check each finished shard's SHA-256 against its stats before skipping it
    (a tar altered or damaged since it was written is remade); its size is always checked."""

    def validate(self, where: str) -> None:
        _check(self.stride >= 0, f"{where}.stride", "must be >= 0 (0 = one window length)")
        _check(self.min_seconds >= 0, f"{where}.min_seconds", "must be >= 0")
        _check(self.inputs_per_shard >= 1, f"{where}.inputs_per_shard", "must be >= 1")
        _check(self.min_shards >= 1, f"{where}.min_shards", "must be >= 1")
        _check(0 <= self.jpeg_quality <= 100, f"{where}.jpeg_quality", "must be in [0, 100] (0: raw frames)")
        _check(self.workers >= 0, f"{where}.workers", "must be >= 0")
        _check(self.local_max_inputs >= 0, f"{where}.local_max_inputs", "must be >= 0")
        _check(self.max_retries >= 0, f"{where}.max_retries", "must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (docs/method.md, "Training (one step)")."""

    lr: float = 1e-5
    """AdamW learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    warmup_steps: int = 0
    """Linear LR warm-up steps."""
    schedule: Literal["constant", "cosine"] = "constant"
    """LR after warm-up: constant (reference) or cosine decay to 0 at train.steps."""

    def validate(self, where: str) -> None:
        _check(self.lr > 0, f"{where}.lr", "must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{where}.betas",
               "must be two numbers in [0, 1)")
        _check(self.grad_clip >= 0, f"{where}.grad_clip", "must be >= 0")
        _check(self.warmup_steps >= 0, f"{where}.warmup_steps", "must be >= 0")


@dataclass(frozen=True)
class LossConfig:
    """The training objective (docs/method.md, "Training (one step)")."""

    caption_dropout: float = 0.1
    """Probability of replacing the caption with the empty prompt (for CFG)."""
    x0_zero_prob: float = 0.5
    """Per-sample probability of zeroing x0_hat before the training pass."""
    audio_weight: float = 1.0
    """Weight of the audio MSE in the total loss."""
    video_weight: float = 1.0
    """Weight of the video MSE in the total loss."""

    def validate(self, where: str) -> None:
        for name in ("caption_dropout", "x0_zero_prob"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{where}.{name}", "must be in [0, 1]")


@dataclass(frozen=True)
class SourceConfig:
    """Where the training data comes from and how it is read."""

    shards: str = ""
    """A data_prep output folder, one .tar, or a list file of shard paths (one a line)."""
    cached_latents: bool = False
    """Train from the latent-shard-*.tar that launch/cache_latents.py wrote beside the shards."""
    loader_workers: int = 0
    """DataLoader worker processes per rank."""
    max_bad_samples: int = 64
    """Damaged samples (a member missing or undecodable) and damaged shards (truncated or
    corrupt tar) skipped per rank before the run stops with their list; each is logged to
    out_dir/bad_samples.rankR.jsonl and counted in the metric data/bad_samples."""
    allow_pipe: bool = False
    """Accept 'pipe:COMMAND' lines in a shard list (WebDataset runs COMMAND in a shell to read the
    shard, e.g. 'pipe:aws s3 cp s3://b/shard-000000.tar -'). Off: such a line is refused, since
    a shard list then runs whatever it says; turn on only for lists you trust."""

    def validate(self, where: str) -> None:
        _check(self.loader_workers >= 0, f"{where}.loader_workers", "must be >= 0")
        _check(self.max_bad_samples >= 0, f"{where}.max_bad_samples", "must be >= 0")


@dataclass(frozen=True)
class ParallelConfig:
    """How the trained modules are distributed and computed (DeepSpeed)."""

    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3) for the trained weights and their optimizer state."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """Trained-module precision under DeepSpeed (bf16 keeps fp32 master weights)."""
    activation_checkpointing: bool = False
    """Recompute activations in backward (saves memory, costs compute): the base UNets' resnets
    and transformers, the motion modules and the cross-modal blocks (under ZeRO-3 only the
    frozen ones)."""

    def validate(self, where: str) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), f"{where}.zero_stage", "must be 0, 1, 2 or 3")


@dataclass(frozen=True)
class PerfConfig:
    """Speed levers of the training step (benchmarks/mfu.py measures each; figures in
    benchmarks/RESULTS.md). None changes the maths: every lever gives the same losses as plain
    eager within the compute dtype's noise (tests/test_perf.py). 'auto' turns a lever on for CUDA
    and off on CPU; the defaults are what measured fastest (or no slower) on an H200."""

    compile: Literal["auto", "on", "off"] = "off"
    """torch.compile by region, in place (state_dict keys unchanged): each block of the two frozen
    UNets, plus the encoders and cross-modal blocks below ZeRO-3 (whose parameter hooks do not
    trace). Regions compile once per shape, so the first steps are slow (warm-up and pay-off at
    the paper's sizes: benchmarks/RESULTS.md), hence off."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"] = "default"
    """Inductor mode of the compiled regions; 'reduce-overhead' replays them as CUDA graphs
    (static shapes only)."""
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """torch.compile backend: 'inductor' generates fused kernels (the speed); 'aot_eager' and
    'eager' only trace (to check a graph-capture problem apart from code generation; on CPU
    inductor needs minutes per region shape, aot_eager seconds)."""
    channels_last: Literal["auto", "on", "off"] = "off"
    """Channels-last memory format for the frozen UNets' convolutions (NHWC kernels). Slower than
    the default layout where measured (benchmarks/RESULTS.md), hence off; CUDA only."""
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    """One fused AdamW kernel over all trained weights (torch's fused=True) instead of a loop
    (on for CUDA: no slower where measured, fewer launches; benchmarks/RESULTS.md)."""
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    """Scaled-dot-product attention backend for every attention in the step ('auto': PyTorch
    picks per call; a named one is tried first, the others stay as fallbacks)."""
    peak_tflops: float = 0.0
    """The card's dense peak (TFLOP/s, training dtype) for the logged MFU; 0 looks the card up
    in a table of known ones (H100/H200: 989 bf16) and logs only TFLOP/s for unknown ones."""

    def validate(self, where: str) -> None:
        _check(self.peak_tflops >= 0, f"{where}.peak_tflops", "must be >= 0 (0: look the card up)")


@dataclass(frozen=True)
class CheckpointConfig:
    """When the run saves its resumable state."""

    save_every: int = 1000
    """Checkpoint every N steps (also on SIGTERM/SIGUSR1 and at the end)."""
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted after a newer one is complete."""

    def validate(self, where: str) -> None:
        _check(self.save_every >= 1, f"{where}.save_every", "must be >= 1")
        _check(self.keep_last >= 1, f"{where}.keep_last", "must be >= 1")


@dataclass(frozen=True)
class ValConfig:
    """Validation samples during training (scored by the eval suite, see ``eval``)."""

    every: int = 0
    """Sample and log validation mp4s every N steps (0: only at the end)."""
    clips: int = 1
    """Sounding videos generated per validation; scored with eval.metrics when eval.reference is
    set and there are >= 2 clips, else with AV-Align alone."""

    def validate(self, where: str) -> None:
        _check(self.every >= 0, f"{where}.every", "must be >= 0")
        _check(self.clips >= 1, f"{where}.clips", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """The training run (docs/method.md, "Training (one step)"): the loop's own settings, then one section per
    concern, each passed on its own to the code that uses it."""

    steps: int = 100000
    """Optimizer steps to run (>= 1)."""
    batch_size: int = 1
    """Micro batch per process."""
    global_batch: int = 0
    """Samples per optimizer step over all processes (the paper: 16). When set, the accumulation
    is derived from the world size: global_batch / (batch_size x world size) micro batches per
    step; 0 uses grad_accum as given."""
    grad_accum: int = 1
    """Micro batches per optimizer step when global_batch is 0; global batch = batch_size x
    grad_accum x world size."""
    seed: int = 0
    """Seed for weights of the added modules, noise and data order."""
    out_dir: str = "runs/default"
    """Where checkpoints, samples and logs of this run go."""
    log_every: int = 10
    """Log metrics every N steps."""
    ema_decay: float = 0.9999
    """Decay of the EMA of trained weights (0 disables the EMA); warm-up min(decay, (1+k)/(10+k))."""
    ema_motion_modules: bool = False
    """Also average the motion modules (the reference averages the added modules only; the
    exported EMA weights then carry the motion modules as trained)."""
    max_nonfinite_steps: int = 3
    """Stop the run (with an error naming the step and the modality) after this many consecutive
    steps whose loss is NaN or infinite. Trained weights that are not finite are never saved or
    exported, whatever this is."""
    check_frozen: bool = False
    """Hash the frozen base weights before and after training into train_result.json (proof that
    they never changed; a pass over every base weight on rank 0, so off by default)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The objective."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """DeepSpeed ZeRO and precision."""
    perf: PerfConfig = field(default_factory=PerfConfig)
    """Speed levers of the step (compilation, memory format, fused optimizer, attention)."""
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    val: ValConfig = field(default_factory=ValConfig)
    """Validation during training."""

    def accumulation(self, world_size: int) -> int:
        """Micro batches per optimizer step on ``world_size`` processes."""
        if not self.global_batch:
            return self.grad_accum
        per_step = self.batch_size * world_size
        if self.global_batch % per_step:
            raise ConfigError(f"train.global_batch={self.global_batch} is not a multiple of train.batch_size "
                              f"({self.batch_size}) x {world_size} processes: change the process count, "
                              "train.batch_size or train.global_batch")
        return self.global_batch // per_step

    def validate(self, where: str) -> None:
        _check(self.steps >= 1, f"{where}.steps", "must be >= 1 (a run of 0 steps would export its initial weights)")
        _check(self.max_nonfinite_steps >= 1, f"{where}.max_nonfinite_steps", "must be >= 1")
        _check(self.batch_size >= 1, f"{where}.batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, f"{where}.grad_accum", "must be >= 1")
        _check(self.global_batch >= 0, f"{where}.global_batch", "must be >= 0 (0: use grad_accum)")
        _check(self.global_batch == 0 or self.grad_accum == 1, f"{where}.grad_accum",
               f"is derived from {where}.global_batch when that is set: set one of them (the other to its default)")
        _check(self.global_batch == 0 or self.global_batch % self.batch_size == 0, f"{where}.global_batch",
               f"({self.global_batch}) must be a multiple of {where}.batch_size ({self.batch_size})")
        _check(self.log_every >= 1, f"{where}.log_every", "must be >= 1")
        _check(0.0 <= self.ema_decay < 1.0, f"{where}.ema_decay", "must be in [0, 1)")


@dataclass(frozen=True)
class SampleConfig:
    """Joint sampling with timestep adjustment (docs/method.md, "Sampling")."""

    steps: int = 50
    """DDIM steps."""
    gamma: float = 1.5
    """Timestep adjustment: t_v/T ~ (t_a/T)**gamma; 1.0 turns it off."""
    eta: float = 0.0
    """DDIM eta (0 = deterministic)."""
    guidance_audio: float = 2.5
    """Classifier-free guidance scale of the audio branch (1 = no guidance)."""
    guidance_video: float = 7.5
    """Classifier-free guidance scale of the video branch (1 = no guidance)."""
    negative_prompt: str = "bad quality, worse quality"
    """Prompt used for the unconditional branch of CFG."""
    prompt: str = "hitting a wooden table with a drumstick"
    """Default prompt for samples."""
    seed: int = 0
    """Seed of the initial noise."""

    def validate(self, where: str) -> None:
        _check(self.steps >= 1, f"{where}.steps", "must be >= 1")
        _check(self.gamma > 0, f"{where}.gamma", "must be > 0")
        _check(self.eta >= 0, f"{where}.eta", "must be >= 0")


@dataclass(frozen=True)
class TrackConfig:
    """Experiment tracking (MLflow on rank 0)."""

    backend: Literal["mlflow", "none"] = "mlflow"
    """Tracker backend."""
    tracking_uri: str = "sqlite:///runs/mlflow.db"
    """MLflow store: sqlite:///PATH, or http(s)://HOST:PORT of an MLflow server (which must answer
    at start; an outage later never stops training). The only source of the URI: the
    MLFLOW_TRACKING_URI environment variable is not read, so the recorded config names the store."""
    experiment: str = "svgen"
    """MLflow experiment name."""
    run_name: str = ""
    """MLflow run name (default: the out_dir's name)."""
    system_metrics_interval: float = 10.0
    """Seconds between samples of CPU, memory, disk, network and (with the NVIDIA management
    library installed) GPU utilisation into the run's system/* metrics; 0 turns them off."""


METRICS = ("av_align", "fad_vggish", "fd_panns", "fvd", "kvd", "desync", "ib_score")


@dataclass(frozen=True)
class EvalConfig:
    """Metrics of generated sounding videos (docs/method.md, "Metrics"): launch/eval.py and the
    training loop's validation. Feature networks load from local files only."""

    metrics: list[str] = field(default_factory=lambda: ["av_align"])
    """Which of av_align, fad_vggish (VGGish FAD), fd_panns (PANNs CNN14 FD), fvd, kvd (I3D),
    desync (Synchformer's predicted offset, seconds), ib_score (ImageBind's audio-video cosine) to compute. The distances compare against
    ``reference``; all but av_align need their weight file."""
    reference: str = ""
    """Real clips to compare against: a folder of .mp4, or data_prep shards (folder, .tar or list)."""
    vggish_path: str = ""
    """VGGish torch state_dict (torchvggish layout) for fad_vggish."""
    panns_path: str = ""
    """PANNs CNN14 checkpoint (e.g. Cnn14_16k_mAP=0.438.pth) for fd_panns."""
    i3d_path: str = ""
    """I3D Kinetics-400 state_dict (pytorch-i3d layout, e.g. i3d_pretrained_400.pt) for fvd/kvd."""
    synchformer_path: str = ""
    """Synchformer weights (MMAudio's synchformer_state_dict.pth) for desync; clips must be at
    least 4.8 s long."""
    imagebind_path: str = ""
    """ImageBind-Huge weights (imagebind_huge.pth, licensed CC-BY-NC 4.0: svgen ships neither them
    nor ImageBind's code; the user supplies them and their licence applies) for ib_score; clips
    must be at least 2 s long."""
    fvd_frames: int = 16
    """Frames per clip fed to I3D, taken evenly over the clip."""
    max_clips: int = 0
    """Use at most this many clips of each set (0: all)."""
    batch_size: int = 8
    """Clips per feature-network batch."""
    device: str = "auto"
    """Device of the feature networks: auto (CUDA when present), cpu, cuda, cuda:N."""

    def validate(self, where: str) -> None:
        for m in self.metrics:
            _check(m in METRICS, f"{where}.metrics", f"holds unknown metric {m!r}; choose from {list(METRICS)}")
        _check(self.fvd_frames >= 9, f"{where}.fvd_frames", "must be >= 9 (I3D's temporal strides)")
        _check(self.max_clips >= 0, f"{where}.max_clips", "must be >= 0")
        _check(self.batch_size >= 1, f"{where}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class Config:
    """Everything one svgen run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The joint model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Clip geometry and audio features."""
    prep: PrepConfig = field(default_factory=PrepConfig)
    """Data prep (sharding source videos)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampling."""
    track: TrackConfig = field(default_factory=TrackConfig)
    """Experiment tracking."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation metrics (launch/eval.py, validation)."""

    def __post_init__(self) -> None:
        validate(self)
        check_cross_section(self)


# --------------------------------------------------------------------------------------------
# Validation, loading, overrides
# --------------------------------------------------------------------------------------------


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {why}")


def check_cross_section(cfg: "Config") -> None:
    """Rules that involve more than one section."""
    a, v = cfg.model.audio.schedule, cfg.model.video.schedule
    _check(a.num_train_timesteps == v.num_train_timesteps, "model.audio.schedule.num_train_timesteps",
           f"({a.num_train_timesteps}) must equal model.video.schedule.num_train_timesteps ({v.num_train_timesteps}): "
           "training draws one shared t for both bases")
    e = cfg.eval
    scored = cfg.train.val.clips >= 2 and bool(e.reference)  # validation scores eval.metrics then
    if scored and {"fvd", "kvd"} & set(e.metrics) and cfg.data.num_frames < e.fvd_frames:
        raise ConfigError(f"validation scores fvd/kvd on {e.fvd_frames} frames (eval.fvd_frames) but clips have "
                          f"{cfg.data.num_frames} (data.seconds x data.fps): lower eval.fvd_frames or drop fvd/kvd "
                          "from eval.metrics")


def validate(obj: Any, where: str = "") -> None:
    """Run the ``validate(where)`` method of every nested section, naming keys by dotted path."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            path = f"{where}.{f.name}" if where else f.name
            validate(value, path)
            if hasattr(value, "validate"):
                value.validate(path)


# Keys that moved (issues 10 and 11): an old YAML or override gets the new name, not a guess.
MOVED = {"model.cmcpe.heads": "model.cmcpe.head_dim (heads = block width / head_dim)",
         "model.encoder.channels": "derived from the base UNet's first width (remove the key)"}
MOVED |= {f"train.{old}": f"train.{new}" for old, new in {
    "lr": "optim.lr", "betas": "optim.betas", "weight_decay": "optim.weight_decay", "grad_clip": "optim.grad_clip",
    "warmup_steps": "optim.warmup_steps", "lr_schedule": "optim.schedule",
    "caption_dropout": "loss.caption_dropout", "x0_zero_prob": "loss.x0_zero_prob",
    "audio_loss_weight": "loss.audio_weight", "video_loss_weight": "loss.video_weight",
    "shards": "source.shards", "cached_latents": "source.cached_latents", "loader_workers": "source.loader_workers",
    "zero_stage": "parallel.zero_stage", "precision": "parallel.precision",
    "activation_checkpointing": "parallel.activation_checkpointing",
    "save_every": "ckpt.save_every", "keep_last": "ckpt.keep_last", "val_every": "val.every", "val_clips": "val.clips",
}.items()}


def _nearest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return match[0] if match else valid[0]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one leaf value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or cls.__name__}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            if path in MOVED:
                raise ConfigError(f"config key '{path}' is now '{MOVED[path]}'")
            near = _nearest(key, list(fields))
            near_path = f"{where}.{near}" if where else near
            raise ConfigError(f"unknown config key '{path}'; did you mean '{near_path}'?")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            # Merge onto the field's own default (AudioBaseConfig.schedule differs from a bare
            # NoiseSchedule), so a partial section keeps the right defaults.
            base = dataclasses.asdict(fields[key].default_factory())  # type: ignore[misc]
            merged = _deep_merge(base, value) if isinstance(value, dict) else value
            kwargs[key] = from_dict(tp, merged, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    # Missing keys take the dataclass defaults; Config.__post_init__ validates the whole tree.
    return cls(**kwargs)


def _deep_merge(base: dict, delta: dict) -> dict:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules (``2`` -> int, ``[1,2]`` -> list, ``x`` -> str)."""
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (validation happens on construction)."""
    data = _deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist" + (f" (the base: of '{seen[-1]}')" if seen else ""))
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"config 'base:' links form a loop ({chain}): a config cannot be its own base")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file '{path}': 'base:' must be a file name, got {base!r}")
        data = _deep_merge(_load_yaml_chain((path.parent / base).resolve(), (*seen, path.resolve())), data)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (following ``base:`` links), apply dotted overrides, validate."""
    data = _load_yaml_chain(Path(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(Config, data)


def config_from_yaml(text: str, overrides: list[str] | None = None, where: str = "stored config") -> Config:
    """A config from YAML text that names no ``base:`` (one svgen wrote: a checkpoint's or an
    export's), with dotted overrides applied."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or "base" in data:
        raise ConfigError(f"{where} must be a full config mapping (no base:)")
    return from_dict(Config, apply_overrides(data, overrides or []))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (for trackers)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Map each dotted key to the docstring under its field (read from the source)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                name = node.target.id
                docs[prefix + name] = " ".join(str(nxt.value.value).split())
                if dataclasses.is_dataclass(hints.get(name)):
                    docs.update(field_docs(hints[name], prefix + name + "."))
    return docs
