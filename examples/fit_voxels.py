"""Inverse rendering with rasterize_voxels inside a training loop: recover the demo scene
from its images alone.

    python examples/fit_voxels.py [--steps 1500] [--res 128] [--views 24] [--level 5] [--device cuda]

Renders ground-truth images of the embedded demo scene from cameras around it, starts a fresh
octree over the same bounds (uniform at `--level`, low density, grey), and optimises the grid
point densities and SH colours with Adam through GatherGeoParams, SH_eval and
rasterize_voxels on a photometric loss (distortion / ascending regularisers via
RasterSettings). Optionally subdivides the voxels of highest priority (subdiv_p.grad), as
SVRaster grows its octree. Saves an SVRaster model folder that render.py renders, and prints
`PSNR <start> -> <end> dB` last."""
import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cuda"))

import torch  # noqa: E402

from svraster_cuda import cameras, demo, meta, scenes, utils  # noqa: E402
from svraster_cuda.model import ModelConfig, SVRasterModel  # noqa: E402
from svraster_cuda.params import GatherGeoParams, SH_eval  # noqa: E402
from svraster_cuda.renderer import RasterSettings, rasterize_voxels  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--res", type=int, default=128, help="image width (height = 3/4 of it)")
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--level", type=int, default=5, help="level of the initial uniform octree (root cube [-2,2]^3)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--sh_degree", type=int, default=0, choices=(0, 1, 2, 3))
    ap.add_argument("--lambda_dist", type=float, default=0.0)
    ap.add_argument("--lambda_ascending", type=float, default=0.0)
    ap.add_argument("--subdivide", type=int, nargs="*", default=[], metavar="STEP",
                    help="steps at which the 5%% highest-priority voxels are split into 8 children")
    ap.add_argument("--log_every", type=int, default=50)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="fit_output")
    return ap.parse_args(argv)


class VoxelField:
    """Trainable SVRaster parameters on an octree: densities on shared grid points, SH per voxel."""

    def __init__(self, octpath, octlevel, grid_pts, sh0, shs, sh_degree, device):
        self.model = SVRasterModel(octpath, octlevel, torch.zeros(3), torch.tensor([2 * scenes.ROOT_HALF]),
                                   grid_pts, sh0, shs, sh_degree, ModelConfig(ss=1.0, sh_degree=sh_degree, black_background=True))
        self.model.to(device)
        for name in ("_geo_grid_pts", "_sh0", "_shs"):
            setattr(self.model, name, getattr(self.model, name).detach().requires_grad_())

    @classmethod
    def uniform(cls, level, sh_degree, device):
        n = 2 ** level
        ijk = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
        octlevel = torch.full((len(ijk), 1), level, dtype=torch.int8)
        octpath = utils.ijk_2_octpath(ijk, octlevel)
        n_grid = (n + 1) ** 3
        grid = torch.full((n_grid, 1), -6.0)                  # nearly empty space
        sh0 = torch.zeros(len(ijk), 3)                        # grey: rgb = 0.5
        shs = torch.zeros(len(ijk), (sh_degree + 1) ** 2 - 1, 3)
        return cls(octpath, octlevel, grid, sh0, shs, sh_degree, device)

    def params(self):
        return [self.model._geo_grid_pts, self.model._sh0] + ([self.model._shs] if self.model._shs.shape[1] else [])

    def render(self, cam, settings_kw):
        m = self.model
        s = RasterSettings(color_mode="sh", n_samp_per_vox=1, image_width=cam.width, image_height=cam.height,
                           tanfovx=cam.tanfovx, tanfovy=cam.tanfovy, cx=cam.cx, cy=cam.cy, w2c_matrix=cam.w2c,
                           c2w_matrix=cam.c2w, bg_color=0.0, **settings_kw)
        subdiv = torch.zeros(m.n_voxels, 1, device=m.device, requires_grad=True)

        def vox_fn(idx, cam_pos, color_mode):
            geos = GatherGeoParams.apply(m.vox_key, idx, m._geo_grid_pts)
            rgbs = SH_eval.apply(m.active_sh_degree, idx, m.vox_centers, cam_pos, None, m._sh0, m._shs)
            return {"geos": geos, "rgbs": rgbs, "subdiv_p": subdiv}

        color, _, _, _, _ = rasterize_voxels(s, m.octpath, m.vox_centers, m.vox_lengths, vox_fn)
        return color, subdiv

    def subdivide(self, priority, fraction=0.05):
        """Split the highest-priority voxels into 8 children; children inherit trilinearly
        interpolated grid values and their parent's colours."""
        m = self.model
        k = max(1, int(fraction * m.n_voxels))
        chosen = torch.zeros(m.n_voxels, dtype=torch.bool, device=m.device)
        eligible = m.octlevel[:, 0] < meta.MAX_NUM_LEVELS
        chosen[torch.topk(priority.where(eligible, torch.zeros_like(priority)), k).indices] = True
        chosen &= eligible
        with torch.no_grad():
            ijk = utils.octpath_2_ijk(m.octpath, m.octlevel)
            corner = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], device=m.device)
            child_ijk = (ijk[chosen][:, None, :] * 2 + corner).reshape(-1, 3)
            child_lv = (m.octlevel[chosen].long() + 1).repeat_interleave(8, 0)
            keep = ~chosen
            octpath = torch.cat([m.octpath[keep], utils.ijk_2_octpath(child_ijk, child_lv)])
            octlevel = torch.cat([m.octlevel[keep], child_lv.to(torch.int8)])
            geo_parent = m._geo_grid_pts[m.vox_key[chosen], 0]            # [K, 8]
            sh0 = torch.cat([m._sh0[keep], m._sh0[chosen].repeat_interleave(8, 0)])
            shs = torch.cat([m._shs[keep], m._shs[chosen].repeat_interleave(8, 0)])
            old_keep_key = m.vox_key[keep]
            old_grid = m._geo_grid_pts
            new = VoxelField(octpath, octlevel, torch.zeros(1, 1), sh0, shs, m.active_sh_degree, m.device)
            nm = new.model
            grid = torch.zeros(int(nm.vox_key.max()) + 1, 1, device=m.device)
            # Children's corners: trilinear interpolation of the parent's 8 values at (c + child) / 2.
            n_keep = int(keep.sum())
            child_key = nm.vox_key[n_keep:].reshape(-1, 8, 8)
            pos = (corner[None, :, None, :] + corner[None, None, :, :]).float() / 2    # [1, child, corner, 3]
            w = torch.stack([(pos[..., 0] if c & 4 else 1 - pos[..., 0]) * (pos[..., 1] if c & 2 else 1 - pos[..., 1])
                             * (pos[..., 2] if c & 1 else 1 - pos[..., 2]) for c in range(8)], -1)
            values = (w * geo_parent[:, None, None, :]).sum(-1)                      # [K, child, corner]
            grid[child_key.reshape(-1), 0] = values.reshape(-1)
            grid[nm.vox_key[:n_keep].reshape(-1), 0] = old_grid[old_keep_key.reshape(-1), 0]
            nm._geo_grid_pts = grid.requires_grad_()
        return new


