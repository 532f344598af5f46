"""Stage 1, preprocess (mirrors `cuda/src/preprocess.cu`): per voxel, cull, conservative tile
rectangle of its part in front of the near plane, and the set of ray octants that can see it."""
from typing import NamedTuple

import torch

from .. import meta

# The 12 edges of a box as pairs of corner indices c = 4x + 2y + z (differing in one bit).
BOX_EDGES = torch.tensor([(c, c | bit) for bit in (1, 2, 4) for c in range(8) if not c & bit])
CORNER_OFFSETS = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])


class Preprocessed(NamedTuple):
    tile_rect: torch.Tensor     # [N, 4] int64: tx0, ty0, tx1, ty1 (inclusive); empty when culled
    pixel_rect: torch.Tensor    # [N, 4] int64: conservative x0, y0, x1, y1 (inclusive)
    octant_mask: torch.Tensor   # [N] int64: bit q set when rays of octant q can reach the voxel
    n_duplicates: torch.Tensor  # [N] int64: tiles x octants (tiles holding requests, when sparse); 0 if culled
    requests: tuple             # (tile_active [n_tiles] bool, tile_masks [n_tiles] int64) or None


def tile_grid(settings):
    t = meta.TILE_SIZE
    return (settings.image_width + t - 1) // t, (settings.image_height + t - 1) // t


def active_tiles_in_rect(tile_rect, tile_active, tiles_x, tiles_y):
    """How many active tiles each (inclusive) tile rectangle holds: four lookups in a
    summed-area table of the mask. An empty rectangle (0, 0, -1, -1) holds none."""
    sat = torch.zeros(tiles_y + 1, tiles_x + 1, dtype=torch.long, device=tile_rect.device)
    sat[1:, 1:] = tile_active.reshape(tiles_y, tiles_x).long().cumsum(0).cumsum(1)
    x0, y0, x1, y1 = tile_rect.unbind(-1)
    return sat[y1 + 1, x1 + 1] - sat[y0, x1 + 1] - sat[y1 + 1, x0] + sat[y0, x0]


def preprocess(settings, vox_centers, vox_lengths, requests=None):
    """`requests` (tile_active, tile_masks) of requested pixels restricts the entries to the
    tiles holding them (sparse rendering); binning then keeps only the (voxel, tile) pairs
    whose rectangle holds a requested pixel."""
    dtype, device = vox_centers.dtype, vox_centers.device
    W, H = settings.image_width, settings.image_height
    # Footprints project from z >= max(near, FOOTPRINT_NEAR_MIN): near = 0 never divides by zero.
    near = max(settings.near, meta.FOOTPRINT_NEAR_MIN)
    w2c = settings.w2c_matrix.to(device=device, dtype=dtype)
    cam_pos = settings.c2w_matrix[:3, 3].to(device=device, dtype=dtype)
    half = vox_lengths * 0.5
    box_min, box_max = vox_centers - half, vox_centers + half

    # Corners in camera space; the part of the box with z >= near is the convex hull of the
    # corners in front of the plane and the points where box edges cross it.
    corners = box_min[:, None, :] + CORNER_OFFSETS.to(device=device, dtype=dtype) * vox_lengths[:, None, :]
    cam = corners @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[..., 2]
    front = z >= near
    p0, p1 = cam[:, BOX_EDGES[:, 0]], cam[:, BOX_EDGES[:, 1]]
    z0, z1 = p0[..., 2], p1[..., 2]
    crosses = (z0 < near) != (z1 < near)
    s = ((near - z0) / torch.where(crosses, z1 - z0, torch.ones_like(z0))).clamp(0, 1)
    cut = p0 + s[..., None] * (p1 - p0)
    cut[..., 2] = near
    points = torch.cat([cam, cut], 1)
    valid = torch.cat([front, crosses], 1)

    # Pixel x sees camera direction X/Z = (x + 0.5 - cx) * 2 tanfovx / W.
    zs = torch.where(valid, points[..., 2], torch.ones_like(points[..., 2]))
    px = points[..., 0] / zs * (W / (2 * settings.tanfovx)) + settings.cx - 0.5
    py = points[..., 1] / zs * (H / (2 * settings.tanfovy)) + settings.cy - 0.5
    big = torch.tensor(float("inf"), dtype=dtype, device=device)
    # A margin of a hundredth of a pixel keeps the rectangle conservative under rounding.
    margin = 1e-2
    x_lo = torch.where(valid, px, big).amin(1).clamp(-1, W) - margin
    x_hi = torch.where(valid, px, -big).amax(1).clamp(-1, W) + margin
    y_lo = torch.where(valid, py, big).amin(1).clamp(-1, H) - margin
    y_hi = torch.where(valid, py, -big).amax(1).clamp(-1, H) + margin
    x0, x1 = torch.ceil(x_lo).long().clamp(0, W - 1), torch.floor(x_hi).long().clamp(0, W - 1)
    y0, y1 = torch.ceil(y_lo).long().clamp(0, H - 1), torch.floor(y_hi).long().clamp(0, H - 1)

    in_view = valid.any(1) & (torch.ceil(x_lo) <= torch.floor(x_hi)) & (torch.ceil(y_lo) <= torch.floor(y_hi))
    in_view &= (torch.floor(x_hi) >= 0) & (torch.ceil(x_lo) <= W - 1)
    in_view &= (torch.floor(y_hi) >= 0) & (torch.ceil(y_lo) <= H - 1)
    in_view &= (vox_centers - cam_pos).norm(dim=-1) >= settings.near

    t = meta.TILE_SIZE
    pixel_rect = torch.stack([x0, y0, x1, y1], -1)
    tile_rect = torch.stack([x0 // t, y0 // t, x1 // t, y1 // t], -1)
    tile_rect[~in_view] = torch.tensor([0, 0, -1, -1], device=device)

    # A ray from the camera reaches the box with a negative direction component along an axis
    # only if the box extends below the camera on that axis (and non-negative only if above).
    can_neg = box_min < cam_pos
    can_pos = box_max >= cam_pos
    octant_mask = torch.zeros(len(vox_centers), dtype=torch.long, device=device)
    for q in range(8):
        sign_ok = torch.ones(len(vox_centers), dtype=torch.bool, device=device)
        for axis, bit in enumerate((4, 2, 1)):
            sign_ok &= can_neg[:, axis] if q & bit else can_pos[:, axis]
        octant_mask |= sign_ok.long() << q

    if requests is None:
        n_tiles = (tile_rect[:, 2] - tile_rect[:, 0] + 1).clamp(min=0) * (tile_rect[:, 3] - tile_rect[:, 1] + 1).clamp(min=0)
    else:
        n_tiles = active_tiles_in_rect(tile_rect, requests[0], *tile_grid(settings))
    n_octants = sum((octant_mask >> q) & 1 for q in range(8))
    return Preprocessed(tile_rect, pixel_rect, octant_mask, n_tiles * n_octants, requests)
