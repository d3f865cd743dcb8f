import dataclasses

import pytest

from svgen.config import Config, ConfigError, field_docs, load_config, to_yaml

from .conftest import ROOT, TINY


def test_yaml_files_load_and_round_trip(tmp_path):
    """Every shipped YAML loads, and its dump loads back to an equal config."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        dumped = tmp_path / path.name
        dumped.write_text(to_yaml(cfg))
        assert load_config(dumped) == cfg, path


def test_greatesthits_has_the_papers_sizes():
    cfg = load_config(ROOT / "configs" / "greatesthits.yaml")
    assert (cfg.data.seconds, cfg.data.fps, cfg.data.size, cfg.data.sample_rate, cfg.data.n_mels) == (4.0, 8, 256, 16000, 64)
    assert cfg.data.num_frames == 32 and cfg.data.mel_frames == 400
    assert cfg.model.audio.schedule.beta_schedule == "scaled_linear"
    assert cfg.model.audio.schedule.beta_start == 0.0015 and cfg.model.audio.schedule.beta_end == 0.0195
    assert cfg.model.video.schedule.beta_schedule == "linear"
    assert cfg.model.cmcpe.down_blocks == [2, 3] and cfg.model.cmcpe.up_blocks == [0, 1]
    assert cfg.sample.gamma == 1.5 and cfg.sample.guidance_audio == 2.5 and cfg.sample.guidance_video == 7.5


def test_tiny_is_a_delta_on_the_base():
    cfg = load_config(TINY)
    assert cfg.data.size == 64 and cfg.data.fps == 8  # fps inherited from greatesthits.yaml
    # A partial schedule section keeps the audio schedule's own defaults, not NoiseSchedule's.
    cfg = load_config(TINY, ["model.audio.schedule.prediction_type=v_prediction"])
    assert cfg.model.audio.schedule.beta_schedule == "scaled_linear"
    assert cfg.model.audio.schedule.prediction_type == "v_prediction"


def test_dotted_overrides_are_typed():
    cfg = load_config(TINY, ["model.cmcpe.depth=2", "train.optim.lr=3e-4", "model.cmcpe.down_blocks=[1, 3]",
                             "sample.negative_prompt=blurry", "model.train_motion_modules=true"])
    assert cfg.model.cmcpe.depth == 2
    assert cfg.train.optim.lr == pytest.approx(3e-4)
    assert cfg.model.cmcpe.down_blocks == [1, 3]
    assert cfg.sample.negative_prompt == "blurry"
    assert cfg.model.train_motion_modules is True


@pytest.mark.parametrize("override,nearest", [
    ("model.cmcpe.dept=2", "model.cmcpe.depth"),
    ("trian.lr=1", "train"),
    ("data.sampel_rate=8000", "data.sample_rate"),
])
def test_unknown_key_names_the_nearest(override, nearest):
    with pytest.raises(ConfigError, match=f"did you mean '{nearest}'"):
        load_config(TINY, [override])


@pytest.mark.parametrize("override,fragment", [
    ("train.optim.lr=-1", "train.optim.lr"),
    ("train.optim.lr=fast", "train.optim.lr' must be a number"),
    ("model.cmcpe.mode=magic", "model.cmcpe.mode' must be one of"),
    ("train.loss.caption_dropout=1.5", "train.loss.caption_dropout"),
    ("model.cmcpe.depth=1.5", "model.cmcpe.depth' must be an integer"),
    ("data.size=100", "data.size"),
    ("data.fmax=9000", "data.fmax"),
    ("model.train_motion_modules=maybe", "must be true or false"),
    ("sample.gamma=0", "sample.gamma"),
    ("model.cmcpe.up_blocks=[0, 0]", "duplicate"),
])
def test_bad_values_are_rejected_by_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_config(TINY, [override])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(TINY, ["model.cmcpe.mode=xattn_seq"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ROOT / "configs" / "nope.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(TINY, ["train.optim.lr"])


def test_every_field_has_a_docstring():
    docs = field_docs()

    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            assert docs.get(key), f"config field '{key}' has no docstring"
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.default_factory is not dataclasses.MISSING
                                                     and dataclasses.is_dataclass(f.default_factory())):
                walk(type(f.default_factory()), key + ".")

    walk(Config)


def test_a_loaded_config_is_immutable():
    cfg = load_config(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sample.steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = None
    # Changes go through replace, which validates the whole tree again.
    with pytest.raises(ConfigError, match="sample.steps"):
        dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, steps=0))


def test_cross_section_rules_are_checked_on_load():
    with pytest.raises(ConfigError, match="num_train_timesteps.*shared t"):
        load_config(TINY, ["model.audio.schedule.num_train_timesteps=500"])
    # tiny clips have 8 frames: validation cannot score fvd on 16 of them.
    scored = ["train.val.clips=2", "eval.reference=ref_shards", "eval.metrics=[av_align,fvd]"]
    with pytest.raises(ConfigError, match="eval.fvd_frames"):
        load_config(TINY, scored)
    assert load_config(TINY, scored + ["data.seconds=2.0"]).eval.fvd_frames == 16
    assert load_config(TINY, scored[1:]).train.val.clips == 1  # one clip: AV-Align only, no rule


def test_sample_cli_flags_are_validated_overrides():
    import argparse

    from launch.sample import flag_overrides

    args = argparse.Namespace(steps=7, guidance_audio=None, guidance_video=3.0, gamma=None,
                              negative_prompt="blurry: [low] quality, noisy")
    cfg = load_config(TINY, flag_overrides(args))
    assert (cfg.sample.steps, cfg.sample.guidance_video) == (7, 3.0)
    assert cfg.sample.negative_prompt == "blurry: [low] quality, noisy"  # quoted: not read as YAML
    with pytest.raises(ConfigError, match="sample.steps"):
        load_config(TINY, flag_overrides(argparse.Namespace(steps=0, guidance_audio=None, guidance_video=None,
                                                            gamma=None, negative_prompt=None)))


@pytest.mark.parametrize("old,new", [("train.lr=1e-4", "train.optim.lr"), ("train.shards=x", "train.source.shards"),
                                     ("train.val_clips=2", "train.val.clips"), ("train.zero_stage=3", "train.parallel.zero_stage")])
def test_a_moved_key_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=f"is now '{new}'"):
        load_config(TINY, [old])


def test_train_sections_reach_their_code():
    """Each train section is what its consumer reads: DeepSpeed JSON, optimizer, LR schedule."""
    from svgen.train.engine import deepspeed_config, lr_lambda

    cfg = load_config(TINY, ["train.optim.grad_clip=0.25", "train.parallel.zero_stage=1", "train.optim.warmup_steps=4",
                             "train.optim.schedule=cosine", "train.steps=12"])
    ds = deepspeed_config(cfg.train, world_size=2)
    assert ds["gradient_clipping"] == 0.25 and ds["zero_optimization"]["stage"] == 1
    f = lr_lambda(cfg.train.optim, cfg.train.steps)
    assert f(0) == pytest.approx(0.25) and f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.0, abs=1e-12)


def test_global_batch_derives_accumulation_from_the_world_size():
    """The paper's total batch of 16 on any number of processes."""
    from svgen.train.engine import deepspeed_config

    t = load_config(ROOT / "configs" / "greatesthits.yaml").train
    assert t.global_batch == 16 and t.steps == 387000
    for world, accum in ((1, 16), (8, 2), (16, 1)):
        ds = deepspeed_config(t, world)
        assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (accum, 16)
    with pytest.raises(ConfigError, match="not a multiple.*3 processes"):
        t.accumulation(3)
    with pytest.raises(ConfigError, match="derived from train.global_batch"):
        load_config(ROOT / "configs" / "greatesthits.yaml", ["train.grad_accum=2"])
    plain = load_config(TINY, ["train.grad_accum=3"]).train
    assert plain.global_batch == 0 and plain.accumulation(4) == 3
