"""Data prep: sync on synthetic and real clips, bad inputs, atomic/resumable shards, manifests."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.inputs import InputError, discover
from data_prep.run import PrepError, run
from data_prep.decode import decode_clips
from data_prep.probe import probe
from data_prep.windows import plan_windows
from svgen.config import load_config
from svgen.data.loader import make_loader
from svgen.shards import decode_sample

from .conftest import ROOT, TINY
from svgen.testing.media import onset_time, write_flash_click

MEDIA = ROOT.parent / "shared" / "media"
EVENTS = [0.65, 1.4, 2.3]


def _cfg(*sets):
    return load_config(TINY, ["prep.workers=2", "prep.inputs_per_shard=2", *sets])


def _clips(path, cfg):
    p, err = probe(str(path))
    assert err is None, err
    windows, err = plan_windows(p, cfg.data, cfg.prep)
    assert err is None, err
    out = []
    for clip, err in decode_clips(p, windows, cfg.data, cfg.prep):
        assert err is None, err
        out.append(clip)
    return p, out


def _assert_in_sync(clips, fps, sr, events, must_see=2):
    """In every clip, each flash (first bright frame after dark) and its click lie within one frame."""
    seen = 0
    for c in clips:
        bright = c.frames.reshape(len(c.frames), -1).mean(1) > 128
        start = c.meta["start"]
        for e in events:
            if not (start <= e < start + len(bright) / fps - 1 / fps):
                continue
            rel = e - start
            k = int(np.argmax(bright[int(rel * fps):])) + int(rel * fps)  # first lit frame at/after the event
            click = onset_time(c.wave[int(max(rel - 0.1, 0) * sr):], sr)
            assert click is not None, f"no click near {e}s in clip at {start}s"
            click += max(rel - 0.1, 0)
            assert abs(k / fps - click) <= 1 / fps + 1e-6, (e, start, k / fps, click)
            assert abs(click - rel) < 0.01  # and the click is where the source put it
            seen += 1
    assert seen >= must_see


@pytest.mark.parametrize("kind", ["plain", "audio_offset", "vfr"])
def test_flash_and_click_stay_within_one_frame(tmp_path, kind):
    cfg = _cfg("prep.stride=0.5")
    kw = {"audio_offset": {"audio_start": 0.3},
          "vfr": {"frame_times": [round(t, 4) for t in np.cumsum([0] + [0.03, 0.07] * 30)[:60]]}}.get(kind, {})
    path = write_flash_click(tmp_path / f"{kind}.mp4", EVENTS, **kw)
    p, clips = _clips(path, cfg)
    if kind == "audio_offset":
        assert p.av_offset == pytest.approx(0.3, abs=0.06)
        assert all(c.meta["start"] >= p.audio_start - 1e-6 for c in clips)  # windows inside the overlap
    _assert_in_sync(clips, cfg.data.fps, cfg.data.sample_rate, EVENTS)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_late_video_stream_keeps_flash_and_beep_on_one_frame(tmp_path, suffix):
    """The video stream starts 0.2 s after the audio (audio starts first): with the default
    decoder the flash still lands on the frame of its click, in MP4 and in Matroska."""
    cfg = _cfg("prep.stride=0.5")
    path = write_flash_click(tmp_path / f"late{suffix}", EVENTS, video_start=0.2)
    p, clips = _clips(path, cfg)
    assert p.video_start == pytest.approx(0.2, abs=0.02) and p.audio_start == pytest.approx(0.0, abs=0.06)
    assert all(c.meta["video_backend"] == "pyav" for c in clips)
    _assert_in_sync(clips, cfg.data.fps, cfg.data.sample_rate, EVENTS)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_backends_agree(tmp_path, backend):
    path = write_flash_click(tmp_path / "b.mp4", EVENTS)
    _, clips = _clips(path, _cfg("prep.stride=0.5", f"prep.video_backend={backend}"))
    _, ref = _clips(path, _cfg("prep.stride=0.5", "prep.video_backend=pyav"))
    assert all(c.meta["video_backend"] == backend for c in clips)
    for a, b in zip(clips, ref):
        assert a.meta["frame_pts"] == pytest.approx(b.meta["frame_pts"], abs=1e-4)
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_a_window_ending_at_the_end_of_the_file_keeps_its_last_frames(tmp_path, backend):
    # H.264 holds its last frames back (B-frame reordering) until the decoder is flushed: PyAV
    # used to drop them and repeat the one before (frame_pts 3.625, 3.625, 3.625 on a 4 s clip).
    from svgen.media.mp4 import write_mp4

    fps, n = 8, 32
    frames = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 7 + 10, 64, 1).repeat(64, 2).repeat(3, 3)
    path = write_mp4(tmp_path / "ramp.mp4", frames, fps=fps, wave=np.zeros(16000 * 4, np.float32), sample_rate=16000)
    _, clips = _clips(path, _cfg("data.seconds=4.0", f"prep.video_backend={backend}"))
    assert clips[-1].meta["frame_pts"] == pytest.approx(list(np.arange(n) / fps), abs=1e-4)
    means = clips[-1].frames.reshape(n, -1).mean(1)
    assert np.all(np.diff(means) > 3), means  # every frame its own, none repeated


def test_real_media(tmp_path):
    """Each real clip yields exact-size clips: VFR, audio longer than video, odd height, 8-bit PCM
    at 11.025 kHz, theora/vorbis in ogg, AVI without usable pts in decord."""
    cfg = _cfg("prep.stride=0.5")
    for f in sorted((MEDIA / "video").iterdir()):
        p, clips = _clips(f, cfg)
        assert clips, f.name
        assert max(np.abs(c.wave).max() for c in clips) > 1e-2, f"{f.name}: audio lost"
        for c in clips:
            assert c.frames.shape == (8, 64, 64, 3) and c.wave.shape == (16000,)
            assert c.meta["start"] >= max(p.video_start, p.audio_start) - 1e-6
            assert c.meta["end"] <= min(p.video_end, p.audio_end) + 1e-6


def test_dual_discs_click_position():
    """The click of DualDiscs.mov (about 1.43 s) lands at the same place in the prepared clip."""
    cfg = _cfg("prep.stride=0.25")
    p, clips = _clips(MEDIA / "video" / "07_psychtoolbox_DualDiscs.mov", cfg)
    clip = next(c for c in clips if c.meta["start"] <= 1.2 <= c.meta["end"] - 0.5)
    env = np.abs(clip.wave)
    peak = clip.meta["start"] + np.argmax(env) / cfg.data.sample_rate
    assert peak == pytest.approx(1.43, abs=1 / cfg.data.fps)


@pytest.mark.multiprocess
def test_bad_inputs_become_error_records(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = write_flash_click(src / "good.mp4", EVENTS)
    data = good.read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (src / "corrupt.mp4").write_bytes(os.urandom(5000))
    (src / "empty.mp4").write_bytes(b"")
    write_flash_click(src / "noaudio.mp4", EVENTS, audio=False)
    write_flash_click(src / "short.mp4", [0.2], duration=0.6)
    shutil.copy(MEDIA / "audio" / "perc_snap.flac", src / "novideo.mp4")
    rows = ["path,caption"] + [f"{p.name},cap {p.stem}" for p in sorted(src.iterdir())] + ["missing.mp4,none"]
    (src / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = run(str(src / "list.csv"), str(out), _cfg(), progress=False)
    errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
    by_input = {Path(e["input"]).name: e for e in errors}
    assert by_input["corrupt.mp4"]["stage"] == "probe"
    assert "zero-length" in by_input["empty.mp4"]["message"]
    assert "no audio" in by_input["noaudio.mp4"]["message"]
    assert "no video" in by_input["novideo.mp4"]["message"]
    assert "does not exist" in by_input["missing.mp4"]["message"]
    assert "shorter than one window" in by_input["short.mp4"]["message"]
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    # Nothing is silently lost: every input has clips or an error record.
    for m in manifest:
        assert m["clips"] or Path(m["input"]).name in by_input, m
    assert summary["inputs"] == len(rows) - 1
    good_clips = next(m for m in manifest if m["input"].endswith("good.mp4"))["clips"]
    assert len(good_clips) == 2  # a 3 s video whose last frame ends at 2.96 s: two 1 s windows
    # Captions flow into the shard.
    loader = make_loader(out, batch_size=1, shuffle_buffer=1)
    captions = {b["caption"][0] for b in loader}
    assert "cap good" in captions


def test_no_audio_as_silence(tmp_path):
    path = write_flash_click(tmp_path / "noaudio.mp4", EVENTS, audio=False)
    _, clips = _clips(path, _cfg("prep.no_audio=silence"))
    assert clips and all(c.meta["silent"] and not c.wave.any() for c in clips)


def _shard_contents(out: Path) -> dict[str, str]:
    import hashlib

    keys = {}
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(("video.npy", "video.jpgs")):  # the frames, raw or JPEG
                    keys[m.name.split(".")[0]] = hashlib.sha1(t.extractfile(m).read()).hexdigest()
    return keys


def _inputs(tmp_path, n):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for i in range(n):
        write_flash_click(src / f"v{i:02d}.mp4", [0.3 + 0.1 * i, 1.5], duration=2.5)
    return src


@pytest.mark.multiprocess
def test_rerun_skips_finished_shards_and_refuses_other_inputs(tmp_path):
    src = _inputs(tmp_path, 4)
    out = tmp_path / "out"
    import ray

    was_up = ray.is_initialized()
    first = run(str(src), str(out), _cfg(), progress=False)
    # The embedded cluster it started is gone with the call (a caller's own connection is kept).
    assert ray.is_initialized() == was_up
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    second = run(str(src), str(out), _cfg(), progress=False)
    assert second["shards_skipped"] == second["shards"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == mtimes
    assert second["clips_written"] == first["clips_written"] == 8
    # A finished shard truncated later, the other with a byte altered in place: both remade.
    tars = sorted(out.glob("shard-*.tar"))
    raw = tars[0].read_bytes()
    tars[0].write_bytes(raw[: len(raw) // 2])
    altered = bytearray(tars[1].read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    tars[1].write_bytes(bytes(altered))
    third = run(str(src), str(out), _cfg("prep.inputs_per_shard=2"), progress=False)
    assert third["shards_skipped"] == 0 and third["clips_written_this_run"] == 8
    from svgen.fileio import file_digest

    for t in tars:
        stats = json.loads((out / (t.name + ".stats.json")).read_text())
        assert file_digest(t) == {"size": stats["bytes"], "sha256": stats["sha256"]}
    assert run(str(src), str(out), _cfg(), progress=False)["shards_skipped"] == 2  # whole again: kept
    write_flash_click(src / "v99.mp4", [0.5], duration=2.5)
    with pytest.raises(PrepError, match="another input list"):
        run(str(src), str(out), _cfg(), progress=False)


@pytest.mark.multiprocess
def test_killed_run_resumes_to_the_same_shards(tmp_path):
    src = _inputs(tmp_path, 6)
    ref = tmp_path / "ref"
    run(str(src), str(ref), _cfg("prep.inputs_per_shard=1"), progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep", "--input", str(src), "--output", str(out), "--config", str(TINY),
           "--set", "prep.inputs_per_shard=1", "--set", "prep.workers=1", "--set", "prep.executor=ray", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.stats.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*.stats.json")))
    assert 2 <= done_before < 6, "the run should be killed part-way"
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    # A shard task in flight at the kill may still finish (Ray workers outlive the driver for a
    # moment): the re-run then skips it too.
    assert done_before <= summary["shards_skipped"] < 6
    assert _shard_contents(out) == _shard_contents(ref)  # same clips, no duplicates, same bytes
    keys = [k for k in _shard_contents(out)]
    assert len(keys) == len(set(keys)) == 12


@pytest.mark.multiprocess
def test_input_formats(tmp_path):
    src = _inputs(tmp_path, 2)
    exts = [".mp4"]
    assert [Path(i.path).name for i in discover(src, exts)] == ["v00.mp4", "v01.mp4"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "in/v01.mp4", "caption": "hit", "start": 0.5, "end": 2.0}) + "\n")
    (item,) = discover(tmp_path / "m.jsonl", exts)
    assert item.caption == "hit" and item.start == 0.5 and item.end == 2.0 and Path(item.path).is_file()
    (tmp_path / "gh.txt").write_text('in/v00.mp4,a stick hits wood\nin/v01.mp4,scratch\n'
                                     'in/v00.mp4,"A person hits a cup, and a desk rattles."\n'
                                     'in/v01.mp4,unquoted, with a comma\n')
    items = discover(tmp_path / "gh.txt", exts)
    assert [i.caption for i in items] == ["a stick hits wood", "scratch", "A person hits a cup, and a desk rattles.",
                                          "unquoted, with a comma"]
    assert all(Path(i.path).is_file() for i in items)
    (tmp_path / "bad.csv").write_text("file,caption\nx.mp4,y\n")
    with pytest.raises(InputError, match="'path' column"):
        discover(tmp_path / "bad.csv", exts)
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "nope", exts)
    # A manifest sub-range limits the windows.
    out = tmp_path / "out"
    run(str(tmp_path / "m.jsonl"), str(out), _cfg(), progress=False)
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest[0]["clips"]) == 1


@pytest.mark.multiprocess
def test_shards_decode_without_pickle(tmp_path):
    src = _inputs(tmp_path, 2)
    out = tmp_path / "out"
    run(str(src), str(out), _cfg("prep.inputs_per_shard=1"), progress=False)
    with tarfile.open(out / "shard-000000.tar") as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    key = sorted(members)[0].split(".")[0]
    sample = {"__key__": key, **{n[len(key) + 1:]: b for n, b in members.items() if n.startswith(key)}}
    s = decode_sample(sample)
    assert s["frames"].dtype == np.uint8 and s["mel"].shape == (100, 64)
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    assert "video.jpgs" in sample and "video.npy" not in sample  # frames are JPEG by default
    sample["video_offsets.npy"] = buf.getvalue()
    with pytest.raises(ValueError, match="pickle"):
        decode_sample(sample)


def _rms_envelope(x: np.ndarray, hop: int = 160) -> np.ndarray:
    return np.sqrt(np.mean(x[: len(x) // hop * hop].reshape(-1, hop) ** 2, axis=1))


def test_ogg_vorbis_audio_is_decoded_whole_not_scattered():
    """The Theora/Vorbis twin of movie-hello carries thousands of empty packets and timestamps that
    do not advance with the samples. Its audio must come out whole (no stretches of exact zeros)
    and match its .avi twin's loudness contour. (The two files themselves are offset by about
    100 ms: ffmpeg's own decoding of each shows the same lag, and ours of the .ogg equals ffmpeg's.)"""
    from data_prep.audio import decode_audio_span

    ogg = decode_audio_span(str(MEDIA / "video" / "02_forensics_movie-hello.ogg"), 0.5, 8.0, 16000)
    avi = decode_audio_span(str(MEDIA / "video" / "02_forensics_movie-hello.avi"), 0.5, 8.0, 16000)
    assert ogg.covered.all() and np.mean(ogg.wave == 0) < 0.01      # was 35-79 % exact zeros
    ea, eb = _rms_envelope(ogg.wave), _rms_envelope(avi.wave)

    def corr(lag: int) -> float:
        x, y = ea[max(0, lag):len(ea) + min(0, lag)], eb[max(0, -lag):len(eb) - max(0, lag)]
        return float(np.corrcoef(x, y)[0, 1])

    best = max(range(-15, 16), key=corr)                           # +-150 ms in 10 ms steps
    assert corr(best) > 0.95, (best, corr(best))


def _write_gappy_audio(path, gap=(1.0, 2.0), duration=3.0, sr=16000, fps=8):
    """Video over [0, duration); AAC audio over [0, duration) except a silent-free gap in time
    (no packets at all between gap[0] and gap[1])."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream("aac", rate=sr)
        as_.layout = "mono"
        for k in range(int(duration * fps)):
            fr = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * (k % 20), np.uint8), format="rgb24")
            fr.pts, fr.time_base = k, Fraction(1, fps)
            out.mux(vs.encode(fr))
        out.mux(vs.encode())
        t = np.arange(1024) / sr
        for s in range(0, int(duration * sr), 1024):
            if gap[0] * sr <= s < gap[1] * sr:
                continue
            chunk = (0.3 * np.sin(2 * np.pi * 440 * (t + s / sr))).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = sr, s, Fraction(1, sr)
            out.mux(as_.encode(af))
        out.mux(as_.encode())
    return path


