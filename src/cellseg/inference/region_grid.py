"""Which blocks form which region of a large image: plain geometry, without torch, because the
DAG counts each image's regions when Snakemake starts, and every cluster job starts Snakemake."""

from __future__ import annotations

import math


def region_count(size: tuple[int, int], block: int, region_blocks: int) -> int:
    """How many regions of `region_blocks` x `region_blocks` blocks of `block` px cover an image
    of `size` (H, W)."""
    side = block * region_blocks
    return math.ceil(size[0] / side) * math.ceil(size[1] / side)


def region_of(block_rect: tuple[int, int, int, int], block: int, region_blocks: int, size: tuple[int, int]) -> int:
    """The region holding the block y0, y1, x0, x1; regions are numbered row by row."""
    side = block * region_blocks
    return block_rect[0] // side * math.ceil(size[1] / side) + block_rect[2] // side
