"""Shared math of the reference renderer (mirrors `cuda/src/math.cuh`).

Every function is elementwise over leading dimensions and works in the dtype it is given
(float32 like the kernels, float64 for gradcheck).
"""
import torch

from .. import meta

# repeat(q): the 3-bit octant code copied into all 16 level slots of an octpath.
OCTANT_REPEAT = sum(1 << (3 * level) for level in range(meta.MAX_NUM_LEVELS))


def camera_directions(width, height, cx, cy, tanfovx, tanfovy, dtype=torch.float32, device="cpu"):
    """Per-pixel camera-space direction with z = 1 (`d_cam`, SPEC section 2): [H, W, 3]."""
    xs = (torch.arange(width, dtype=torch.float64, device=device) + 0.5 - cx) * (2 * tanfovx / width)
    ys = (torch.arange(height, dtype=torch.float64, device=device) + 0.5 - cy) * (2 * tanfovy / height)
    ones = torch.ones(1, 1, dtype=torch.float64, device=device)
    return torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None], ones), -1).to(dtype)


def pixel_rays(settings, dtype=torch.float32, device="cpu"):
    """Per-pixel `d_cam`, world ray direction (unit) and |d_cam|, as `[H, W, 3]`, `[H, W, 3]`,
    `[H, W]` (SPEC section 2), as the kernels compute them (math.cuh pixel_ray): from the camera
    rounded to float32, in float64, rounded once. A small direction component is a difference of
    larger products; computed in float32 its relative error reached ~1e-6, enough to move a far
    voxel's opacity by ~1e-4."""
    f32 = lambda x: float(torch.tensor(float(x), dtype=torch.float32))  # noqa: E731
    d_cam = camera_directions(settings.image_width, settings.image_height, f32(settings.cx), f32(settings.cy),
                              f32(settings.tanfovx), f32(settings.tanfovy), torch.float64, device)
    rot = settings.c2w_matrix[:3, :3].to(device=device, dtype=torch.float32).to(torch.float64)
    norm = d_cam.norm(dim=-1)
    rd = (d_cam @ rot.T) / norm[..., None]
    return d_cam.to(dtype), rd.to(dtype), norm.to(dtype)


def ray_quadrant(rd):
    """Octant code q = 4*[x<0] + 2*[y<0] + [z<0] of ray directions (SPEC 3.2)."""
    neg = (rd < 0).long()
    return neg[..., 0] * 4 + neg[..., 1] * 2 + neg[..., 2]


def order_rank(octpath, quadrant):
    """Front-to-back compositing rank of voxels for rays of octant `quadrant`."""
    return torch.bitwise_xor(octpath, quadrant * OCTANT_REPEAT)


def slab_segment(ro, rd, box_min, box_max):
    """Entry and exit distance of rays through axis-aligned boxes, computed as the kernels do:
    with the reciprocal direction, +-1e30 standing in for 1/0. A zero component is then
    inside that slab for every t or for none, and no 0 * inf NaN forms. (A ray exactly on a
    face shared by two voxels is ambiguous; the same arithmetic settles it the same way.)"""
    inv = torch.where(rd != 0, 1 / torch.where(rd != 0, rd, torch.ones_like(rd)), torch.full_like(rd, 1e30))
    t_lo = (box_min - ro) * inv
    t_hi = (box_max - ro) * inv
    return torch.minimum(t_lo, t_hi).amax(-1), torch.maximum(t_lo, t_hi).amin(-1)


def trilinear_weights(u):
    """Weights `[..., 8]` of the corners c = 4x + 2y + z for local coordinates `u [..., 3]`."""
    wx = torch.stack([1 - u[..., 0], u[..., 0]], -1)
    wy = torch.stack([1 - u[..., 1], u[..., 1]], -1)
    wz = torch.stack([1 - u[..., 2], u[..., 2]], -1)
    w = wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]
    return w.flatten(-3)


def density_activation(d):
    """sigma(d) = d above the knee, knee * exp((d - knee) / knee) below (continuous, slope 1)."""
    knee = meta.ACTIVATION_KNEE
    # min() keeps the unused exponential branch finite, so its gradient is never inf * 0.
    return torch.where(d > knee, d, knee * torch.exp(torch.clamp(d - knee, max=0) / knee))


def clamp_alpha(raw_alpha):
    """min(MAX_ALPHA, raw) that lets NaN through (a NaN density must not become opaque)."""
    return torch.where(raw_alpha > meta.MAX_ALPHA, torch.full_like(raw_alpha, meta.MAX_ALPHA), raw_alpha)


def contract(x):
    """Distortion-loss contraction c(x) = x below 1, 2 - 1/x above."""
    return torch.where(x < 1, x, 2 - 1 / torch.clamp(x, min=1))


def voxel_normal(geos):
    """Normalised density gradient over the corners: direction of increasing density."""
    g = geos.unflatten(-1, (2, 2, 2))
    gx = g[..., 1, :, :].sum((-1, -2)) - g[..., 0, :, :].sum((-1, -2))
    gy = g[..., :, 1, :].sum((-1, -2)) - g[..., :, 0, :].sum((-1, -2))
    gz = g[..., :, :, 1].sum((-1, -2)) - g[..., :, :, 0].sum((-1, -2))
    grad = torch.stack([gx, gy, gz], -1)
    return grad / torch.sqrt((grad * grad).sum(-1, keepdim=True) + meta.NORMAL_EPS)