def test_a_window_without_its_audio_becomes_an_error_record_not_silence(tmp_path):
    path = _write_gappy_audio(tmp_path / "gap.mp4", gap=(1.0, 1.98))  # 1024-sample frames: audio resumes at 1.984 s
    cfg = _cfg()                                        # 1 s windows at 0, 1, 2 s
    p, err = probe(str(path))
    assert err is None, err
    windows, err = plan_windows(p, cfg.data, cfg.prep)
    assert err is None and len(windows) == 3
    results = list(decode_clips(p, windows, cfg.data, cfg.prep))
    good = [c for c, e in results if c is not None]
    bad = [e for c, e in results if e is not None]
    assert [c.meta["window"] for c in good] == [0, 2]
    assert len(bad) == 1 and bad[0].stage == "decode_audio" and "window 1 at 1.000s" in bad[0].message
    assert "skipped rather than padded with silence" in bad[0].message
    for c in good:                                      # the windows that are kept are whole
        assert np.mean(np.abs(c.wave) < 1e-4) < 0.05


def test_surround_downmix_matches_ffmpeg_ac1():
    from data_prep.audio import channel_weights

    names = ["FL", "FR", "FC", "LFE", "BL", "BR"]
    w = channel_weights(names)
    assert w[names.index("LFE")] == 0 and w.sum() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(2 ** 0.5) and w[4] / w[0] == pytest.approx(2 ** -0.5)  # BS.775
    assert channel_weights(["FL", "FR"]).tolist() == [0.5, 0.5]    # stereo: the plain mean, as before
    assert channel_weights(["FC"]).tolist() == [1.0]
    assert channel_weights(["NONE"] * 6).tolist() == w.tolist()    # untagged 6 channels: read as 5.1


