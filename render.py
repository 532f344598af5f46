"""Render a trained SVRaster model (or, with no MODEL_PATH, the embedded demo scene).

    python render.py                          # the demo scene -> ./demo_output/
    python render.py MODEL_PATH [--skip_train] [--skip_test] [--eval_fps] ...
    python render.py MODEL_PATH --orbit 60    # when the dataset is not on this machine

Writes MODEL_PATH/<split>/ours_<iteration><suffix>/{renders,gt,alpha,viz} (or under --out)."""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda"))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from svraster_cuda import cli  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_path", nargs="?", help="model folder or checkpoint .pt (default: the demo scene)")
    ap.add_argument("--iteration", type=int, default=-1, help="checkpoint iteration (default: newest)")
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--skip_test", action="store_true")
    ap.add_argument("--rgb_only", action="store_true", help="write only the colour renders")
    ap.add_argument("--use_jpg", action="store_true", help="write .jpg instead of .png")
    ap.add_argument("--eval_fps", action="store_true", help="time the renders instead of writing them")
    ap.add_argument("--overwrite_ss", type=float, help="supersampling factor (default: the model's)")
    ap.add_argument("--overwrite_n_samp_per_vox", type=int, choices=(1, 2, 3))
    ap.add_argument("--suffix", default="")
    ap.add_argument("--cameras", help="camera JSON (see docs/formats.md) instead of the dataset")
    ap.add_argument("--orbit", type=int, metavar="N", help="render N orbit views around the scene centre")
    ap.add_argument("--width", type=int, help="image width of --orbit views (800) and of the demo's cameras (320)")
    ap.add_argument("--height", type=int, help="image height of --orbit views (600) and of the demo's cameras (240)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    ap.add_argument("--out", help="output root (default: MODEL_PATH, or ./demo_output for the demo)")
    return ap.parse_args(argv)


@cli.main_guard
def main(argv=None):
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    demo_root = Path(args.out or "demo_output")
    model, folder, is_demo = cli.load_model(args.model_path, args.iteration, device, demo_root, (args.width, args.height))
    out_root = cli.writable_dir(Path(args.out) if args.out else (demo_root if is_demo else folder))
    splits = cli.splits_for(model, folder, args)
    render_kw = {"ss": args.overwrite_ss, "n_samp_per_vox": args.overwrite_n_samp_per_vox}
    if is_demo:
        print(f"demo scene: {model.n_voxels} voxels, written as an SVRaster model to {folder}")
    summary = []
    for split, cams in splits.items():
        if (split == "train" and args.skip_train) or (split == "test" and args.skip_test) or not cams:
            continue
        if args.eval_fps:
            summary.append(eval_fps(model, split, cams, render_kw, device))
            continue
        summary.append(render_split(model, split, cams, out_root, args, render_kw))
    if not summary:
        raise cli.CliError("nothing to render (all splits skipped or empty)")
    for line in summary:
        print(line)


def render_split(model, split, cams, out_root, args, render_kw):
    base = out_root / split / f"ours_{model.iteration}{args.suffix}"
    dirs = {k: cli.writable_dir(base / k) for k in (("renders", "gt") if args.rgb_only else ("renders", "gt", "alpha", "viz"))}
    ext = ".jpg" if args.use_jpg else ".png"
    scores = {}
    with torch.no_grad():
        for cam in tqdm(cams, desc=f"render {split}", unit="view", leave=False):
            out = model.render(cam, need_depth=not args.rgb_only, need_normal=not args.rgb_only, **render_kw)
            name = Path(cam.name).stem or cam.name
            cli.save_image(dirs["renders"] / f"{name}{ext}", out["color"])
            gt = cli.load_gt(cam.image_path, cam.width, cam.height)
            if gt is not None:
                gt = cli.composite_gt(gt, model.bg_color)
                cli.save_image(dirs["gt"] / f"{name}{ext}", gt)
                scores[name] = cli.psnr(out["color"].clamp(0, 1).cpu(), gt)
            if not args.rgb_only:
                cli.save_image(dirs["alpha"] / f"{name}{ext}", out["alpha"])
                cli.save_image(dirs["viz"] / f"{name}_depth{ext}", cli.depth_viz(out["depth"], out["alpha"]))
                cli.save_image(dirs["viz"] / f"{name}_normal{ext}", cli.normal_viz(out["normal"], cam))
    line = f"{split}: {len(cams)} views -> {base}"
    if scores:
        mean = sum(scores.values()) / len(scores)
        (base / "psnr.json").write_text(json.dumps({"mean": mean, "views": scores}, indent=1))
        line += f" (PSNR {mean:.2f} dB over {len(scores)} views with ground truth)"
    return line


def eval_fps(model, split, cams, render_kw, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model.render(cams[0], **render_kw)
        sync()
        start = time.perf_counter()
        for cam in tqdm(cams, desc=f"fps {split}", unit="view", leave=False):
            model.render(cam, **render_kw)
        sync()
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GB GPU"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB RSS"
    return (f"{split}: {cams[0].width}x{cams[0].height}, {len(cams)} views in {seconds:.3f} s = "
            f"{len(cams) / seconds:.2f} FPS, peak memory {peak} ({device.type})")


if __name__ == "__main__":
    main()
