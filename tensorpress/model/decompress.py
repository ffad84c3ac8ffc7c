"""Any tensorpress output → a plain dense HF checkpoint, streamed tensor by tensor."""

from __future__ import annotations

import json
from pathlib import Path

from tensorpress.formats.safetensors_io import ShardWriter
from tensorpress.infra.outputs import OutputClaim, input_paths
from tensorpress.infra.writable import check_writable
from tensorpress.model.checkpoint import Checkpoint, copy_side_files, open_checkpoint
from tensorpress.model.loader import dense_tensors, quantized_modules
from tensorpress.model.structure import fold_lowrank
from tensorpress.model.validate import checked_skeleton


def decompress(model: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write `model` (any tensorpress output) as a plain dense checkpoint into `out`, atomically."""
    out = Path(out)
    check_writable(Path(out))
    with OutputClaim(out, "decompress", force, input_paths(model)) as claim:
        ckpt = open_checkpoint(model)
        try:
            claim.check_apart([ckpt.folder])
            _write_dense(ckpt, claim)
        finally:
            ckpt.close()
    return out


def _write_dense(ckpt: Checkpoint, claim: OutputClaim) -> None:
    skel = checked_skeleton(ckpt)
    quantized_modules(ckpt, skel)  # fail early if a packed module has no scheme
    with claim.build() as tmp:
        writer = ShardWriter(tmp, metadata={"format": "pt"})
        names = set(ckpt.reader.names())
        for key, t in fold_lowrank(dense_tensors(ckpt, skel)):
            disk = skel.packed.get(key)
            if disk is not None:
                # Back to the dtype the scales (or sparse values) were stored in: the checkpoint's own.
                part = "weight_scale" if f"{disk}.weight_scale" in names else "weight_values"
                t = t.to(ckpt.tensor(f"{disk}.{part}").dtype)
            writer.add(key, t)
        writer.close()
        cfg = dict(ckpt.config_dict)
        cfg.pop("quantization_config", None)
        tp = cfg.pop("tensorpress", None)
        if tp:
            cfg["tensorpress_decompressed_from"] = {"recipe": tp.get("recipe"), "version": tp.get("version")}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        copy_side_files(ckpt.folder, tmp)
