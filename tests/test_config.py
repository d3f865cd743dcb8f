import dataclasses

import pytest

from svgen.config import Config, ConfigError, field_docs, load_config, to_yaml

from .conftest import ROOT, TINY


def test_yaml_files_are_valid_instances():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, Config), path


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
    cfg = load_config(TINY, ["model.cmcpe.depth=2", "train.lr=3e-4", "model.cmcpe.down_blocks=[1, 3]",
                             "sample.negative_prompt=blurry", "model.train_motion_modules=true"])
    assert cfg.model.cmcpe.depth == 2
    assert cfg.train.lr == pytest.approx(3e-4)
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
    ("train.lr=-1", "train.lr"),
    ("train.lr=fast", "train.lr' must be a number"),
    ("model.cmcpe.mode=magic", "model.cmcpe.mode' must be one of"),
    ("train.caption_dropout=1.5", "train.caption_dropout"),
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
        load_config(TINY, ["train.lr"])


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