def _write_six_channels(path: Path, channel: int, tagged: bool, sr: int = 16000) -> Path:
    """One second of a 300 Hz tone in one of six channels of a 16-bit WAV; ``tagged``: a
    WAVE_FORMAT_EXTENSIBLE header with the 5.1 channel mask, else a plain PCM header that names
    no layout (what ffmpeg reads as '6 channels')."""
    import struct

    x = np.zeros((sr, 6), np.int16)
    x[:, channel] = (8000 * np.sin(2 * np.pi * 300 * np.arange(sr) / sr)).astype(np.int16)
    data = x.tobytes()
    if tagged:
        fmt = struct.pack("<HHIIHHHHIH14s", 0xFFFE, 6, sr, sr * 12, 12, 16, 22, 16, 0x3F, 1,
                          b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    else:
        fmt = struct.pack("<HHIIHH", 1, 6, sr, sr * 12, 12, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize("tagged", [True, False])
def test_a_six_channel_file_decodes_as_ffmpeg_ac1_does(tmp_path, tagged):
    """Each channel's weight in the decoded mono against the static ffmpeg's `-ac 1` on the same
    file: 5.1 with its mask, and 6 channels without one (ffmpeg assumes 5.1 and drops the LFE)."""
    import imageio_ffmpeg

    from data_prep.audio import decode_audio_span

    ours, theirs = [], []
    for ch in range(6):
        path = _write_six_channels(tmp_path / f"c{ch}_{tagged}.wav", ch, tagged)
        ours.append(np.sqrt(np.mean(decode_audio_span(str(path), 0.1, 0.9, 16000).wave ** 2)))
        raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-ac", "1", "-f", "s16le",
                              "-"], capture_output=True, check=True).stdout
        y = np.frombuffer(raw, np.int16).astype(np.float32)[1600:14400] / 32768.0
        theirs.append(np.sqrt(np.mean(y ** 2)))
    ours, theirs = np.array(ours), np.array(theirs)
    assert ours[3] < 1e-4 and theirs[3] < 1e-4                      # the LFE is dropped
    np.testing.assert_allclose(ours / ours[0], theirs / theirs[0], rtol=0.02)
    assert ours[2] / ours[0] == pytest.approx(2 ** 0.5, rel=0.02)    # the centre at +3 dB over a front channel


