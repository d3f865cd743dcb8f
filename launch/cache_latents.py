"""Encode prepared shards once with the frozen VAEs and text encoders, so training reads latents
instead of re-encoding every clip on every step.

    python launch/cache_latents.py --config configs/greatesthits.yaml --shards /data/gh_shards
    ray job submit --address http://HEAD:8265 --working-dir . -- python launch/cache_latents.py ...

For each shard-N.tar it writes latent-shard-N.tar beside it (atomically; finished ones are
skipped on re-run), using a pool of Ray actors that each load the encoders once (one GPU each
when there are GPUs). ``latents.json`` records the encoders' fingerprint: training with
train.source.cached_latents=true refuses a cache whose fingerprint differs from its own encoders'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from launch._cli import add_config_args, config_from  # noqa: E402
from svgen.data.source import latent_twin  # noqa: E402
from svgen.fileio import atomic_path, write_json  # noqa: E402
from svgen.shards import LATENT_INDEX, LATENT_PREFIX  # noqa: E402


class Encoder:
    """Holds the frozen encoders; turns one raw shard into one latent shard."""

    def __init__(self, cfg, device: str):
        from svgen.system import build_system

        torch.set_num_threads(1)
        self.cfg, self.device = cfg, torch.device(device)
        self.system = build_system(cfg).to(self.device)
        self.fingerprint = self.system.encoder_fingerprint(cfg.data)

    def encode_shard(self, url: str, batch_size: int) -> int:
        import webdataset as wds

        from svgen.data.loader import ClipStream, collate
        from svgen.shards import encode_latent_sample

        final = latent_twin(Path(url))
        items, n = list(ClipStream([url], shuffle_buffer=1)), 0
        with atomic_path(final) as tmp, wds.TarWriter(str(tmp)) as sink:
            for i in range(0, len(items), batch_size):
                batch = collate(items[i:i + batch_size])
                post_a, post_v, text_a, text_v = self.system.encode_posteriors(batch, self.cfg.data)
                arrays = {"latent_a": post_a.mean, "latent_a_std": post_a.std, "latent_v": post_v.mean,
                          "latent_v_std": post_v.std, "text_a": text_a, "text_v": text_v}
                for j, key in enumerate(batch["key"]):
                    meta = {**batch["meta"][j], "encoder_fingerprint": self.fingerprint}
                    sink.write(encode_latent_sample(key, {k: v[j].float().cpu().numpy() for k, v in arrays.items()}, meta))
                    n += 1
        return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--shards", required=True, help="data_prep output folder")
    ap.add_argument("--actors", type=int, default=0, help="encoder actors (default: GPUs, else 2)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else embedded on 127.0.0.1)")
    args = ap.parse_args(argv)
    cfg = config_from(args)
    if cfg is None:
        return 2
    from svgen.data.source import ShardError, resolve_shards
    from svgen.system import build_system

    root = Path(args.shards)
    try:
        urls = list(resolve_shards(root).urls)
    except ShardError as e:
        print(f"error: --shards: {e}", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"error: --shards '{root}' must be a data_prep output folder (the cache index latents.json goes beside "
              "the shards)", file=sys.stderr)
        return 2
    todo = [u for u in urls if not latent_twin(Path(u)).is_file()]
    # The driver checks the cache before any actor starts: a stale cache is refused at once.
    fingerprint = build_system(cfg).encoder_fingerprint(cfg.data)
    index = root / LATENT_INDEX
    if index.is_file() and json.loads(index.read_text())["encoder_fingerprint"] != fingerprint:
        print(f"error: '{root}' holds latents of other encoders or settings; delete {LATENT_PREFIX}shard-*.tar "
              f"and {index} to re-encode", file=sys.stderr)
        return 2
    clips = _encode(cfg, todo, args) if todo else 0
    write_json(index, {"encoder_fingerprint": fingerprint, "shards": len(urls)})
    print(f"cached latents: {clips} clips in {len(todo)} shards ({len(urls) - len(todo)} already done) under {root}")
    return 0


def _encode(cfg, todo: list[str], args) -> int:
    """Encode the shards on a pool of Ray actors; returns the number of clips."""
    import ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n_actors = args.actors or (gpus if gpus else 2)
    opts = {"num_gpus": 1} if gpus else {"num_cpus": 0.5}  # fractional CPUs: whole-CPU actors can starve Ray
    actor_cls = ray.remote(**opts)(Encoder)
    actors = [actor_cls.remote(cfg, "cuda" if gpus else "cpu") for _ in range(max(1, min(n_actors, len(todo))))]
    pool = ray.util.ActorPool(actors)
    clips = 0
    for n in tqdm(pool.map_unordered(lambda a, u: a.encode_shard.remote(u, args.batch_size), todo),
                  total=len(todo), desc="latent shards"):
        clips += n
    return clips


if __name__ == "__main__":
    sys.exit(main())
