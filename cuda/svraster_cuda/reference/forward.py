"""Stage 5, per-tile compositing (mirrors `cuda/src/forward.cu`), vectorised over pixels.

Each pixel's slice of the sorted list is expanded into (pixel, voxel) candidates, the exact
ray-box test keeps the hits, and compositing runs over all hits at once: the transmittance in
front of every hit is a segmented (per-pixel) prefix sum of log(1 - alpha) in float64. Pixels
are processed in chunks so that memory stays bounded; each pixel is independent of the others.
`shade_hits` is differentiable in geos and rgbs; the backward stage re-runs it under autograd."""
from typing import NamedTuple

import torch

from .. import meta
from .math import clamp_alpha, contract, density_activation, slab_segment, trilinear_weights, voxel_normal
from .preprocess import tile_grid

ACC = torch.float64           # accumulation dtype of compositing
CANDIDATES_PER_CHUNK = 1 << 21


class Rays(NamedTuple):
    """The rays rendered: every pixel in row-major order (dense, `shape` (H, W)) or the
    requested pixels in request order (sparse, `shape` (P,))."""
    origin: torch.Tensor      # [3]
    direction: torch.Tensor   # [R, 3] unit world directions
    cam_norm: torch.Tensor    # [R] |d_cam|, converts ray distance to camera depth
    group: torch.Tensor       # [R] tile * 8 + octant: which list a ray reads
    row: torch.Tensor         # [R] pixel row
    col: torch.Tensor         # [R] pixel column
    shape: tuple              # trailing shape of the outputs: (H, W) or (P,)


class Hits(NamedTuple):
    pixel: torch.Tensor       # [K] local pixel index, non-decreasing (pixel-major)
    voxel: torch.Tensor       # [K] voxel id, front to back within each pixel
    t_start: torch.Tensor     # [K] segment start a (after the near plane)
    t_end: torch.Tensor       # [K] segment end b


def pixel_chunks(rays, binning):
    """Split the rays into chunks holding at most CANDIDATES_PER_CHUNK (ray, entry) pairs."""
    counts = (binning.group_end - binning.group_start)[rays.group]
    total = torch.cumsum(counts, 0)
    chunk_of = torch.div(total - counts, CANDIDATES_PER_CHUNK, rounding_mode="floor")
    bounds = torch.searchsorted(chunk_of, torch.arange(int(chunk_of[-1]) + 2, device=chunk_of.device)) if len(counts) else []
    bounds = bounds.tolist() if len(counts) else [0, 0]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            yield torch.arange(lo, hi, device=rays.group.device)


def intersect(settings, rays, binning, pixel_rect, pixels, vox_centers, vox_lengths):
    """The hits of the chunk's pixels: candidates from their lists whose pixel rectangle holds
    the pixel (the kernels' cheap test), kept if the ray segment in front of the near plane
    passes through the box."""
    if len(rays.shape) == 2:
        pair_pixel, voxel = candidates_by_entry(rays, binning, pixel_rect, pixels, tile_grid(settings)[0])
    else:
        pair_pixel, voxel = candidates_by_pixel(rays, binning, pixel_rect, pixels)

    rd = rays.direction[pixels][pair_pixel]
    half = vox_lengths[voxel] * 0.5
    t_enter, t_exit = slab_segment(rays.origin, rd, vox_centers[voxel] - half, vox_centers[voxel] + half)
    t_start = torch.maximum(t_enter, settings.near * rays.cam_norm[pixels][pair_pixel])
    hit = t_start <= t_exit
    return Hits(pair_pixel[hit], voxel[hit], t_start[hit], t_exit[hit])


def candidates_by_pixel(rays, binning, pixel_rect, pixels):
    """(local pixel, voxel) candidates, pixel-major in list order, formed pixel by pixel: every
    entry of a pixel's list, kept if its rectangle holds the pixel. Cheap for a few pixels per
    tile (sparse requests)."""
    group = rays.group[pixels]
    start = binning.group_start[group]
    counts = binning.group_end[group] - start
    pair_pixel = torch.repeat_interleave(torch.arange(len(pixels), device=pixels.device), counts)
    offset = torch.cumsum(counts, 0) - counts
    entry = start[pair_pixel] + torch.arange(len(pair_pixel), device=pixels.device) - offset[pair_pixel]
    voxel = binning.entry_voxel[entry]
    px, py = rays.col[pixels][pair_pixel], rays.row[pixels][pair_pixel]
    rect = pixel_rect[voxel]
    inside = (px >= rect[:, 0]) & (px <= rect[:, 2]) & (py >= rect[:, 1]) & (py <= rect[:, 3])
    return pair_pixel[inside], voxel[inside]