def _write_mpeg_ps(path, seconds=2.5, fps=25, sr=44100):
    """An MPEG-1 program stream (.mpeg): mpeg1video + mp2 audio, a click at 1.0 s."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w", format="mpeg") as out:
        vs = out.add_stream("mpeg1video", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        as_ = out.add_stream("mp2", rate=sr)
        as_.layout = "mono"
        for k in range(int(seconds * fps)):
            fr = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 255 if 1.0 <= k / fps < 1.2 else 0, np.uint8), format="rgb24")
            fr.pts, fr.time_base = k, Fraction(1, fps)
            out.mux(vs.encode(fr))
        out.mux(vs.encode())
        wave = np.zeros(int(seconds * sr), np.float32)
        wave[sr: sr + 200] = 0.8
        for s in range(0, len(wave), 1152):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[s:s + 1152][None]), format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = sr, s, Fraction(1, sr)
            out.mux(as_.encode(af))
        out.mux(as_.encode())
    return path


@pytest.mark.multiprocess
def test_every_file_of_a_folder_is_accounted_for(tmp_path):
    """Probe, not the extension, decides what is media: every regular file of a folder input yields
    clips or an error record with its reason, and the summary's inputs equal the files."""
    import av

    src = tmp_path / "in"
    src.mkdir()
    write_flash_click(src / "good.mp4", EVENTS)
    _write_mpeg_ps(src / "program.mpeg")
    with av.open(str(src / "speech.m4a"), "w", format="mp4") as out:   # audio only
        st = out.add_stream("aac", rate=16000)
        st.layout = "mono"
        for s in range(0, 16000, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, s
            out.mux(st.encode(af))
        out.mux(st.encode())
    (src / "notes.mp4").write_text("this is a text file with a video extension\n")
    (src / "empty.mov").write_bytes(b"")
    (src / "sub").mkdir()
    shutil.copy(MEDIA / "audio" / "perc_snap.flac", src / "sub" / "snap.wav")
    os.symlink(src / "gone.mp4", src / "dangling.mp4")
    files = [p for p in src.rglob("*") if p.is_file() or p.is_symlink()]
    assert len(files) == 7
    out = tmp_path / "out"
    # The default shard sizing (16 inputs at most, at least 64 shards): 7 inputs -> 7 shards of one,
    # so a small corpus keeps every worker busy.
    cfg = _cfg("prep.inputs_per_shard=16", "prep.min_shards=64")
    summary = run(str(src), str(out), cfg, progress=False)
    assert summary["inputs"] == len(files) and summary["shards"] == len(files)
    errors = {Path(e["input"]).name: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    manifest = {Path(m["input"]).name: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert set(manifest) == {p.name for p in files}
    for name, m in manifest.items():
        assert m["clips"] or name in errors, name
    assert manifest["good.mp4"]["clips"] and manifest["program.mpeg"]["clips"]
    assert "no video stream" in errors["speech.m4a"]["message"] and "no video stream" in errors["snap.wav"]["message"]
    assert "not a media file" in errors["notes.mp4"]["message"]
    assert "zero-length" in errors["empty.mov"]["message"]
    assert "dangling symbolic link" in errors["dangling.mp4"]["message"]
    assert summary["clips_written_this_run"] == summary["clips_written"] > 0
    # The input counts are disjoint and add up (an input may have clips and errors both).
    parts = ("inputs_with_clips_only", "inputs_with_clips_and_errors", "inputs_with_errors_only", "inputs_with_neither")
    assert sum(summary[k] for k in parts) == summary["inputs"]
    assert summary["inputs_with_clips"] == summary["inputs_with_clips_only"] + summary["inputs_with_clips_and_errors"]

    # A re-run does no work and says so (no made-up rate), and clears temporaries that a killed
    # earlier run left behind, but not one still being written.
    stale, live = out / ".shard-000009.tar.123.abcd.tmp", out / ".shard-000010.tar.456.ef01.tmp"
    stale.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    again = run(str(src), str(out), cfg, progress=False)
    assert again["clips_written_this_run"] == 0 and again["clips_per_second"] == 0.0
    assert again["shards_skipped"] == again["shards"] and again["clips_written"] == summary["clips_written"]
    assert not stale.exists()
    live.write_bytes(b"y")
    os.utime(live, (time.time() + 60, time.time() + 60))  # touched after the run started
    run(str(src), str(out), cfg, progress=False)
    assert live.exists()  # a writer may still own it


def test_a_window_with_corrupted_video_becomes_an_error_record(tmp_path):
    """Bytes destroyed in the middle of a file: the windows around the damage become error records
    that say so in words, the others keep their clips (no stale or concealed frames kept)."""
    import av
    from fractions import Fraction

    rng = np.random.default_rng(0)
    path = tmp_path / "noise.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        vs = out.add_stream("libx264", rate=8)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for k in range(32):
            fr = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            fr.pts, fr.time_base = k, Fraction(1, 8)
            out.mux(vs.encode(fr))
        out.mux(vs.encode())
        for s in range(0, 64000, 1024):
            af = av.AudioFrame.from_ndarray((0.1 * rng.standard_normal((1, 1024))).astype(np.float32),
                                            format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = 16000, s, Fraction(1, 16000)
            out.mux(a.encode(af))
        out.mux(a.encode())
    data = bytearray(path.read_bytes())
    n = len(data)
    data[n // 2: n // 2 + n // 20] = rng.integers(0, 256, n // 20, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    cfg = _cfg()
    p, err = probe(str(bad))
    assert err is None, err
    windows, _ = plan_windows(p, cfg.data, cfg.prep)
    results = list(decode_clips(p, windows, cfg.data, cfg.prep))
    errors = [e for _, e in results if e is not None]
    kept = [c for c, _ in results if c is not None]
    assert errors and kept, results
    for e in errors:
        assert e.stage in ("decode_video", "decode_audio")
        assert "corrupted or truncated" in e.message and "window" in e.message
    # The intact file gives every window: the damage, not the decoder, removed the others.
    p_ok, _ = probe(str(path))
    assert all(e is None for _, e in decode_clips(p_ok, plan_windows(p_ok, cfg.data, cfg.prep)[0], cfg.data, cfg.prep))


def test_a_small_corpus_is_spread_over_many_shards():
    """With the default 16 inputs per shard, 14 inputs used to make one shard: one busy worker.
    Shards shrink (to one input each) until there are min_shards of them, from the input count
    alone, so a re-run on a bigger cluster finds the same shards."""
    from data_prep.run import shard_size

    d = load_config(ROOT / "configs" / "greatesthits.yaml").prep
    assert (d.inputs_per_shard, d.min_shards) == (16, 64)
    assert shard_size(14, 16, 64) == 1 and shard_size(64 * 5, 16, 64) == 5 and shard_size(200_000, 16, 64) == 16
    assert shard_size(0, 16, 64) == 1


def test_jpeg_frames_round_trip_and_are_much_smaller():
    from svgen.shards import encode_sample

    rng = np.random.default_rng(0)
    # A smooth moving pattern (what video looks like), not white noise (which no codec shrinks).
    yy, xx = np.mgrid[0:256, 0:256]
    frames = np.stack([np.stack([(xx + 8 * k) % 256, (yy + 4 * k) % 256, (xx + yy) // 2 % 256], -1)
                       for k in range(32)]).astype(np.uint8)
    wave = (0.1 * rng.standard_normal(64000)).astype(np.float32)
    jpeg = encode_sample("000000_0000", frames, wave, {"fps": 8}, jpeg_quality=90)
    raw = encode_sample("000000_0000", frames, wave, {"fps": 8}, jpeg_quality=0)
    assert len(jpeg["video.jpgs"]) * 8 < len(raw["video.npy"])
    back = decode_sample(jpeg)["frames"]
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
    assert np.array_equal(decode_sample(raw)["frames"], frames)


@pytest.mark.multiprocess
def test_no_process_of_a_killed_prep_run_survives(tmp_path):
    """kill -9 of the driver alone (not its process group): Ray's dashboard and runtime-env agents
    used to live on, adopted by init. The watchdog ends every process the cluster started."""
    import psutil

    src = _inputs(tmp_path, 6)
    out = tmp_path / "out"
    t0 = time.time()
    cmd = [sys.executable, "-m", "data_prep", "--input", str(src), "--output", str(out), "--config", str(TINY),
           "--set", "prep.inputs_per_shard=1", "--set", "prep.workers=1", "--set", "prep.executor=ray", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*.stats.json")):
        time.sleep(0.05)
    ours = [p for p in psutil.Process(proc.pid).children(recursive=True)]
    assert any("raylet" in " ".join(p.cmdline()) for p in ours if p.is_running())  # the cluster was up
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ours):
        time.sleep(0.2)
    left = [" ".join(p.cmdline())[:80] for p in ours if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
    orphans = [p for p in psutil.process_iter(["ppid", "cmdline", "create_time"])
               if p.info["ppid"] == 1 and p.info["create_time"] > t0 and (p.info["cmdline"] or [""])[0].startswith("ray::")]
    assert not orphans, [o.info["cmdline"] for o in orphans]


@pytest.mark.multiprocess
def test_no_process_survives_a_driver_killed_inside_ray_init(tmp_path):
    """kill -9 while ray.init is still starting the cluster (its folder exists, its agents are
    coming up): the watchdog, started before the cluster, leaves no process naming the cluster's
    folder, and removes the folder."""
    import psutil

    from data_prep.reaper import cluster_temp_dir

    src = _inputs(tmp_path, 2)
    cmd = [sys.executable, "-m", "data_prep", "--input", str(src), "--output", str(tmp_path / "out"), "--config",
           str(TINY), "--set", "prep.executor=ray", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = cluster_temp_dir(proc.pid)
    deadline = time.time() + 60
    while time.time() < deadline and not any(Path(folder).glob("session_*")):
        time.sleep(0.02)
    assert any(Path(folder).glob("session_*")), "the cluster never started"
    time.sleep(0.3)  # inside ray.init: the GCS is up, the raylet and agents are starting
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def left() -> list[str]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if folder in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(" ".join(p.info["cmdline"])[:100])
            except psutil.NoSuchProcess:
                continue
        return out

    deadline = time.time() + 20
    while time.time() < deadline and (left() or Path(folder).exists()):
        time.sleep(0.2)
    assert not left() and not Path(folder).exists(), left()


def _write_aac_mp4(path: Path, bad_packets: range, seconds: float = 1.0, sr: int = 48000) -> Path:
    """H.264 + AAC (48 kHz) mp4, a 440 Hz tone; the audio packets of ``bad_packets`` (by index,
    0 = the encoder's priming frame at pts 0) are replaced by garbage the decoder rejects."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream("aac", rate=sr)
        as_.layout = "mono"
        for i in range(int(25 * seconds)):
            fr = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 + i, np.uint8), format="rgb24")
            fr.pts = i
            for pk in vs.encode(fr):
                out.mux(pk)
        for pk in vs.encode():
            out.mux(pk)
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)
        packets = []
        for s in range(0, len(wave), 1024):
            af = av.AudioFrame.from_ndarray(wave[s:s + 1024][None], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = sr, s, Fraction(1, sr)
            packets += as_.encode(af)
        packets += as_.encode()
        rng = np.random.default_rng(0)
        for i, pk in enumerate(packets):
            pk.pts += 1024  # the priming frame at 0, no edit list: the audio is declared from 0
            pk.dts += 1024
            if i in bad_packets:
                bad = av.Packet(rng.integers(0, 256, len(bytes(pk)), dtype=np.uint8).tobytes())
                bad.pts, bad.dts, bad.time_base, bad.stream = pk.pts, pk.dts, pk.time_base, pk.stream
                pk = bad
            out.mux(pk)
    return path


def test_a_first_aac_frame_decoded_late_is_padded_as_ffmpeg_does_and_kept(tmp_path):
    """The first AAC frame is rejected by the decoder, so the first decoded audio starts at
    21 ms while the stream is declared from 0 (as with encoder priming): the window is kept, its
    first 21 ms silent, and says so; a hole inside the stream still costs the window."""
    cfg = _cfg()
    p, clips = _clips(_write_aac_mp4(tmp_path / "late.mp4", range(0, 1)), cfg)
    assert p.audio_start == 0.0 and len(clips) == 1
    (clip,) = clips
    assert clip.meta["audio_edge_pad"] == pytest.approx(1024 / 48000, abs=2e-3)
    lead = int(0.02 * cfg.data.sample_rate)
    assert np.abs(clip.wave[:lead - 40]).max() < 1e-3 and np.abs(clip.wave[lead + 400:]).max() > 0.1

    p = probe(str(_write_aac_mp4(tmp_path / "hole.mp4", range(20, 26))))[0]
    windows, _ = plan_windows(p, cfg.data, cfg.prep)
    results = list(decode_clips(p, windows, cfg.data, cfg.prep))
    assert [c for c, _ in results] == [None]
    assert "audio missing or undecodable for 0.1" in results[0][1].message


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_a_hole_in_the_video_becomes_an_error_record_not_repeated_frames(tmp_path, suffix, backend):
    """One second of video frames missing (5.0-6.0 s) with the audio intact: the windows that
    reach into the hole are error records naming it; the others are kept, each frame its own."""
    fps = 25
    times = [round(k / fps, 4) for k in range(8 * fps) if not 5.0 <= k / fps < 6.0]
    path = write_flash_click(tmp_path / f"hole{suffix}", [1.0, 7.0], duration=8.0, frame_times=times)
    cfg = _cfg(f"prep.video_backend={backend}")
    p = probe(str(path))[0]
    windows, err = plan_windows(p, cfg.data, cfg.prep)
    assert err is None and len(windows) >= 7
    results = list(decode_clips(p, windows, cfg.data, cfg.prep))
    bad = {int(e.message.split()[1]): e.message for c, e in results if e is not None}
    assert set(bad) == {5}, bad                                             # [5, 6) lies in the hole
    assert "video missing between 4.960s and 6.000s" in bad[5]
    kept = [c for c, _ in results if c is not None]
    for c in kept:
        gaps = np.abs(np.asarray(c.meta["frame_pts"]) - (c.meta["start"] + np.arange(8) / 8))
        assert gaps.max() <= 1 / fps + 1e-3


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_windows_decoded_group_by_group_with_seeks_equal_one_pass(tmp_path, suffix):
    """A long input is decoded in groups of windows, each reached by seeking (memory bounded by a
    group, not by the input): the clips equal those of one pass from the start, frame for frame,
    and sample for sample in MP4. Matroska stores timestamps in whole milliseconds, so audio
    placed from a timestamp after a seek may sit up to half a millisecond off the sample count
    of a pass from the start: within 0.6 ms there."""
    events = [1.3 + 2.7 * k for k in range(11)]
    path = write_flash_click(tmp_path / f"long{suffix}", events, duration=30.0)
    cfg = _cfg()
    p = probe(str(path))[0]
    windows, _ = plan_windows(p, cfg.data, cfg.prep)
    one = list(decode_clips(p, windows, cfg.data, cfg.prep, group_seconds=1e9))
    grouped = list(decode_clips(p, windows, cfg.data, cfg.prep, group_seconds=4.0))
    assert len(one) == len(grouped) == len(windows) >= 29
    for (a, ea), (b, eb) in zip(one, grouped):
        assert ea is None and eb is None, (ea, eb)
        assert a.meta["frame_pts"] == b.meta["frame_pts"]
        assert np.array_equal(a.frames, b.frames)
        if suffix == ".mp4":
            np.testing.assert_allclose(a.wave, b.wave, atol=1e-6)
        elif np.abs(a.wave).max() > 0.1:  # a window with a click in it: how far apart are they?
            lags = range(-16, 17)
            corr = [np.corrcoef(np.roll(b.wave, -k)[16:-16], a.wave[16:-16])[0, 1] for k in lags]
            best = lags[int(np.argmax(corr))]
            assert abs(best) <= 0.0006 * cfg.data.sample_rate and max(corr) > 0.9, (best, max(corr))
    _assert_in_sync([c for c, _ in grouped], cfg.data.fps, cfg.data.sample_rate, events, must_see=10)


@pytest.mark.multiprocess
def test_local_worker_processes_write_the_same_shards_as_ray(tmp_path):
    """prep.executor=local (what 'auto' picks for a small job on one machine): the same stage
    code without a Ray cluster; the shards hold the same clips, frame for frame."""
    src = _inputs(tmp_path, 4)
    by = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        summary = run(str(src), str(out), _cfg(f"prep.executor={executor}"), progress=False)
        assert summary["executor"] == executor and summary["clips_written"] == 8
        by[executor] = {c["key"]: c for c in map(dict, _all_clips(out))}
    assert by["local"].keys() == by["ray"].keys()
    for k in by["local"]:
        assert np.array_equal(by["local"][k]["frames"], by["ray"][k]["frames"])
        assert np.array_equal(by["local"][k]["wave"], by["ray"][k]["wave"])
    from data_prep.run import choose_executor

    cfg = _cfg()
    assert choose_executor(cfg.prep, None, 10) == "local" and choose_executor(cfg.prep, None, 10_000) == "ray"
    assert choose_executor(cfg.prep, "127.0.0.1:6379", 10) == "ray"


def _all_clips(out: Path):
    from svgen.data.loader import ClipStream
    from svgen.data.source import resolve_shards

    return list(ClipStream(list(resolve_shards(out).urls), shuffle_buffer=1))


def _crash_once(marker: str, k: int) -> dict:
    """A task whose first attempt at k = 1 kills its worker process outright."""
    flag = Path(marker) / f"tried{k}"
    if k == 1 and not flag.exists():
        flag.write_text("x")
        os._exit(1)
    if k == 2:
        raise ValueError("shard 2 is always bad")
    return {"num_clips": k}


def test_local_workers_survive_a_crashed_worker_and_retry(tmp_path):
    from data_prep.local import run_local

    done = {}
    run_local(_crash_once, lambda k: (str(tmp_path), k), [0, 1, 2, 3], workers=2, max_retries=1,
              on_done=lambda k, r, e: done.__setitem__(k, (r, e)))
    assert done[0] == ({"num_clips": 0}, None) and done[3] == ({"num_clips": 3}, None)
    assert done[1] == ({"num_clips": 1}, None)                       # the pool was rebuilt, the shard retried
    assert done[2][0] is None and "shard 2 is always bad" in done[2][1]


@pytest.mark.multiprocess
def test_no_local_worker_survives_a_killed_driver(tmp_path):
    import psutil

    src = _inputs(tmp_path, 6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep", "--input", str(src), "--output", str(out), "--config", str(TINY),
           "--set", "prep.inputs_per_shard=1", "--set", "prep.workers=2", "--set", "prep.executor=local",
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*.stats.json")):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "no worker process was running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_cli_exit_keeps_its_report_and_codes(tmp_path):
    """`python -m data_prep` leaves without tearing the interpreter down (local executor): the
    report still reaches a pipe whole, the summary is on disk, the exit code is the run's (1 with
    a failed shard, 2 for a bad input), and no worker outlives it."""
    import psutil

    src = _inputs(tmp_path, 2)
    out = tmp_path / "out"
    base = [sys.executable, "-m", "data_prep", "--config", str(TINY), "--set", "prep.executor=local", "--no-progress"]
    proc = subprocess.Popen(base + ["--input", str(src), "--output", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["executor"] == "local" and summary["clips_written"] > 0
    assert stdout.rstrip().endswith(f"summary: {out / 'summary.json'}")       # the last line of the report
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
    bad = subprocess.run(base + ["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o2")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'broken.mp4'},a caption\n")
    failed = subprocess.run(base + ["--input", str(listing), "--output", str(tmp_path / "o3")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert "summary:" in failed.stdout
    want = 1 if json.loads((tmp_path / "o3" / "summary.json").read_text())["shards_failed"] else 0
    assert failed.returncode == want
