"""Per-voxel parameters from a trained model: densities gathered from shared grid points and
colours from spherical harmonics (upstream names `GatherGeoParams`, `SH_eval`)."""
import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(degree, dirs):
    """Real SH basis (3D Gaussian Splatting convention) without the DC term: [K, (deg+1)^2 - 1]."""
    x, y, z = dirs.unbind(-1)
    basis = []
    if degree > 0:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        basis += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree > 2:
        basis += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                  SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                  SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(basis, -1) if basis else dirs.new_zeros(len(dirs), 0)


class SH_eval(torch.autograd.Function):
    """rgb = max(0, SH(dir) + 0.5) for the voxels `idx`, dir = normalised (centre - camera)
    (or `viewdir` when given). Returns [N, 3] with zeros outside `idx`; differentiable in
    sh0 [N,3] and shs [N, (deg+1)^2 - 1, 3]."""

    @staticmethod
    def forward(ctx, active_sh_degree, idx, vox_centers, cam_pos, viewdir, sh0, shs):
        if viewdir is None:
            dirs = vox_centers[idx] - cam_pos
            dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        else:
            dirs = viewdir.expand(len(idx), 3) if viewdir.dim() == 1 else viewdir[idx]
        n_coef = (active_sh_degree + 1) ** 2 - 1
        basis = sh_basis(active_sh_degree, dirs.to(sh0.dtype))
        value = SH_C0 * sh0[idx] + 0.5
        if n_coef:
            value = value + (basis[:, :, None] * shs[idx, :n_coef]).sum(1)
        positive = value > 0
        rgbs = torch.zeros_like(sh0)
        rgbs[idx] = torch.where(positive, value, torch.zeros_like(value))
        ctx.save_for_backward(idx, basis, positive)
        ctx.shapes = (sh0.shape, shs.shape, n_coef)
        return rgbs

    @staticmethod
    def backward(ctx, dL_drgbs):
        idx, basis, positive = ctx.saved_tensors
        sh0_shape, shs_shape, n_coef = ctx.shapes
        g = torch.where(positive, dL_drgbs[idx], torch.zeros((), dtype=dL_drgbs.dtype, device=dL_drgbs.device))
        grad_sh0 = dL_drgbs.new_zeros(sh0_shape).index_add_(0, idx, SH_C0 * g)
        grad_shs = dL_drgbs.new_zeros(shs_shape)
        if n_coef:
            grad_shs[:, :n_coef].index_add_(0, idx, basis[:, :, None] * g[:, None, :])
        return None, None, None, None, None, grad_sh0, grad_shs


class GatherGeoParams(torch.autograd.Function):
    """geos [N, 8] = grid_pts[vox_key] for the voxels `care_idx` (zeros elsewhere);
    the gradient is scattered back onto the shared grid points [M, 1]."""

    @staticmethod
    def forward(ctx, vox_key, care_idx, grid_pts):
        geos = grid_pts.new_zeros(len(vox_key), 8)
        geos[care_idx] = grid_pts[vox_key[care_idx], 0]
        ctx.save_for_backward(vox_key, care_idx)
        ctx.n_grid = grid_pts.shape
        return geos

    @staticmethod
    def backward(ctx, dL_dgeos):
        vox_key, care_idx = ctx.saved_tensors
        grad = dL_dgeos.new_zeros(ctx.n_grid)
        grad[:, 0].index_add_(0, vox_key[care_idx].reshape(-1), dL_dgeos[care_idx].reshape(-1))
        return None, None, grad
