"""Stages 2-4 (mirror `cuda/src/binning.cu`): one entry per (tile, octant) a voxel touches,
sorted by tile, octant and front-to-back rank, and each (tile, octant)'s slice of that list.

The kernels keep the octants of a tile interleaved in one list and let each pixel skip the
entries of other octants; here the octant is part of the sort key, so that every pixel's
list is one contiguous slice. Both give each pixel the same voxels in the same order."""
from typing import NamedTuple

import torch

from .. import meta
from .math import order_rank


class Binning(NamedTuple):
    entry_voxel: torch.Tensor   # [M] int64 voxel id of each sorted entry
    group_start: torch.Tensor   # [n_tiles * 8] int64 first entry of (tile, octant)
    group_end: torch.Tensor     # [n_tiles * 8] int64 one past the last entry


def duplicate_with_keys(pre, octree_paths, tiles_x):
    """Entries (group = tile * 8 + octant, rank, voxel) for every active tile and octant of
    every voxel in view."""
    device = pre.tile_rect.device
    rect = pre.tile_rect
    in_rect = (rect[:, 2] - rect[:, 0] + 1).clamp(min=0) * (rect[:, 3] - rect[:, 1] + 1).clamp(min=0)
    n_octants = sum((pre.octant_mask >> q) & 1 for q in range(8))
    n_dup = torch.where(pre.n_duplicates > 0, in_rect * n_octants, 0)
    voxel = torch.repeat_interleave(torch.arange(len(n_dup), device=device), n_dup)
    first = torch.cumsum(n_dup, 0) - n_dup
    local = torch.arange(len(voxel), device=device) - first[voxel]

    # Split the local index into (octant slot, tile) and decode both.
    rect = pre.tile_rect[voxel]
    width = rect[:, 2] - rect[:, 0] + 1
    n_tiles = width * (rect[:, 3] - rect[:, 1] + 1)
    slot, tile_local = local // n_tiles, local % n_tiles
    tile = (rect[:, 1] + tile_local // width) * tiles_x + rect[:, 0] + tile_local % width

    # The slot-th set bit of the voxel's octant mask.
    mask = pre.octant_mask[voxel]
    bits = (mask[:, None] >> torch.arange(8, device=device)) & 1
    octant = ((torch.cumsum(bits, 1) == (slot + 1)[:, None]) & (bits == 1)).long().argmax(1)

    rank = order_rank(octree_paths.reshape(-1)[voxel], octant)
    if pre.requests is not None:
        keep = bins_into(pre.requests, pre.pixel_rect[voxel], tile, n_tiles, tiles_x)
        tile, octant, rank, voxel = tile[keep], octant[keep], rank[keep], voxel[keep]
    return tile * 8 + octant, rank, voxel


def bins_into(requests, pixel_rect, tile, rect_tiles, tiles_x):
    """Sparse rendering bins a voxel into a tile only when its pixel rectangle holds a requested
    pixel of the tile; rectangles spanning more than MAX_EXACT_TILES tiles go to every tile
    holding a request (mirrors math.cuh)."""
    tile_active, tile_masks = requests
    t = meta.TILE_SIZE
    tx, ty = tile % tiles_x, tile // tiles_x
    x0 = (pixel_rect[:, 0] - tx * t).clamp(min=0)
    x1 = (pixel_rect[:, 2] - tx * t).clamp(max=t - 1)
    y0 = (pixel_rect[:, 1] - ty * t).clamp(min=0)
    y1 = (pixel_rect[:, 3] - ty * t).clamp(max=t - 1)
    # The rectangle's pixels as a tile mask: its columns' bits in each of its rows.
    columns = ((2 << (x1 - x0)) - 1) << x0
    rows = torch.arange(t, device=tile.device)
    in_rows = (rows >= y0[:, None]) & (rows <= y1[:, None])
    rect_mask = ((columns[:, None] << (t * rows)) * in_rows).sum(1)
    covers = (tile_masks[tile] & rect_mask) != 0
    return tile_active[tile] & ((rect_tiles > meta.MAX_EXACT_TILES) | covers)


def sort_entries(group, rank, voxel):
    """Lexicographic (group, rank) order: a stable sort on rank, then a stable sort on group."""
    by_rank = torch.sort(rank, stable=True).indices
    by_group = torch.sort(group[by_rank], stable=True).indices
    order = by_rank[by_group]
    return group[order], voxel[order]


def identify_tile_ranges(sorted_group, n_groups):
    counts = torch.bincount(sorted_group, minlength=n_groups)
    end = torch.cumsum(counts, 0)
    return end - counts, end


def bin_voxels(pre, octree_paths, tiles_x, tiles_y):
    group, rank, voxel = duplicate_with_keys(pre, octree_paths, tiles_x)
    sorted_group, sorted_voxel = sort_entries(group, rank, voxel)
    start, end = identify_tile_ranges(sorted_group, tiles_x * tiles_y * 8)
    return Binning(sorted_voxel, start, end)
