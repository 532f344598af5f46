"""Render a fly-through video of a trained SVRaster model (or, with no MODEL_PATH, the demo).

    python render_fly_through.py [MODEL_PATH] [--n_frames 300] [--fps 30] [--out video.mp4]

The path is a smooth closed spline through key cameras of the model's dataset (the starting
camera plus farthest-point picks, or --ids). Writes H.264 MP4 through imageio-ffmpeg
(`pip install -e ".[video]"`)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda"))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from svraster_cuda import cameras, cli  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_path", nargs="?", help="model folder or checkpoint .pt (default: the demo scene)")
    ap.add_argument("--iteration", type=int, default=-1)
    ap.add_argument("--n_frames", type=int, default=300)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--save_scale", type=float, default=1.0, help="scale of the video resolution")
    ap.add_argument("--ids", type=int, nargs="+", help="key camera indices (default: farthest-point picks)")
    ap.add_argument("--starting_id", type=int, default=0)
    ap.add_argument("--step_forward", type=float, default=0.0, help="move the path forward (fraction of the scene)")
    ap.add_argument("--cameras", help="camera JSON to take key cameras from")
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--out", help="video path (default: MODEL_PATH/render_fly_through.mp4)")
    return ap.parse_args(argv)


def video_writer(path, fps):
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - the encoder itself
    except ImportError:
        raise cli.CliError('video encoding needs imageio and imageio-ffmpeg: pip install -e ".[video]"') from None
    return imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=2,
                              ffmpeg_log_level="error", pixelformat="yuv420p")


@cli.main_guard
def main(argv=None):
    args = parse_args(argv)
    if args.n_frames < 1 or args.fps < 1 or not args.save_scale > 0:
        raise cli.CliError("--n_frames and --fps must be >= 1 and --save_scale > 0")
    device = cli.pick_device(args.device)
    model, folder, is_demo = cli.load_model(args.model_path, args.iteration, device, Path("demo_output"))
    keys = [c for split in cli.splits_for(model, folder, args).values() for c in split]
    ref = keys[0]
    width, height = (max(2, round(ref.width * args.save_scale / 2) * 2), max(2, round(ref.height * args.save_scale / 2) * 2))
    path = cameras.fly_through(keys, args.n_frames, ids=args.ids, starting_id=args.starting_id,
                               step_forward=args.step_forward, width=width, height=height)
    out = Path(args.out) if args.out else (Path("demo_output") if is_demo else folder) / "render_fly_through.mp4"
    cli.writable_dir(out.parent)
    writer = video_writer(out, args.fps)
    try:
        with torch.no_grad():
            for cam in tqdm(path, desc="fly-through", unit="frame"):
                writer.append_data(cli.to_image(model.render(cam)["color"]))
    finally:
        writer.close()
    print(f"fly-through: {len(path)} frames at {width}x{height}, {args.fps} fps -> {out}")


if __name__ == "__main__":
    main()
