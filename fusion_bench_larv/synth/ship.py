"""``python -m fusion_bench_larv.synth ship``: make a build's weights the package's shipped ones.

See :mod:`.shipped` for what is shipped and how a build uses it.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Dict, Union

import torch

from ..atomic import atomic_dir, atomic_write_json
from .build import MANIFEST_VERSION, Assets
from .digests import sha256_file, verify
from .shipped import HALF_DELTA, INDEX, REBUILD_COMMAND, SHIPPED_TASKS, WEIGHTS, ShippedAssets, shipped_dir, write_half_delta


def ship(assets: Assets, tasks=SHIPPED_TASKS, root: Union[str, Path, None] = None, half_deltas: bool = False) -> Dict[str, str]:
    """Write ``assets``' pretrained model and the towers of ``tasks`` as the shipped folder
    (replacing the one there) and return ``{file: "same" | "changed" | "new"}`` against the
    digests recorded before. ``half_deltas``: each tower's weights as its float16 task vector
    (:mod:`.shipped`)."""
    manifest = assets.read_manifest()
    if manifest is None or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{assets.root} is not a build of generator version {MANIFEST_VERSION}")
    missing = [name for name in assets.missing(tasks) if name == "pretrained" or name.startswith("finetuned/")]
    if missing:
        raise ValueError(f"{assets.root} lacks {', '.join(missing)}; build it first")
    sources = {"pretrained": assets.pretrained, **{f"finetuned/{t}": assets.finetuned(t) for t in tasks}}
    damaged, _ = verify(assets, list(sources))
    if damaged:
        raise ValueError(f"{assets.root} is damaged: {'; '.join(damaged.values())}; rebuild it first")
    previous = ShippedAssets.find(root, assets.seed)
    before = previous.index["files"] if previous else {}
    folder = shipped_dir(root, assets.seed)
    files, status = {}, {}
    with atomic_dir(folder) as tmp:
        for artefact, src in sources.items():
            for path in sorted(p for p in src.iterdir() if p.is_file()):
                name = f"{artefact}/{path.name}"
                (tmp / artefact).mkdir(parents=True, exist_ok=True)
                record = {}
                if half_deltas and artefact != "pretrained" and path.name == WEIGHTS:
                    name, record = f"{artefact}/{HALF_DELTA}", {"delta_of": f"pretrained/{WEIGHTS}"}
                    write_half_delta(assets.pretrained / WEIGHTS, path, tmp / name)
                else:
                    shutil.copyfile(path, tmp / name)
                files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size, **record}
                old = before.get(name, {}).get("sha256")
                status[name] = "new" if old is None else ("same" if old == files[name]["sha256"] else "changed")
        index = {
            "version": MANIFEST_VERSION,
            "seed": assets.seed,
            "recipe": manifest["recipe"],
            "tasks": list(tasks),
            "rebuild": REBUILD_COMMAND,
            "built_with": {"torch": torch.__version__, "machine": platform.machine()},
            "pretrain_loss": manifest.get("pretrain_loss"),
            "timings_s": {k: v for k, v in manifest["timings_s"].items() if k in sources},
            "files": files,
        }
        atomic_write_json(tmp / INDEX, index, indent=2)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
    shutil.rmtree(old, ignore_errors=True)
    return status