def candidates_by_entry(rays, binning, pixel_rect, pixels, tiles_x):
    """The same candidates for a dense chunk (consecutive row-major pixels), formed entry by
    entry: each entry of the chunk's lists is expanded into the pixels of its rectangle within
    its tile and the chunk's rows, kept where the pixel reads that entry's list (its octant).
    Far fewer pairs than pixel by pixel when rectangles are small against a tile."""
    W = rays.shape[1]
    device = pixels.device
    first, n = int(pixels[0]), len(pixels)
    groups = torch.unique(rays.group[pixels])
    start, end = binning.group_start[groups], binning.group_end[groups]
    counts = end - start
    entry_group = torch.repeat_interleave(groups, counts)
    offset = torch.cumsum(counts, 0) - counts
    entry = torch.arange(len(entry_group), device=device) + torch.repeat_interleave(start - offset, counts)
    voxel = binning.entry_voxel[entry]

    tile = entry_group // 8
    tile_x0 = (tile % tiles_x) * meta.TILE_SIZE
    tile_y0 = (tile // tiles_x) * meta.TILE_SIZE
    rect = pixel_rect[voxel]
    x0 = torch.maximum(rect[:, 0], tile_x0)
    x1 = torch.minimum(rect[:, 2], tile_x0 + meta.TILE_SIZE - 1)
    y0 = torch.maximum(rect[:, 1], tile_y0).clamp(min=first // W)
    y1 = torch.minimum(rect[:, 3], tile_y0 + meta.TILE_SIZE - 1).clamp(max=(first + n - 1) // W)
    width = (x1 - x0 + 1).clamp(min=0)
    area = width * (y1 - y0 + 1).clamp(min=0)

    source = torch.repeat_interleave(torch.arange(len(area), device=device), area)
    local = torch.arange(len(source), device=device) - torch.repeat_interleave(torch.cumsum(area, 0) - area, area)
    row = y0[source] + local // width[source]
    col = x0[source] + local % width[source]
    pixel = row * W + col - first
    in_chunk = (pixel >= 0) & (pixel < n)
    pixel, source = pixel[in_chunk], source[in_chunk]
    reads = rays.group[pixels][pixel] == entry_group[source]
    pixel, source = pixel[reads], source[reads]
    # Entries come in list order, so a stable sort by pixel keeps each pixel's front-to-back order.
    order = torch.sort(pixel, stable=True).indices
    return pixel[order], voxel[source[order]]


def segmented_exclusive_cumsum(values, first_of_segment):
    inclusive = torch.cumsum(values, 0)
    exclusive = inclusive - values
    return exclusive - exclusive[first_of_segment]


def alpha_straight_through(alpha, integral):
    """Value `alpha`, derivative exp(-I): the MAX_ALPHA clamp is straight-through (SPEC 4)."""
    return alpha.detach() + torch.exp(-integral).detach() * (integral - integral.detach())


def alpha_own(alpha, integral):
    """Value `alpha`, derivative 1 - alpha: the clamped derivative used by a voxel's own depth."""
    return alpha.detach() + (1 - alpha).detach() * (integral - integral.detach())


def shade_hits(settings, rays, pixels, hits, vox_centers, vox_lengths, geos, rgbs, n_pixels):
    """Composite the hits of a chunk. Returns per-pixel sums (float64) and per-hit terms."""
    n = settings.n_samp_per_vox
    ro = rays.origin
    rd = rays.direction[pixels][hits.pixel]
    length = vox_lengths[hits.voxel]                       # [K, 1]
    box_min = vox_centers[hits.voxel] - 0.5 * length
    g = geos[hits.voxel]                                   # [K, 8]

    delta = (hits.t_end - hits.t_start) / n
    steps = torch.arange(n, dtype=delta.dtype, device=delta.device) + 0.5
    t_k = hits.t_start[:, None] + steps * delta[:, None]   # [K, n]

    def density_at(t, rows=slice(None)):
        """Raw trilinear density at distances `t [K', m]` along the rays of hits `rows`."""
        u = (ro + t[..., None] * rd[rows].unsqueeze(-2) - box_min[rows].unsqueeze(-2)) / length[rows].unsqueeze(-1)
        return (trilinear_weights(u) * g[rows].unsqueeze(-2)).sum(-1)

    d_k = density_at(t_k)
    integral_k = meta.STEP_SZ_SCALE * delta[:, None] * density_activation(d_k)
    integral = integral_k.sum(1)
    alpha_val = clamp_alpha(1 - torch.exp(-integral))
    alpha = alpha_straight_through(alpha_val, integral)

    # Skipped when alpha < MIN_ALPHA; NaN is kept, so that it reaches the pixel.
    visible = ~(alpha_val < meta.MIN_ALPHA)
    log_trans = torch.where(visible, torch.log1p(-alpha.to(ACC)), torch.zeros((), dtype=ACC))
    counts = torch.bincount(hits.pixel, minlength=n_pixels)
    first = (torch.cumsum(counts, 0) - counts)[hits.pixel]
    T_in = torch.exp(segmented_exclusive_cumsum(log_trans, first))
    used = visible & ~(T_in < meta.EARLY_STOP_T)           # early stop after T drops below
    weight = torch.where(used, T_in * alpha.to(ACC), torch.zeros((), dtype=ACC))

    def pixel_sum(x):
        out = torch.zeros((n_pixels,) + x.shape[1:], dtype=ACC, device=x.device)
        return out.index_add(0, hits.pixel, x.to(ACC))

    T_out = torch.exp(pixel_sum(torch.where(used, log_trans, torch.zeros((), dtype=ACC))))
    out = {
        "color": pixel_sum(weight[:, None] * rgbs[hits.voxel].to(ACC)),
        "T": T_out,
        "weight": weight, "used": used, "T_in": T_in, "alpha": alpha, "first": first,
        "t_k": t_k, "density_at": density_at, "integral_k": integral_k,
    }
    if settings.need_depth:
        if n == 1:
            depth_val = alpha_own(alpha_val, integral) * (hits.t_start + hits.t_end) * 0.5
        else:
            alpha_k = alpha_own(clamp_alpha(1 - torch.exp(-integral_k)), integral_k)
            trans_k = torch.cumprod(torch.cat([torch.ones_like(alpha_k[:, :1]), 1 - alpha_k[:, :-1]], 1), 1)
            depth_val = (trans_k * alpha_k * t_k).sum(1)
        mean = torch.where(used, T_in * depth_val.to(ACC), torch.zeros((), dtype=ACC))
        out["depth_mean"] = pixel_sum(mean) / rays.cam_norm[pixels].to(ACC)
        midpoint = 0.5 * (contract(hits.t_start) + contract(hits.t_end))
        out["midpoint"] = midpoint
        out["distortion_acc"] = pixel_sum(weight * midpoint.to(ACC))
    if settings.need_normal:
        out["normal"] = pixel_sum(weight[:, None] * voxel_normal(g).to(ACC))
    return out


def median_depth(settings, rays, pixels, hits, shaded, n_pixels):
    """Depth where the running transmittance inside the median voxel reaches 0.5 (SPEC 3.5)."""
    position = torch.arange(len(hits.pixel), device=hits.pixel.device)
    qualifies = shaded["used"] & (shaded["T_in"] > 0.5)
    last = torch.full((n_pixels,), -1, dtype=torch.long, device=position.device)
    last = last.scatter_reduce(0, hits.pixel[qualifies], position[qualifies], "amax")
    has = last >= 0
    sel = last[has]
    a, b = hits.t_start[sel].detach(), hits.t_end[sel].detach()
    step = (b - a) / meta.MEDIAN_SUBSTEPS
    t_sub = a[:, None] + (torch.arange(meta.MEDIAN_SUBSTEPS, dtype=a.dtype, device=a.device) + 0.5) * step[:, None]
    d_sub = shaded["density_at"](t_sub, sel).detach()
    factor = torch.exp(-meta.STEP_SZ_SCALE * step[:, None] * density_activation(d_sub))
    running = shaded["T_in"][sel].to(a.dtype)[:, None].detach() * torch.cumprod(factor, 1)
    crossed = running <= 0.5
    index = torch.where(crossed.any(1), crossed.long().argmax(1), meta.MEDIAN_SUBSTEPS - 1)
    depth = torch.zeros(n_pixels, dtype=ACC, device=position.device)
    depth[has] = t_sub.gather(1, index[:, None])[:, 0].to(ACC) / rays.cam_norm[pixels][has].to(ACC)
    return depth


def topk_of_hits(hits, shaded, k, n_pixels):
    """The k used hits of each pixel with the largest blending weight, sorted by weight
    (compared in float32, as the kernels do) descending, ties front first. Returns voxel ids [n, k]
    (-1 padded) and weights [n, k] (0 padded)."""
    device = hits.pixel.device
    weight = shaded["weight"].float()
    listed = shaded["used"] & ~torch.isnan(weight)   # a NaN weight is not listed
    pixel, voxel, weight = hits.pixel[listed], hits.voxel[listed], weight[listed]
    # Stable sorts keep the front-to-back order among equal weights.
    order = torch.sort(-weight, stable=True).indices
    order = order[torch.sort(pixel[order], stable=True).indices]
    pixel, voxel, weight = pixel[order], voxel[order], weight[order]
    counts = torch.bincount(pixel, minlength=n_pixels)
    rank = torch.arange(len(pixel), device=device) - (torch.cumsum(counts, 0) - counts)[pixel]
    keep = rank < k
    ids = torch.full((n_pixels, k), -1, dtype=torch.long, device=device)
    weights = torch.zeros(n_pixels, k, dtype=torch.float32, device=device)
    ids[pixel[keep], rank[keep]] = voxel[keep]
    weights[pixel[keep], rank[keep]] = weight[keep]
    return ids, weights
