"""How many (voxel, tile) entries of the binning's bounding rectangles a tighter overlap test
would drop: those whose tile holds no pixel centre within 0.01 pixel of the voxel's projected
hull (the hexagon; issue 7's "tighter voxel-tile overlap test"). CPU, the reference's
formulas, 1920x1080, orbit view 0 of the benchmark scenes; voxels crossing the near plane and
items of more than 32 tiles (the wide ones) count as kept. Separating-axis test of each tile's
rectangle of pixel centres (within the voxel's pixel rectangle) against the hull's edges.

    python scripts/hull_entries.py O1.4M R1.5M O6M R6M
"""
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import make_scene, orbit_settings  # noqa: E402

def analyse(name, view=0, W=1920, H=1080):
    scene = make_scene(name, "cpu")
    s = orbit_settings(name, 8, W, H, "cpu")[view]
    c, l = scene["vox_centers"], scene["vox_lengths"]
    w2c, cam_pos = s.w2c_matrix, s.c2w_matrix[:3, 3]
    offs = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=torch.float32)
    corners = (c - 0.5 * l)[:, None, :] + offs * l[:, None, :]
    cam = corners @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[..., 2]
    fx, fy = W / (2 * s.tanfovx), H / (2 * s.tanfovy)
    front = (z >= max(s.near, 1e-6)).all(1)
    px = cam[..., 0] / z * fx + s.cx - 0.5
    py = cam[..., 1] / z * fy + s.cy - 0.5
    m = 1e-2
    x0 = torch.ceil(px.amin(1).clamp(-1, W) - m).long().clamp(0, W - 1)
    x1 = torch.floor(px.amax(1).clamp(-1, W) + m).long().clamp(0, W - 1)
    y0 = torch.ceil(py.amin(1).clamp(-1, H) - m).long().clamp(0, H - 1)
    y1 = torch.floor(py.amax(1).clamp(-1, H) + m).long().clamp(0, H - 1)
    ok = front & (x0 <= x1) & (y0 <= y1) & (px.amax(1) + m >= 0) & (px.amin(1) - m <= W - 1) \
        & (py.amax(1) + m >= 0) & (py.amin(1) - m <= H - 1)
    t = 8
    tx0, tx1, ty0, ty1 = x0 // t, x1 // t, y0 // t, y1 // t
    area = (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
    # The ray octants that reach each voxel (its entries are tiles x octants).
    bmin, bmax = c - 0.5 * l, c + 0.5 * l
    neg, pos = bmin < cam_pos, bmax >= cam_pos
    octs = torch.zeros(len(c), dtype=torch.long)
    for q in range(8):
        okq = torch.ones(len(c), dtype=torch.bool)
        for axis, bit in enumerate((4, 2, 1)):
            okq &= neg[:, axis] if q & bit else pos[:, axis]
        octs += okq.long()
    total_entries = int((area[ok] * octs[ok]).sum())
    sel = ok & (area >= 2) & (area <= 32)
    idx = sel.nonzero().squeeze(1)
    a = area[idx]
    ent_vox = torch.repeat_interleave(idx, a)
    first = torch.cumsum(a, 0) - a
    j = torch.arange(len(ent_vox)) - torch.repeat_interleave(first, a)
    w = (tx1 - tx0 + 1)[ent_vox]
    tx = tx0[ent_vox] + j % w
    ty = ty0[ent_vox] + j // w
    # The tile's pixel centres inside the voxel's pixel rectangle.
    cx0 = torch.maximum(tx * t, x0[ent_vox]).float(); cx1 = torch.minimum(tx * t + t - 1, x1[ent_vox]).float()
    cy0 = torch.maximum(ty * t, y0[ent_vox]).float(); cy1 = torch.minimum(ty * t + t - 1, y1[ent_vox]).float()
    tile_c = [(cx0, cy0), (cx1, cy0), (cx0, cy1), (cx1, cy1)]
    P = torch.stack([px, py], -1)
    separated = torch.zeros(len(ent_vox), dtype=torch.bool)
    for i, k in itertools.combinations(range(8), 2):
        pi, pk = P[:, i], P[:, k]
        d = pk - pi
        norm = d.norm(dim=-1).clamp_min(1e-12)
        side = (d[:, None, 0] * (P[..., 1] - pi[:, None, 1]) - d[:, None, 1] * (P[..., 0] - pi[:, None, 0])) / norm[:, None]
        # Every corner right of (or on) the line i-k: its left side is outside the hull.
        left_out = (side <= 1e-4).all(1)
        right_out = (side >= -1e-4).all(1)
        valid = (norm > 1e-6) & (left_out ^ right_out)
        e = ent_vox
        pie, de, ne = pi[e], d[e], norm[e]
        dist = [(de[:, 0] * (cy - pie[:, 1]) - de[:, 1] * (cx - pie[:, 0])) / ne for cx, cy in tile_c]
        dist = torch.stack(dist, 1)
        out_left = left_out[e] & (dist > m).all(1)
        out_right = right_out[e] & (dist < -m).all(1)
        separated |= valid[e] & (out_left | out_right)
    removable = int((separated.long() * octs[ent_vox]).sum())
    print(f"{name} view {view}: voxels in view (all in front) {int(ok.sum())}, entries {total_entries}, "
          f"entries of 2-32-tile items {int((a * octs[idx]).sum())}, outside the hull {removable} "
          f"({100 * removable / max(total_entries, 1):.1f}% of all entries)")

if __name__ == "__main__":
    for scene_name in sys.argv[1:]:
        t0 = time.time()
        analyse(scene_name)
        print(f"  ({time.time() - t0:.0f} s)")
