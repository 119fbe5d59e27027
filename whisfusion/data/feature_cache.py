"""On-disk cache of frozen-encoder outputs, for corpora small enough to cache.

One file per utterance: `<cache>/<feature_key[:16]>/<id>.pt` holds the (T, width) float16
features of its valid frames. The key (`FrozenWhisperEncoder.feature_key`: weights, window rule,
layer read) is part of the path, so features of another encoder or setting are never mixed in.
Files are written under a temporary name and renamed, so concurrent writers (DDP ranks, several
runs) never leave a half-written file behind.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from whisfusion.data.manifest import safe_id

log = logging.getLogger(__name__)


class FeatureCache:
    def __init__(self, root: str | Path, feature_key: str):
        if len(feature_key) < 16:
            raise ValueError(f"feature key {feature_key!r} is shorter than 16 characters")
        self.dir = Path(root) / feature_key[:16]
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, utt_id: str) -> Path:
        name = safe_id(utt_id)
        if name != utt_id:  # two different unsafe ids must not share a file
            name = f"{name}-{hashlib.sha1(utt_id.encode()).hexdigest()[:12]}"
        return self.dir / f"{name}.pt"

    def get(self, ids: Sequence[str]) -> list[torch.Tensor | None]:
        """Cached (T, width) float16 features per id; None where absent or unreadable."""
        out: list[torch.Tensor | None] = []
        for utt_id in ids:
            path = self.path(utt_id)
            feats = None
            if path.is_file():
                try:
                    feats = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as err:  # a corrupt file is a cache miss, not a failed run
                    log.warning("feature cache: unreadable %s (%s); recomputing", path, err)
            out.append(feats)
        return out

    def put(self, ids: Sequence[str], feats: Sequence[torch.Tensor]) -> None:
        """Store (T, width) features per id as float16 (T may differ between ids)."""
        if len(ids) != len(feats):
            raise ValueError(f"{len(ids)} ids but {len(feats)} feature tensors")
        for utt_id, f in zip(ids, feats, strict=True):
            if f.dim() != 2:
                raise ValueError(
                    f"features of {utt_id} have shape {tuple(f.shape)}, expected (T, width)"
                )
            path = self.path(utt_id)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
            torch.save(f.detach().to("cpu", torch.float16).contiguous().clone(), tmp)
            tmp.replace(path)
