"""Cameras: pinhole, OpenCV axes (x right, y down, z forward), and the loaders of
render.py: NeRF-synthetic transforms, COLMAP sparse models (text and binary), our own camera
JSON, and generated paths (orbit, smooth closed fly-through)."""
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class CameraError(Exception):
    """A camera file that cannot be used (message names the file)."""


@dataclass
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    c2w: torch.Tensor                     # [4, 4] float32, OpenCV axes
    name: str = ""
    image_path: str = ""
    w2c: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.c2w = torch.as_tensor(self.c2w, dtype=torch.float64).reshape(4, 4)
        self.w2c = torch.linalg.inv(self.c2w).float()
        self.c2w = self.c2w.float()

    @property
    def tanfovx(self):
        return self.width / (2 * self.fx)

    @property
    def tanfovy(self):
        return self.height / (2 * self.fy)

    @property
    def position(self):
        return self.c2w[:3, 3]

    def scaled(self, width, height):
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, self.c2w, self.name,
                      self.image_path)

    def to_json(self):
        return {"name": self.name, "width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
                "cx": self.cx, "cy": self.cy, "c2w": self.c2w.tolist()}


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """c2w [4, 4] (OpenCV axes) of a camera at `eye` looking at `target`."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-9:
        x = torch.linalg.cross(z, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit(n, center, radius, width, height, fov_deg=50.0, elevation_deg=25.0, up=(0.0, 0.0, 1.0)):
    """`n` cameras on a circle around `center` (in the plane normal to `up`), looking at it."""
    center = torch.as_tensor(center, dtype=torch.float64)
    up_t = torch.as_tensor(up, dtype=torch.float64)
    a = torch.linalg.cross(up_t, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    if a.norm() < 1e-6:
        a = torch.linalg.cross(up_t, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    a = a / a.norm()
    b = torch.linalg.cross(up_t, a)
    f = width / (2 * math.tan(math.radians(fov_deg) / 2))
    el = math.radians(elevation_deg)
    cams = []
    for i in range(n):
        phi = 2 * math.pi * i / n
        eye = center + radius * (math.cos(el) * (math.cos(phi) * a + math.sin(phi) * b) + math.sin(el) * up_t)
        cams.append(Camera(width, height, f, f, width / 2, height / 2, look_at(eye, center, up), f"orbit_{i:04d}"))
    return cams


# --- NeRF-synthetic ------------------------------------------------------------------------
def _image_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def _focal(info, axis, size):
    """Focal length along `axis` from 'fl_<axis>' or 'camera_angle_<axis>'; None if neither."""
    if f"fl_{axis}" in info:
        return float(info[f"fl_{axis}"])
    if f"camera_angle_{axis}" in info:
        return size / (2 * math.tan(float(info[f"camera_angle_{axis}"]) / 2))
    return None


def load_transforms(path, image_root=None):
    """Cameras of a NeRF-synthetic style transforms_*.json (OpenGL c2w converted to OpenCV)."""
    path = Path(path)
    try:
        meta_json = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CameraError(f"{path}: cannot read camera file ({exc})") from None
    frames = meta_json.get("frames") if isinstance(meta_json, dict) else None
    if not isinstance(frames, list) or not frames:
        raise CameraError(f"{path}: no 'frames' found")
    root = Path(image_root) if image_root else path.parent
    cams = []
    for i, fr in enumerate(frames):
        info = {**meta_json, **fr}
        try:
            c2w = torch.tensor(fr["transform_matrix"], dtype=torch.float64).reshape(4, 4) @ torch.diag(
                torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise CameraError(f"{path}: frame {i} has no valid 4x4 'transform_matrix'") from None
        file_path = str(fr.get("file_path", f"{i:04d}"))
        image = root / file_path
        if not image.suffix:
            image = image.with_suffix(".png")
        if "w" in info and "h" in info:
            W, H = int(info["w"]), int(info["h"])
        elif image.is_file():
            W, H = _image_size(image)
        else:
            raise CameraError(f"{path}: frame {i}: image {image} not found and no 'w'/'h' given")
        fx = _focal(info, "x", W)
        if fx is None:
            raise CameraError(f"{path}: frame {i}: no 'camera_angle_x' or 'fl_x'")
        fy = _focal(info, "y", H) or fx
        cx = float(info["cx"]) if "cx" in info else float(info.get("cx_p", 0.5)) * W
        cy = float(info["cy"]) if "cy" in info else float(info.get("cy_p", 0.5)) * H
        cams.append(Camera(W, H, fx, fy, cx, cy, c2w, Path(file_path).name, str(image)))
    return cams


# --- COLMAP --------------------------------------------------------------------------------
COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}


def _qvec_to_rot(q):
    w, x, y, z = q
    return np.array([[1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y],
                     [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
                     [2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y]])


def _read_colmap_text(folder):
    cams, images = {}, []
    for line in (folder / "cameras.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            p = line.split()
            cams[int(p[0])] = (p[1], int(p[2]), int(p[3]), [float(v) for v in p[4:]])
    lines = [ln for ln in (folder / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for ln in lines[::2]:
        p = ln.split()
        if len(p) >= 10:
            images.append((int(p[0]), [float(v) for v in p[1:5]], [float(v) for v in p[5:8]], int(p[8]), p[9]))
    return cams, images


def _read_colmap_binary(folder):
    cams, images = {}, []
    with open(folder / "cameras.bin", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        for _ in range(n):
            cam_id, model_id, w, h = struct.unpack("<iiQQ", f.read(24))
            name, n_params = COLMAP_MODELS.get(model_id, (f"model {model_id}", 0))
            params = list(struct.unpack(f"<{n_params}d", f.read(8 * n_params)))
            cams[cam_id] = (name, w, h, params)
    with open(folder / "images.bin", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        for _ in range(n):
            image_id, *rest = struct.unpack("<i7di", f.read(64))
            qvec, tvec, cam_id = rest[:4], rest[4:7], rest[7]
            name = b""
            while (c := f.read(1)) not in (b"\x00", b""):
                name += c
            (n_points,) = struct.unpack("<Q", f.read(8))
            f.seek(24 * n_points, 1)
            images.append((image_id, qvec, tvec, cam_id, name.decode()))
    return cams, images


def load_colmap(folder, image_dir=None):
    """Cameras of a COLMAP sparse model (`sparse/0`, text or binary; PINHOLE/SIMPLE_PINHOLE)."""
    folder = Path(folder)
    try:
        if (folder / "cameras.bin").is_file() and (folder / "images.bin").is_file():
            cams, images = _read_colmap_binary(folder)
        elif (folder / "cameras.txt").is_file() and (folder / "images.txt").is_file():
            cams, images = _read_colmap_text(folder)
        else:
            raise CameraError(f"{folder}: no cameras.bin/images.bin or cameras.txt/images.txt")
    except (OSError, struct.error, ValueError, IndexError) as exc:
        raise CameraError(f"{folder}: malformed COLMAP model ({exc.__class__.__name__}: {exc})") from None
    image_dir = Path(image_dir) if image_dir else folder.parent.parent / "images"
    out = []
    for image_id, qvec, tvec, cam_id, name in sorted(images, key=lambda im: im[4]):
        if cam_id not in cams:
            raise CameraError(f"{folder}: image {name} refers to missing camera {cam_id}")
        model, W, H, p = cams[cam_id]
        if model == "PINHOLE":
            fx, fy, cx, cy = p
        elif model == "SIMPLE_PINHOLE":
            fx, cx, cy = p
            fy = fx
        else:
            raise CameraError(f"{folder}: camera model {model} is not supported (only PINHOLE and SIMPLE_PINHOLE; "
                              "undistort the images with COLMAP's image_undistorter first)")
        w2c = np.eye(4)
        w2c[:3, :3] = _qvec_to_rot(qvec)
        w2c[:3, 3] = tvec
        out.append(Camera(W, H, fx, fy, cx, cy, torch.tensor(np.linalg.inv(w2c)), name, str(image_dir / name)))
    return out


# --- our camera JSON -----------------------------------------------------------------------
def load_camera_json(path):
    """{"cameras": [{"name", "width", "height", "fx", "fy", "cx", "cy", "c2w": 4x4 OpenCV}, ...]}"""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        cams = [Camera(int(c["width"]), int(c["height"]), float(c["fx"]), float(c["fy"]), float(c["cx"]),
                       float(c["cy"]), torch.tensor(c["c2w"], dtype=torch.float64), str(c.get("name", f"{i:04d}")))
                for i, c in enumerate(data["cameras"])]
    except (OSError, json.JSONDecodeError) as exc:
        raise CameraError(f"{path}: cannot read camera file ({exc})") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CameraError(f"{path}: malformed camera entry ({exc.__class__.__name__}: {exc})") from None
    if not cams:
        raise CameraError(f"{path}: no cameras")
    for c in cams:
        if c.width <= 0 or c.height <= 0 or not (c.fx > 0 and c.fy > 0) or not torch.isfinite(c.c2w).all():
            raise CameraError(f"{path}: camera {c.name}: sizes and focal lengths must be positive, c2w finite")
    return cams


def save_camera_json(path, cameras):
    Path(path).write_text(json.dumps({"cameras": [c.to_json() for c in cameras]}, indent=1))


# --- datasets and splits -------------------------------------------------------------------
def load_dataset(source_path, eval_split=False, test_every=8):
    """(train, test) cameras of a dataset folder, split as SVRaster does: transforms_test.json
    when present, else every `test_every`-th view is a test view when `eval_split`."""
    root = Path(source_path)
    if (root / "transforms_train.json").is_file():
        train = load_transforms(root / "transforms_train.json")
        test = load_transforms(root / "transforms_test.json") if (root / "transforms_test.json").is_file() else []
        return train, test
    if (root / "transforms.json").is_file():
        cams = load_transforms(root / "transforms.json")
    elif (root / "sparse" / "0").is_dir():
        cams = load_colmap(root / "sparse" / "0")
    elif (root / "cameras.json").is_file():
        cams = load_camera_json(root / "cameras.json")
    else:
        raise CameraError(f"{root}: no cameras found (transforms_*.json, sparse/0 or cameras.json)")
    if not eval_split:
        return cams, []
    return ([c for i, c in enumerate(cams) if i % test_every != 0], [c for i, c in enumerate(cams) if i % test_every == 0])


# --- fly-through -------------------------------------------------------------------------------
def _catmull_rom_closed(points, n):
    """`n` samples of the closed (periodic) Catmull-Rom spline through `points` [K, D]."""
    k = len(points)
    out = []
    for i in range(n):
        u = i * k / n
        j = int(u)
        t = u - j
        p0, p1, p2, p3 = (points[(j + d) % k] for d in (-1, 0, 1, 2))
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t * t * t))
    return torch.stack(out)


def fly_through(cameras, n_frames, ids=None, starting_id=0, n_keys=8, step_forward=0.0, width=None, height=None):
    """A smooth closed path through key cameras: the starting camera plus farthest-point picks
    (or `ids`), a periodic spline through position, look-at point and up vector."""
    if not cameras:
        raise CameraError("fly-through: no cameras to start from")
    pos = torch.stack([c.position.double() for c in cameras])
    if ids:
        keys = list(ids)
    else:
        keys = [starting_id % len(cameras)]
        dist = (pos - pos[keys[0]]).norm(dim=1)
        while len(keys) < min(n_keys, len(cameras)):
            keys.append(int(dist.argmax()))
            dist = torch.minimum(dist, (pos - pos[keys[-1]]).norm(dim=1))
        # visit the keys in order of angle around their centroid, so the loop does not cross itself
        centroid = pos[keys].mean(0)
        rel = pos[keys] - centroid
        order = torch.atan2(rel[:, 1], rel[:, 0]).argsort().tolist()
        start = order.index(0)
        keys = [keys[order[(start + i) % len(order)]] for i in range(len(order))]
    key_cams = [cameras[i] for i in keys]
    scale = float((pos.max(0).values - pos.min(0).values).norm()) or 1.0
    eye = torch.stack([c.position.double() + step_forward * scale * c.c2w[:3, 2].double() for c in key_cams])
    target = torch.stack([c.position.double() + (step_forward + 0.5) * scale * c.c2w[:3, 2].double() for c in key_cams])
    up = torch.stack([-c.c2w[:3, 1].double() for c in key_cams])
    eyes, targets, ups = (_catmull_rom_closed(x, n_frames) for x in (eye, target, up))
    ref = key_cams[0]
    W, H = width or ref.width, height or ref.height
    sx, sy = W / ref.width, H / ref.height
    return [Camera(W, H, ref.fx * sx, ref.fy * sy, ref.cx * sx, ref.cy * sy, look_at(e, t, u), f"{i:05d}")
            for i, (e, t, u) in enumerate(zip(eyes, targets, ups))]
