"""Data-prep throughput (issue 3), all on the same inputs in one run:

- decode alone: probe + window planning + frame/audio decode, one process (the limit);
- the full pipeline (Ray tasks, resize, mel, shard writing, stats) with 1 and with 2 workers;
- their ratio (full at 1 worker / decode alone; target >= 0.8) and the 1 -> 2 worker speed-up
  (Ray started before timing: the steady-state rate of a running cluster);
- end to end: the default command as a user runs it, in its own process, wall time and CPU of
  its whole process tree from start to exit (Ray's start-up and daemons included), and a peer's
  command (--peer) measured the same way, so the two compare on equal terms (issue 21, item 9).

    python benchmarks/data_prep.py [--videos 8] [--seconds 12] [--config configs/greatesthits.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data_prep.run import init_ray, run  # noqa: E402
from data_prep.decode import decode_clips  # noqa: E402
from data_prep.probe import probe  # noqa: E402
from data_prep.windows import plan_windows  # noqa: E402
from svgen.testing.media import write_benchmark_corpus  # noqa: E402
from svgen.config import load_config  # noqa: E402


def _cpu_seconds() -> float:
    """User + system CPU time so far of this process and every Ray worker process."""
    import psutil

    total = sum(psutil.Process().cpu_times()[:2])
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith("ray::"):
                total += sum(p.cpu_times()[:2])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _warm() -> None:
    import data_prep.shard  # noqa: F401


def _video2dataset_command(src: Path, tmp: Path, v2d: str, config: str, sets: list[str]) -> str:
    """video2dataset (the peer of issue 21) on the same inputs and settings: the same 4 s windows
    (given as its clip column, since it cuts only where told), 8 fps, 256 px centre crop, 16 kHz
    mono audio, as many processes as svgen's workers; its output folder is {output}."""
    import json

    from data_prep.probe import probe
    from data_prep.windows import plan_windows

    cfg = load_config(config, sets)
    rows = []
    for f in sorted(src.iterdir()):
        p, err = probe(str(f))
        if err is not None:
            continue
        windows, _ = plan_windows(p, cfg.data, cfg.prep)
        rows.append({"url": str(f), "caption": "clip", "clips": [[round(w.start, 3), round(w.end, 3)] for w in windows]})
    # Its clip column must be a list column (a CSV cell stays a string): parquet, written by the
    # peer's own Python before the timing starts.
    (tmp / "peer_list.json").write_text(json.dumps(rows))
    python = Path(v2d).parent / "python"
    subprocess.run([str(python), "-c", "import json, sys, pyarrow as pa, pyarrow.parquet as pq; "
                    "pq.write_table(pa.Table.from_pylist(json.load(open(sys.argv[1]))), sys.argv[2])",
                    str(tmp / "peer_list.json"), str(tmp / "peer_list.parquet")], check=True)
    workers = cfg.prep.workers or 2
    (tmp / "peer.yaml").write_text(f"""subsampling:
    ClippingSubsampler:
        args: {{min_length: {cfg.data.seconds}, max_length: {cfg.data.seconds}, precision: "exact"}}
    ResolutionSubsampler:
        args: {{video_size: {cfg.data.size}, resize_mode: "scale,crop"}}
    FrameSubsampler:
        args: {{frame_rate: {cfg.data.fps}}}
    AudioRateSubsampler:
        args: {{sample_rate: {cfg.data.sample_rate}, n_audio_channels: 1, encode_format: "wav"}}
reading: {{timeout: 60, sampler: null, yt_args: {{}}}}
storage: {{number_sample_per_shard: 16, oom_shard_count: 5, captions_are_subtitles: False}}
distribution: {{processes_count: {workers}, thread_count: {workers}, subjob_size: 1000, distributor: "multiprocessing"}}
""")
    # Two bugs of video2dataset 1.3.0 make any audio or frame-rate subsampling crash, and the shim
    # fixes just those, leaving its work as it is: the worker reads `encode_formats` off its first
    # audio and video subsampler, which those classes never set (set here to the format each was
    # given); and FrameSubsampler / AudioRateSubsampler pop and re-insert the stream while the
    # worker iterates over the streams (they are given a copy here, and the result is written back).
    # Audio is kept as wav: with m4a its extraction runs `ffmpeg -f m4a`, not a muxer ffmpeg knows,
    # and every clip silently loses its sound (wav is also the cheapest format to write).
    (tmp / "peer_shim.py").write_text(
        "import sys\n"
        "from video2dataset.subsamplers import audio_rate_subsampler as a, frame_subsampler as f, "
        "resolution_subsampler as r\n"
        "for cls, kind in ((a.AudioRateSubsampler, 'audio'), (f.FrameSubsampler, 'video'), "
        "(r.ResolutionSubsampler, 'video')):\n"
        "    cls.encode_formats = property(lambda self, kind=kind: {kind: self.encode_format})\n"
        "    def call(self, streams, metadata=None, _orig=cls.__call__):\n"
        "        out, metas, err = _orig(self, dict(streams), metadata)\n"
        "        streams.update(out)\n"
        "        return streams, metas, err\n"
        "    cls.__call__ = call\n"
        "if __name__ == '__main__':\n"
        "    from video2dataset.main import main\n"
        "    sys.argv[0] = 'video2dataset'\n"
        "    sys.exit(main())\n")
    return (f"{python} {tmp / 'peer_shim.py'} --url_list {tmp / 'peer_list.parquet'} --input_format parquet --url_col url --caption_col caption "
            f"--clip_col clips --output_folder {{output}} --output_format webdataset "
            f"--encode_formats '{{{{\"video\": \"mp4\", \"audio\": \"wav\"}}}}' --config {tmp / 'peer.yaml'}")


