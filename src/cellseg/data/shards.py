"""Shards of the training images: the job units of the per-image preprocessing stages.

An image's shard is a stable hash of its id alone, never of the other ids or their count, so
adding, removing or changing one image changes the image list of its own shard only and
re-runs that shard's jobs. Shards are named by zero-padded numbers (`07` of 32); only shards
that hold an image exist.
"""

import hashlib
from collections.abc import Iterable


def shard_of(image_id: str, n_shards: int) -> int:
    """Shard number in [0, n_shards) of `image_id`, the same on every machine and Python run
    (unlike `hash`, which is salted per process)."""
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def shard_images(image_ids: Iterable[str], n_shards: int) -> dict[str, list[str]]:
    """`{shard name: sorted image ids}` for the shards that hold at least one of `image_ids`,
    in shard order."""
    width = len(str(n_shards - 1))
    shards: dict[int, list[str]] = {}
    for image_id in sorted(image_ids):
        shards.setdefault(shard_of(image_id, n_shards), []).append(image_id)
    return {f"{shard:0{width}d}": shards[shard] for shard in sorted(shards)}
