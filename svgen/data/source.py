"""The training data source: ``train.source.shards`` resolved once into a value that every reader shares.

``train.source.shards`` may name a data_prep output folder, one ``.tar``, or a list file of shard paths
(one a line; relative paths are taken from the list file's folder). Resolving it once gives the
shard URLs and the folders that hold them, and with them the two things that live beside the
shards: data_prep's ``manifest.jsonl`` (its digest tags the run) and launch/cache_latents.py's
``latents.json`` (the encoders that made the cached latents). Before, the loader read three
forms while the cache check and the digest read only a folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from svgen.shards import LATENT_INDEX, LATENT_PREFIX

MANIFEST = "manifest.jsonl"


class ShardError(ValueError):
    """The shard set cannot feed this job as configured; the message says how to fix it."""


def latent_twin(path: Path) -> Path:
    """The cached-latent shard that launch/cache_latents.py writes beside a raw shard."""
    return path if path.name.startswith(LATENT_PREFIX) else path.with_name(LATENT_PREFIX + path.name)


@dataclass(frozen=True)
class ShardSource:
    """Shards to read, resolved from one ``train.source.shards`` value."""

    spec: str
    """The value as given (folder, .tar or list file)."""
    urls: tuple[str, ...]
    """Shard paths in a fixed order (latent shards when ``latents``)."""
    latents: bool
    """True: the urls are the cached-latent twins of the raw shards."""
    allow_pipe: bool = False
    """``pipe:`` urls were allowed (train.source.allow_pipe) and may be opened."""

    @property
    def roots(self) -> tuple[Path, ...]:
        """The folders holding the shards (one for a data_prep output)."""
        return tuple(sorted({Path(u).parent for u in self.urls if not _remote(u)}))

    def urls_digest(self) -> str:
        return hashlib.sha1("\n".join(self.urls).encode()).hexdigest()

    def manifest_digest(self) -> str:
        """SHA-1 of the data_prep manifests beside the shards; 'none' when no folder has one."""
        manifests = [r / MANIFEST for r in self.roots if (r / MANIFEST).is_file()]
        if not manifests:
            return "none"
        h = hashlib.sha1()
        for m in manifests:
            h.update(m.read_bytes())
        return h.hexdigest()

    def check_latent_cache(self, fingerprint: str) -> None:
        """Refuse latents made by other encoders or clip settings (they would train on wrong
        latents), or a folder whose cache index is missing."""
        for root in self.roots:
            index = root / LATENT_INDEX
            if not index.is_file():
                raise ShardError(f"train.source.cached_latents is set but '{index}' is missing (train.source.shards="
                                 f"'{self.spec}'): run `python launch/cache_latents.py --shards {root}`")
            cached = json.loads(index.read_text())["encoder_fingerprint"]
            if cached != fingerprint:
                raise ShardError(f"stale latent cache in '{root}': made with encoders/settings {cached[:12]}, this "
                                 f"model's are {fingerprint[:12]}; re-run launch/cache_latents.py (after deleting "
                                 f"the old latent shards)")


def _remote(url: str) -> bool:
    """A ``pipe:COMMAND`` line (allowed only with train.source.allow_pipe): read as given."""
    return url.startswith("pipe:")


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")


def _listed(src: Path, allow_pipe: bool) -> list[str]:
    """The shard paths of a list file. ``pipe:`` lines run a shell command when read, so they are
    refused unless ``allow_pipe``; any other URL scheme (s3://, http://) is refused: svgen reads
    local paths, and remote shards through an explicit pipe: command."""
    out = []
    for n, line in enumerate(src.read_text().splitlines(), 1):
        u = line.strip()
        if not u or u.startswith("#"):
            continue
        if u.startswith("pipe:"):
            if not allow_pipe:
                raise ShardError(f"shard list '{src}' line {n} is a shell command ({u[:120]!r}), which reading the "
                                 "shard would run: refused. If you trust this list, set train.source.allow_pipe=true")
            out.append(u)
            continue
        m = _SCHEME.match(u)
        if m and (m.group(2) or m.group(1).lower() in ("file", "http", "https", "s3", "gs")):
            scheme = m.group(1).lower()
            if scheme == "file":
                u = u[len("file://"):] if m.group(2) else u[len("file:"):]
            else:
                raise ShardError(f"shard list '{src}' line {n} has URL scheme '{scheme}:' ({u[:120]!r}), which svgen "
                                 "does not read: give a local path, or a 'pipe:' command (e.g. 'pipe:curl -s URL') "
                                 "with train.source.allow_pipe=true")
        p = Path(u).expanduser()
        out.append(str(p if p.is_absolute() or p.exists() else src.parent / p))
    return out


def resolve_shards(spec: str | Path, latents: bool = False, allow_pipe: bool = False) -> ShardSource:
    """Resolve a folder, a .tar or a list file into a :class:`ShardSource`. With ``latents``, each
    raw shard stands for its latent twin beside it, which must exist. ``allow_pipe``: accept
    ``pipe:`` lines in a list (train.source.allow_pipe)."""
    src = Path(spec)
    if not str(spec):
        raise ShardError("train.source.shards is empty: point it at a data_prep output folder, a .tar or a list file")
    if src.is_dir():
        pattern = f"{LATENT_PREFIX}shard-*.tar" if latents else "shard-*.tar"
        paths = [str(p) for p in sorted(src.glob(pattern))]
        if not paths:
            hint = f"python launch/cache_latents.py --shards {src}" if latents else "python -m data_prep"
            raise ShardError(f"'{src}' holds no {'latent-' if latents else ''}shard-*.tar files; run `{hint}` first")
    elif src.is_file() and src.suffix == ".tar":
        paths = [str(src)]
    elif src.is_file():
        paths = _listed(src, allow_pipe)
        if not paths:
            raise ShardError(f"shard list '{src}' is empty: one shard path a line")
    else:
        raise ShardError(f"no shards at '{src}': give the data_prep output folder, a .tar or a list file")
    if latents:
        paths = [u if _remote(u) else str(latent_twin(Path(u))) for u in paths]
    missing = [Path(u) for u in paths if not _remote(u) and not Path(u).is_file()]
    if missing and latents:
        raise ShardError(f"train.source.cached_latents is set but {len(missing)} latent shard(s) of '{src}' are missing "
                         f"(first: '{missing[0]}'): run `python launch/cache_latents.py --shards {missing[0].parent}`")
    if missing:
        raise ShardError(f"'{src}' names {len(missing)} shard(s) that do not exist (first: '{missing[0]}')")
    return ShardSource(str(spec), tuple(paths), latents, allow_pipe)
