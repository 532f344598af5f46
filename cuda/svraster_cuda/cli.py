"""What render.py and render_fly_through.py share: device choice, model and camera loading,
image writing, visualisations, and one-line errors instead of tracebacks."""
import functools
import math
import sys
from pathlib import Path

import numpy as np
import torch

from . import cameras as cam_mod
from .cameras import CameraError
from .model import ModelError, SVRasterModel


class CliError(Exception):
    """Reported as one line on stderr with a non-zero exit code."""


def main_guard(fn):
    """Run a CLI entry point: expected failures become one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CliError, ModelError, CameraError) as exc:
            print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:
            print(f"{Path(sys.argv[0]).name}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
            sys.exit(2)
    return wrapper


def pick_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    return torch.device(name)


def writable_dir(path):
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"{path}: output folder is not writable ({exc.strerror or exc})") from None
    return path


def load_model(model_path, iteration, device, demo_folder, demo_size=(None, None)):
    """The model at `model_path`, or the embedded demo written to `demo_folder` (its cameras
    sized `demo_size` when given)."""
    if model_path is None:
        from . import demo
        width, height = demo_size
        folder = demo.write_demo(writable_dir(demo_folder) / "model", width=width or 320, height=height or 240)
        return SVRasterModel.load(folder, device=device), folder, True
    model = SVRasterModel.load(model_path, iteration, device=device)
    return model, Path(model_path), False


def resolution_scale(camera, config):
    """SVRaster's res_downscale / res_width on a camera."""
    if config.res_width and config.res_width > 0 and camera.width > config.res_width:
        s = config.res_width / camera.width
    elif config.res_downscale and config.res_downscale > 0:
        s = 1.0 / config.res_downscale
    else:
        return camera
    return camera.scaled(max(1, round(camera.width * s)), max(1, round(camera.height * s)))


def splits_for(model, folder, args):
    """{'train': [...], 'test': [...]} from --cameras, --orbit or the model's dataset."""
    if getattr(args, "cameras", None):
        return {"cameras": cam_mod.load_camera_json(args.cameras)}
    if getattr(args, "orbit", None):
        c = model.scene_center.cpu().tolist()
        radius = 0.6 * float(model.scene_extent)
        return {"orbit": cam_mod.orbit(args.orbit, c, radius, args.width or 800, args.height or 600)}
    cfg = model.config
    source = Path(cfg.source_path) if cfg.source_path else None
    if source is None or not source.exists():
        raise CliError(f"{folder}: the dataset of this model ({cfg.source_path or 'data.source_path unset'}) is not on "
                       "this machine; use --cameras FILE or --orbit N")
    train, test = cam_mod.load_dataset(source, cfg.eval, cfg.test_every)
    if not train and not test:
        raise CliError(f"{source}: no cameras found")
    return {"train": [resolution_scale(c, cfg) for c in train], "test": [resolution_scale(c, cfg) for c in test]}


def to_image(x):
    """[C, H, W] in [0, 1] -> uint8 HxWxC (or HxW)."""
    a = (x.detach().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    return a[..., 0] if a.shape[2] == 1 else a


def save_image(path, x):
    from PIL import Image
    Image.fromarray(to_image(x)).save(path)


def load_gt(path, width, height):
    from PIL import Image
    if not path or not Path(path).is_file():
        return None
    with Image.open(path) as im:
        im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.LANCZOS)
        a = torch.from_numpy(np.asarray(im).copy()).float().permute(2, 0, 1) / 255
    return a


def composite_gt(gt, bg):
    if gt.shape[0] == 4:
        return gt[:3] * gt[3:] + bg * (1 - gt[3:])
    return gt


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def turbo(x):
    """A compact approximation of the turbo colormap for x in [0, 1]: [3, H, W]."""
    x = x.clamp(0, 1)
    r = 0.1357 + x * (4.5974 - x * (42.3277 - x * (130.5887 - x * (150.5666 - x * 58.1375))))
    g = 0.0914 + x * (2.1856 + x * (4.8052 - x * (14.0195 - x * (4.2109 + x * 2.7747))))
    b = 0.1067 + x * (12.5925 - x * (60.1097 - x * (109.0745 - x * (88.5066 - x * 26.8183))))
    return torch.stack([r, g, b]).clamp(0, 1)


def depth_viz(depth, alpha):
    d = depth[0] / alpha[0].clamp(min=1e-6)
    valid = alpha[0] > 0.5
    if valid.any():
        lo, hi = d[valid].quantile(0.01), d[valid].quantile(0.99)
        d = (d - lo) / (hi - lo).clamp(min=1e-6)
    return turbo(1 - d) * (alpha > 0.01)


def normal_viz(normal, camera):
    n = camera.w2c[:3, :3].to(normal.device) @ normal.reshape(3, -1)
    return ((n.reshape(normal.shape) * torch.tensor([0.5, -0.5, -0.5], device=normal.device)[:, None, None]) + 0.5).clamp(0, 1)
