"""What the cross-modal context carries: a diagnostic on finished variants (``probe``).

A joint branch can only use the other modality's timing if the other modality's environment
encoder puts it into the pooled features p (B, C, T) that cross over. For each trained variant x
seed this takes both encoders' p on the first test clips, the encoder input noised to a few
levels (its estimate x0_hat zeroed, a case training covers), and reports per modality:

- ``time_variation``: ||p - mean_t(p)|| / ||p||, how much p changes along time at all;
- ``clip_specificity``: ||p(clip) - p(partner)|| / ||p(clip)||, where the partner is another test
  clip of the same material (same caption, other impact times; stages.mismatch_partners): how much
  of p depends on *this* clip's events rather than on what every clip of its material shares.

Both are 0 for a context that carries no timing; the held-out mismatch rise of the branch that
reads p can only be above 0 when the clip specificity is. The noise is seeded per clip and
shared by a clip and its partner, so the difference is the clips' alone.
"""

from __future__ import annotations

from pathlib import Path

from experiments.ablation.stages import TRAINED, Plan, device, load_system, mismatch_partners

LEVELS = (100, 500, 900)
PROBE = "probe.json"


def time_variation(p) -> float:
    """||p - mean over time|| / ||p|| for features (..., T): 0 when p is constant in time."""
    return float((p - p.mean(dim=-1, keepdim=True)).norm() / p.norm().clamp_min(1e-12))


def clip_specificity(p, q) -> float:
    """||p - q|| / ||p||: 0 when the partner clip's features are the same."""
    return float((p - q).norm() / p.norm().clamp_min(1e-12))


def context_features(system, latents, levels=LEVELS) -> dict[str, list]:
    """Per modality ('a', 'v'), per clip, the encoder's pooled features at each noise level:
    {modality: [[p at each level] for each clip]}, each p (1, C, T)."""
    import torch

    model, dev = system.model, device()
    feats: dict[str, list] = {"a": [], "v": []}
    with torch.no_grad():
        for i, lat in enumerate(latents):
            per = {"a": [], "v": []}
            for s in levels:
                st = torch.tensor([s], device=dev)
                for m, x, sched, runner, enc in (
                        ("a", lat.x_a, system.sched_a, model.audio_runner, model.encoder_a),
                        ("v", lat.x_v, system.sched_v, model.video_runner, model.encoder_v)):
                    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1000 * i + s)).to(x)
                    z = sched.add_noise(x, eps, st)
                    inp = torch.cat([z, torch.zeros_like(z)], 1)
                    if m == "a":
                        inp = model.pad_audio(inp)
                    per[m].append(enc(inp.to(enc.conv_in.weight.dtype), runner.time_embed(st, 1, dev)).float().cpu())
            for m in per:
                feats[m].append(per[m])
    return feats


def probe_system(system, cfg, out: Path, clips: int, levels=LEVELS) -> dict:
    """The two figures per modality and noise level, each a mean over ``clips`` test clips."""
    import torch

    from svgen.data.loader import make_loader

    dev = device()
    g = torch.Generator(device=dev).manual_seed(1234)
    batches = [b for b in make_loader(out / "data" / "test" / "shards", 1, seed=0, shuffle_buffer=1)][:clips]
    partner = mismatch_partners([b["caption"][0] for b in batches])
    with torch.no_grad():
        latents = [system.encode({**b, "frames": b["frames"].to(dev), "wave": b["wave"].to(dev)}, cfg.data, g)
                   for b in batches]
    feats = context_features(system, latents, levels)
    result: dict = {"clips": len(batches), "levels": list(levels)}
    for m, name in (("a", "audio"), ("v", "video")):
        per_level = []
        for k, s in enumerate(levels):
            tv = [time_variation(f[k]) for f in feats[m]]
            cs = [clip_specificity(feats[m][i][k], feats[m][partner[i]][k]) for i in range(len(batches))
                  if partner[i] != i]
            per_level.append({"level": s, "time_variation": sum(tv) / len(tv),
                              "clip_specificity": sum(cs) / len(cs) if cs else None})
        result[name] = per_level
    return result


def probe_variant(variant: str, seed: int, out: Path, plan: Plan, spec: dict, clips: int | None = None) -> dict:
    """One trained variant x seed, kept in train/VARIANT/seedN/probe.json (computed once, then
    read back: the run's stage, skipped when done)."""
    import json

    from svgen.fileio import write_json

    record = out / "train" / variant / f"seed{seed}" / PROBE
    if record.is_file():
        return json.loads(record.read_text())
    clips = min(16, plan.test_clips) if clips is None else clips
    cfg, system, _ = load_system(variant, seed, out, plan, spec)
    row = {"variant": variant, "seed": seed, **probe_system(system, cfg, out, clips)}
    write_json(record, row, indent=1)
    return row


def probe(out: Path, plan: Plan, spec: dict, variants=TRAINED, seeds=None, clips: int | None = None,
          progress: bool = True) -> list[dict]:
    """Every finished trained variant x seed under ``out`` (EMA weights); writes out/probe.json."""
    from svgen.fileio import write_json

    rows = []
    for seed in plan.seeds if seeds is None else seeds:
        for variant in variants:
            if not (out / "train" / variant / f"seed{seed}" / "train_result.json").is_file():
                continue
            row = probe_variant(variant, seed, out, plan, spec, clips)
            rows.append(row)
            if progress:
                print(format_row(row), flush=True)
    if not rows:
        raise FileNotFoundError(f"no finished trained variant under {out / 'train'}: run the ablation first")
    write_json(out / "probe.json", rows, indent=1)
    return rows


def format_row(row: dict) -> str:
    parts = []
    for name in ("audio", "video"):
        cells = ", ".join(f"s={r['level']}: time {r['time_variation']:.3f} clip "
                          + ("-" if r["clip_specificity"] is None else f"{r['clip_specificity']:.3f}")
                          for r in row[name])
        parts.append(f"{name} p [{cells}]")
    return f"{row['variant']} seed {row['seed']}: " + "; ".join(parts)
