"""Backward of per-tile compositing (mirrors `cuda/src/backward.cu`).

The chunk's hits are shaded again under autograd and the scalar
`sum(outputs * dL/doutputs) + implicit regularisers` is differentiated. The regularisers of
SPEC section 4 enter as surrogate terms whose gradient is the prescribed one (their weights
or segment terms are detached where the SPEC treats them as constants). The subdivision
priority is `sum over pixels |dL/dalpha * alpha|`, read off the same graph."""
import torch

from .forward import ACC, intersect, pixel_chunks, segmented_exclusive_cumsum, shade_hits
from .math import contract


def _regularisers(settings, rays, pixels, hits, shaded, rgbs):
    """Surrogate loss whose gradient is the sum of the three implicit regularisers. They are
    normalised by the image's W * H also when only some pixels are rendered (sparse), whose
    `gt_color` then holds one column per requested pixel."""
    W, H = settings.image_width, settings.image_height
    weight, used = shaded["weight"], shaded["used"]
    const_weight = weight.detach()
    total = torch.zeros((), dtype=ACC)
    if settings.lambda_R_concen > 0:
        gt = settings.gt_color.to(device=rgbs.device, dtype=rgbs.dtype).reshape(3, -1)
        gt_hit = gt[:, pixels[hits.pixel]].T
        sq = ((rgbs[hits.voxel] - gt_hit) ** 2).sum(1)
        total = total + settings.lambda_R_concen / (W * H) * (const_weight * sq.to(ACC)).sum()
    if settings.lambda_ascending > 0:
        d_start = shaded["density_at"](hits.t_start[:, None])[:, 0]
        d_end = shaded["density_at"](hits.t_end[:, None])[:, 0]
        descending = (d_start > d_end).detach() & used
        term = torch.where(descending, (d_start - d_end).to(ACC), torch.zeros((), dtype=ACC))
        total = total + settings.lambda_ascending / (W * H) * (const_weight * term).sum()
    if settings.lambda_dist > 0:
        c_start, c_end = contract(hits.t_start).to(ACC), contract(hits.t_end).to(ACC)
        mid, size = 0.5 * (c_start + c_end), c_end - c_start
        w_before = segmented_exclusive_cumsum(weight, shaded["first"])
        wm_before = segmented_exclusive_cumsum(weight * mid, shaded["first"])
        # Midpoints increase front to back, so sum_ij w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_<i - (wm)_<i).
        pairwise = 2 * weight * (mid * w_before - wm_before)
        total = total + settings.lambda_dist / (W * H) * (pairwise + weight * weight * size / 3).sum()
    return total


def render_backward(settings, state, rays, vox_centers, vox_lengths, geos, rgbs, dL_dcolor, dL_ddepth, dL_dnormal,
                    dL_dT):
    binning = state.binning
    geos = geos.detach().requires_grad_(True)
    rgbs = rgbs.detach().requires_grad_(True)
    grad_geos, grad_rgbs = torch.zeros_like(geos), torch.zeros_like(rgbs)
    priority = torch.zeros(len(geos), 1, dtype=geos.dtype, device=geos.device)

    g_color = dL_dcolor.reshape(3, -1).T.to(ACC)
    g_T = dL_dT.reshape(-1).to(ACC)
    g_depth = dL_ddepth.reshape(3, -1)[0].to(ACC) if settings.need_depth and dL_ddepth.numel() else None
    g_normal = dL_dnormal.reshape(3, -1).T.to(ACC) if settings.need_normal and dL_dnormal.numel() else None

    for pixels in pixel_chunks(rays, binning):
        hits = intersect(settings, rays, binning, state.preprocessed.pixel_rect, pixels, vox_centers, vox_lengths)
        if len(hits.voxel) == 0:
            continue
        with torch.enable_grad():
            shaded = shade_hits(settings, rays, pixels, hits, vox_centers, vox_lengths, geos, rgbs, len(pixels))
            color = shaded["color"] + shaded["T"][:, None] * settings.bg_color
            loss = (color * g_color[pixels]).sum() + (shaded["T"] * g_T[pixels]).sum()
            if g_depth is not None:
                loss = loss + (shaded["depth_mean"] * g_depth[pixels]).sum()
            if g_normal is not None:
                loss = loss + (shaded["normal"] * g_normal[pixels]).sum()
            loss = loss + _regularisers(settings, rays, pixels, hits, shaded, rgbs)
            if not loss.requires_grad:
                continue
            d_geos, d_rgbs, d_alpha = torch.autograd.grad(
                loss, [geos, rgbs, shaded["alpha"]], allow_unused=True, materialize_grads=True)
        grad_geos += d_geos
        grad_rgbs += d_rgbs
        contribution = torch.where(shaded["used"], (d_alpha * shaded["alpha"]).abs().detach(), torch.zeros((), dtype=geos.dtype))
        priority.index_add_(0, hits.voxel, contribution[:, None])
    return grad_geos, grad_rgbs, priority
