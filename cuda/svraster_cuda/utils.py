"""Octree and camera helpers (upstream names), pure PyTorch, on any device."""
import torch

from . import meta
from .reference.math import OCTANT_REPEAT, camera_directions


def _level_shift(octlevel):
    return 3 * (meta.MAX_NUM_LEVELS - octlevel.reshape(-1, 1).long())


def octpath_2_ijk(octpath, octlevel):
    """Integer voxel coordinates [N, 3] (int64) at each voxel's own level (SPEC section 1)."""
    path = octpath.reshape(-1, 1).long() >> _level_shift(octlevel)
    ijk = torch.zeros(len(path), 3, dtype=torch.long, device=path.device)
    for b in range(meta.MAX_NUM_LEVELS):
        code = (path >> (3 * b)) & 7
        ijk |= torch.cat([(code >> 2) & 1, (code >> 1) & 1, code & 1], 1) << b
    levels = octlevel.reshape(-1, 1).long()
    return ijk & ((1 << levels) - 1)


def ijk_2_octpath(ijk, octlevel):
    """Top-aligned octpath [N, 1] (int64) of integer coordinates at the given levels."""
    ijk = ijk.long()
    path = torch.zeros(len(ijk), 1, dtype=torch.long, device=ijk.device)
    for b in range(meta.MAX_NUM_LEVELS):
        bit = (ijk >> b) & 1
        path |= ((bit[:, 0:1] << 2) | (bit[:, 1:2] << 1) | bit[:, 2:3]) << (3 * b)
    levels = octlevel.reshape(-1, 1).long()
    path &= (1 << (3 * levels)) - 1
    return path << _level_shift(octlevel)


def voxel_order_rank(octree_paths):
    """Front-to-back compositing rank [N, 8] of each voxel for rays of each octant q
    (ascending rank = front to back, SPEC 3.2)."""
    q = torch.arange(8, device=octree_paths.device)
    return torch.bitwise_xor(octree_paths.reshape(-1, 1), q * OCTANT_REPEAT)


def compute_rd(width, height, cx, cy, tanfovx, tanfovy, c2w_matrix):
    """Per-pixel world ray directions [H, W, 3] scaled to unit camera z (R_c2w . d_cam), so
    that `cam_pos + depth * rd` is the point at camera depth `depth`."""
    d_cam = camera_directions(width, height, cx, cy, tanfovx, tanfovy, device=c2w_matrix.device)
    return d_cam @ c2w_matrix[:3, :3].float().T


def depth2pts(width, height, cx, cy, tanfovx, tanfovy, c2w_matrix, depth):
    """World points [H, W, 3] of a camera-z depth map ([H, W] or [1, H, W])."""
    rd = compute_rd(width, height, cx, cy, tanfovx, tanfovy, c2w_matrix)
    return c2w_matrix[:3, 3].float() + depth.reshape(height, width, 1) * rd
