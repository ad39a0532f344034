"""Which weights an adapter belongs to: a cheap fingerprint of the base checkpoint's files (as opposed
to `minibridge.conversion.checkpoints.architecture_digest`, a digest of the model's shapes).

Adapters only make sense on the weights they were trained on, so adapter-only checkpoints record the
fingerprint of their base and a resume on another base is refused. The fingerprint reads no more than
a few KiB per tensor: for an HF folder, each tensor's name, dtype, shape and the first and last 4 KiB
of its bytes (two fine-tunes of one architecture differ there); for a minibridge checkpoint folder,
each file's name, size and first and last 4 KiB. It depends on the files only, never on the parallel
layout that reads them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .hf_folder import HFFolder

SAMPLE = 4096


def _sample(path: Path, begin: int, end: int, digest) -> None:
    with open(path, "rb") as f:
        f.seek(begin)
        digest.update(f.read(min(SAMPLE, end - begin)))
        if end - begin > SAMPLE:
            f.seek(max(begin + SAMPLE, end - SAMPLE))
            digest.update(f.read(end - max(begin + SAMPLE, end - SAMPLE)))


def weights_fingerprint(source: str | Path) -> dict:
    """{"source": folder, "fingerprint": hex digest} of an HF folder or a minibridge checkpoint folder."""
    folder = Path(source)
    digest = hashlib.sha256()
    if (folder / "config.json").is_file():  # an HF model folder
        for name, info in sorted(HFFolder(folder).tensors.items()):
            digest.update(f"{name}|{info.dtype}|{tuple(info.shape)}|".encode())
            _sample(info.path, info.begin, info.end, digest)
    else:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "run.json")
        if not files:
            raise FileNotFoundError(f"{folder}: no checkpoint files to fingerprint")
        for path in files:
            size = path.stat().st_size
            digest.update(f"{path.relative_to(folder)}|{size}|".encode())
            _sample(path, 0, size, digest)
    return {"source": str(folder.resolve()), "fingerprint": digest.hexdigest()[:32]}