def _webdataset_count(folder: Path) -> int:
    """Samples with a video in the tars of ``folder``."""
    import tarfile

    n = 0
    for t in folder.glob("*.tar"):
        with tarfile.open(t) as tf:
            n += sum(1 for m in tf.getmembers() if m.name.endswith(".mp4"))
    return n


def end_to_end(src: Path, tmp: Path, args) -> None:
    """The default command from start to exit, in a process of its own (Ray's start-up, GCS,
    raylet, agents, workers and shut-down all counted), and the peer's command the same way when
    --peer is given: clips/s and CPU seconds per clip of the whole process tree."""
    import json
    import os
    import sys

    from proctree import run_measured

    from data_prep.reaper import cluster_temp_dir

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rates = {}
    for label, extra in (("default (auto)", []), ("prep.executor=ray", ["--set", "prep.executor=ray"])):
        out = tmp / f"e2e{len(rates)}"
        cmd = [sys.executable, "-m", "data_prep", "--input", str(src), "--output", str(out), "--config", args.config,
               "--no-progress", *sum((["--set", s] for s in args.set), []), *extra]
        # The driver's pid names its cluster's folder: mark every process that names the prefix.
        r = run_measured(cmd, marker=os.path.dirname(cluster_temp_dir(0)) + "/svgen-ray-", env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        summary = json.loads((out / "summary.json").read_text()) if r["returncode"] == 0 else {}
        clips = summary.get("clips_written", 0)
        rates[label] = clips / r["seconds"]
        print(f"end to end, `python -m data_prep` {label} ({summary.get('executor', '?')}): {clips} clips in "
              f"{r['seconds']:.1f} s = {clips / r['seconds']:.2f} clips/s, {r['cpu_seconds'] / max(clips, 1):.3f} CPU s "
              f"per clip over {r['processes']} processes (start-up and shut-down included)")
    if args.video2dataset and not args.peer:
        args.peer = _video2dataset_command(src, tmp, args.video2dataset, args.config, args.set)
    if args.peer:
        peer_out = tmp / "peer"
        peer_cmd = args.peer.format(input=src, output=peer_out)
        p = run_measured(["bash", "-c", peer_cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n = args.peer_clips or _webdataset_count(peer_out)
        if p["returncode"] != 0 or n == 0:
            print(f"peer failed (exit {p['returncode']}, {n} clips in {peer_out}): not compared")
            return
        print(f"peer ({peer_cmd[:80]}...): {p['seconds']:.1f} s, {p['cpu_seconds']:.1f} CPU s over {p['processes']} "
              f"processes; at {n} clips: {n / p['seconds']:.2f} clips/s, {p['cpu_seconds'] / max(n, 1):.3f} CPU s per "
              f"clip; svgen (default) / peer clips/s: {rates['default (auto)'] / (n / p['seconds']):.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--size", type=int, default=320, help="source frame size in pixels")
    ap.add_argument("--config", default=str(ROOT / "configs" / "greatesthits.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--input", default=None, help="a folder of real videos instead of the synthetic corpus")
    ap.add_argument("--peer", default=None, help="a peer's command, with {input} and {output}, measured the same "
                                                 "way end to end (e.g. a video2dataset call)")
    ap.add_argument("--peer-clips", type=int, default=0, help="clips the peer writes (default: counted in its tars, "
                                                             "else as many as svgen)")
    ap.add_argument("--video2dataset", default=None, help="path of a video2dataset executable: the peer, set up on "
                                                           "the same windows and settings")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        src = Path(args.input) if args.input else write_benchmark_corpus(tmp / "in", args.videos, args.seconds, args.size)
        cfg = load_config(args.config, ["prep.inputs_per_shard=1"] + args.set)
        what = (f"{len(list(src.iterdir()))} files of {src}" if args.input else
                f"{args.videos} x {args.seconds:.0f}s {args.size}px 30fps h264 + aac 44.1k")
        print(f"inputs: {what}; "
              f"clips {cfg.data.seconds:.0f}s @ {cfg.data.fps}fps {cfg.data.size}px, 16k audio, mel={cfg.prep.mel}")

        torch.set_num_threads(1)  # as in each Ray task: one CPU per shard task
        t0 = time.perf_counter()
        n = 0
        for f in sorted(src.iterdir()):
            p, _ = probe(str(f))
            windows, _ = plan_windows(p, cfg.data, cfg.prep)
            n += sum(1 for clip, err in decode_clips(p, windows, cfg.data, cfg.prep) if clip is not None)
        decode = n / (time.perf_counter() - t0)
        print(f"decode alone (1 process): {decode:.2f} clips/s ({n} clips)")

        ray, _ = init_ray(None, 2)
        # Warm the worker processes (imports of torch, decord, PyAV), as on a long-running cluster.
        ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(2)])
        rates = {}
        for workers in (1, 2):
            out = tmp / f"out{workers}"
            cfg = dataclasses.replace(cfg, prep=dataclasses.replace(cfg.prep, workers=workers, executor="ray"))
            t0, c0 = time.perf_counter(), _cpu_seconds()
            s = run(str(src), str(out), cfg, progress=False)
            rates[workers] = s["clips_written"] / (time.perf_counter() - t0)
            cpu = (_cpu_seconds() - c0) / max(s["clips_written"], 1)
            print(f"full pipeline, {workers} worker(s): {rates[workers]:.2f} clips/s ({s['clips_written']} clips), "
                  f"{cpu:.3f} CPU s per clip (driver + Ray workers; video2dataset 1.3.0: 3.4-4.2 s, issue 14)")
        print(f"ratio full(1 worker) / decode alone: {rates[1] / decode:.2f}  (target >= 0.8)")
        print(f"speed-up 1 -> 2 workers: {rates[2] / rates[1]:.2f}x")
        ray.shutdown()
        end_to_end(src, tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
