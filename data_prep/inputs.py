"""Input discovery: a folder (recursive: every regular file is an input, and probe decides what is
media; ``prep.extensions`` narrows it when set), a CSV or JSONL manifest
(path, optional caption, optional start/end in seconds), or a GreatestHits-style list file
(one ``path,caption`` CSV record per line, no header; captions with commas are quoted)."""

from __future__ import annotations

import csv
import json
from dataclasses import KW_ONLY, dataclass
from pathlib import Path


@dataclass
class InputItem:
    index: int
    path: str
    _: KW_ONLY
    caption: str = ""
    start: float | None = None
    end: float | None = None


class InputError(ValueError):
    """The --input argument cannot be read; the message names it and what was expected."""


def _resolve(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def _num(v) -> float | None:
    return None if v in (None, "") else float(v)


def discover(source: str | Path, extensions: list[str]) -> list[InputItem]:
    src = Path(source)
    if src.is_dir():
        # Every file, dangling links included: each yields clips or an error record saying why
        # not, so the summary accounts for every file in the folder.
        exts = {e.lower() for e in extensions}
        paths = sorted(p for p in src.rglob("*") if (p.is_file() or p.is_symlink()) and not p.is_dir()
                       and (not exts or p.suffix.lower() in exts))
        items = [InputItem(i, str(p)) for i, p in enumerate(paths)]
    elif src.is_file() and src.suffix.lower() == ".csv":
        with open(src, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InputError(f"manifest '{src}' needs a header with a 'path' column "
                                 f"(optional: caption, start, end); found {reader.fieldnames}")
            items = [InputItem(i, _resolve(src.parent, r["path"]), caption=r.get("caption") or "",
                               start=_num(r.get("start")), end=_num(r.get("end"))) for i, r in enumerate(reader)]
    elif src.is_file() and src.suffix.lower() in (".jsonl", ".json"):
        items = []
        for i, line in enumerate(l for l in src.read_text().splitlines() if l.strip()):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"manifest '{src}' line {i + 1} is not JSON: {e}") from e
            if "path" not in r:
                raise InputError(f"manifest '{src}' line {i + 1} has no 'path' key")
            items.append(InputItem(i, _resolve(src.parent, r["path"]), caption=r.get("caption") or "",
                                   start=_num(r.get("start")), end=_num(r.get("end"))))
    elif src.is_file() and src.suffix.lower() in (".txt", ".list"):
        # One CSV record a line, no header: the reference's split files quote a caption that holds
        # a comma ('path,"a cup, a desk"'). An unquoted caption with commas is kept whole too.
        items = []
        for line in src.read_text().splitlines():
            if not line.strip():
                continue
            if line.lstrip().startswith('"'):  # a quoted path: the whole line is CSV
                row = next(csv.reader([line.strip()], skipinitialspace=True))
                path, caption = row[0], ",".join(row[1:])
            else:
                path, _, caption = line.partition(",")
                caption = caption.strip()
                if caption.startswith('"'):
                    caption = next(csv.reader([caption]))[0]
            items.append(InputItem(len(items), _resolve(src.parent, path.strip()), caption=caption.strip()))
    elif not src.exists():
        raise InputError(f"input '{src}' does not exist: give a folder of videos, a .csv/.jsonl manifest "
                         "or a .txt list of 'path,caption' lines")
    else:
        raise InputError(f"input '{src}' is not a folder, .csv, .jsonl or .txt list")
    if not items:
        what = f"files with extensions {', '.join(extensions)}" if extensions else "files"
        raise InputError(f"input '{src}' holds no {what}")
    return items