def psnr(mse):
    return -10 * math.log10(max(mse, 1e-12))


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    width, height = args.res, max(1, args.res * 3 // 4)
    # Alternate two elevations so that the views see the scene from several heights.
    high, low = (cameras.orbit(args.views, (0.0, 0.0, -0.1), 1.45, width, height, fov_deg=65.0, elevation_deg=e)
                 for e in (28.0, 10.0))
    cams = [low[i] if i % 2 else high[i] for i in range(args.views)]
    truth = demo.build_model().to(device)
    with torch.no_grad():
        gt = [truth.render(c, ss=1.0)["color"].clamp(0, 1) for c in cams]

    field = VoxelField.uniform(args.level, args.sh_degree, device)
    settings_kw = {"lambda_dist": args.lambda_dist, "lambda_ascending": args.lambda_ascending}

    def evaluate():
        with torch.no_grad():
            return sum(float(((field.render(c, settings_kw)[0].clamp(0, 1) - g) ** 2).mean()) for c, g in zip(cams, gt)) / len(cams)

    start_psnr = psnr(evaluate())
    print(f"{field.model.n_voxels} voxels, {len(cams)} views at {width}x{height} on {device}; PSNR {start_psnr:.2f} dB")
    opt = torch.optim.Adam(field.params(), lr=args.lr)
    priority = torch.zeros(field.model.n_voxels, device=device)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        i = int(torch.randint(len(cams), (1,)))
        color, subdiv = field.render(cams[i], settings_kw)
        loss = ((color - gt[i]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        priority += subdiv.grad[:, 0]
        if step in args.subdivide:
            field = field.subdivide(priority)
            opt = torch.optim.Adam(field.params(), lr=args.lr)
            priority = torch.zeros(field.model.n_voxels, device=device)
            print(f"step {step}: subdivided to {field.model.n_voxels} voxels")
        if step % args.log_every == 0 or step == args.steps:
            rate = step / (time.perf_counter() - t0)
            print(f"step {step}: train PSNR {psnr(evaluate()):.2f} dB ({rate:.1f} steps/s)", flush=True)

    out = Path(args.out)
    m = field.model
    m.config.source_path = str(out.resolve())
    m.config.eval, m.config.test_every = True, 4
    m._geo_grid_pts, m._sh0, m._shs = (p.detach() for p in (m._geo_grid_pts, m._sh0, m._shs))
    m.save(out, iteration=args.steps)
    cameras.save_camera_json(out / "cameras.json", cams)
    end_psnr = psnr(evaluate())
    print(f"saved the model to {out} (python render.py {out})")
    print(f"PSNR {start_psnr:.2f} -> {end_psnr:.2f} dB")


if __name__ == "__main__":
    main()
