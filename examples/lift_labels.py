"""Lift 2D label maps onto voxels with per-pixel top-K contributors.

Every pixel's label votes for the k voxels that contribute most to that pixel, weighted by
their blending weight w = T * alpha; each voxel takes the label with the most weight. Here the
labels come from a made-up segmentation (the pixels whose rendered colour is reddish) of a few
views of the demo scene; any 2D label map works the same way. The lifted labels are then
rendered back from a view that did not vote, as a check.

    python examples/lift_labels.py [--views 6] [--size 96 72] [--k 4] [--device cpu|cuda]
"""
import argparse

import torch

from svraster_cuda import demo
from svraster_cuda.renderer import intersect_voxels, rasterize_voxels, topk_contributors


def label_map(color):
    """A stand-in for a segmentation network: 1 where the image is reddish, else 0."""
    return (color[0] > color[1] + 0.1).long()


def lift(model, views, geos, k, n_classes=2):
    """Top-K-weighted label votes of every voxel: [N, n_classes]."""
    votes = torch.zeros(model.n_voxels, n_classes, device=model.device)
    voxels = (model.octpath, model.vox_centers, model.vox_lengths)
    for cam in views:
        settings = model.raster_settings(cam)
        inter = intersect_voxels(settings, *voxels)            # sorted once, used twice
        color = rasterize_voxels(settings, *voxels, model.vox_fn, intersections=inter)[0]
        labels = label_map(color)                                # [H, W]
        ids, weights = topk_contributors(settings, *voxels, geos, k, intersections=inter)   # [k, H, W]
        listed = ids >= 0
        votes.index_put_((ids[listed], labels.expand_as(ids)[listed]), weights[listed], accumulate=True)
    return votes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 72))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model = demo.build_model().to(args.device)
    views = demo.demo_cameras(args.views + 1, *args.size)
    with torch.no_grad():
        everything = torch.arange(model.n_voxels, device=model.device)
        geos = model.vox_fn(everything, views[0].position.to(model.device))["geos"]
        votes = lift(model, views[:-1], geos, args.k)
        voxel_label = torch.where(votes.sum(1) > 0, votes.argmax(1), -1)

        # Check on the held-out view: render the lifted labels as colours (1 = white).
        held_out = views[-1]
        settings = model.raster_settings(held_out)._replace(bg_color=0.0)
        rgbs = (voxel_label == 1).float()[:, None].expand(-1, 3).contiguous()
        fn = lambda idx, cam_pos, mode: {"geos": geos, "rgbs": rgbs, "subdiv_p": torch.zeros_like(rgbs[:, :1])}
        color, _, _, T, _ = rasterize_voxels(settings, model.octpath, model.vox_centers, model.vox_lengths, fn)
        seen = T[0] < 0.5
        lifted = (color[0] > 0.5 * (1 - T[0])).long()
        truth = label_map(model.render(held_out, ss=1.0)["color"])
        agree = (lifted == truth)[seen].float().mean().item()
    print(f"{int((voxel_label >= 0).sum())} of {model.n_voxels} voxels labelled "
          f"({int((voxel_label == 1).sum())} as 1); held-out view: lifted labels agree with its label map "
          f"on {100 * agree:.1f}% of covered pixels")


if __name__ == "__main__":
    main()
