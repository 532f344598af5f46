"""Trained SVRaster models: checkpoint and config loading, octree decoding, grid-point
linking, per-frame voxel parameters and rendering (SPEC sections 1, 2 and 6).

Checkpoints are read with `torch.load(weights_only=True)` (no code runs) and checked before
anything is allocated from them; `ModelError` carries a one-line message naming the file."""
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import meta, utils
from .params import GatherGeoParams, SH_eval
from .renderer import RasterSettings, rasterize_voxels

CHECKPOINT_RE = re.compile(r"iter(\d+)_model\.pt$")
MAX_CHECKPOINT_VOXELS = meta.MAX_VOXELS


class ModelError(Exception):
    """A model folder, checkpoint or config that cannot be used (message names the file)."""


@dataclass
class ModelConfig:
    """The parts of SVRaster's config.yaml the renderer uses (defaults: SVRaster's)."""
    ss: float = 1.5
    n_samp_per_vox: int = 1
    sh_degree: int = 3
    white_background: bool = False
    black_background: bool = False
    source_path: str = ""
    eval: bool = False
    test_every: int = 8
    res_downscale: float = 0.0
    res_width: int = 0

    @classmethod
    def load(cls, path):
        """Plain YAML (`yaml.safe_load`: no tags, no code); unknown keys are ignored."""
        import yaml
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"{path}: cannot read config ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        model, dat = data.get("model") or {}, data.get("data") or {}
        if not isinstance(model, dict) or not isinstance(dat, dict):
            raise ModelError(f"{path}: 'model' and 'data' must be mappings")
        cfg = cls()
        fields = {"ss": (model, float), "n_samp_per_vox": (model, int), "sh_degree": (model, int),
                  "white_background": (model, bool), "black_background": (model, bool),
                  "source_path": (dat, str), "eval": (dat, bool), "test_every": (dat, int),
                  "res_downscale": (dat, float), "res_width": (dat, int)}
        for name, (section, kind) in fields.items():
            if name in section and section[name] is not None:
                value = section[name]
                if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ModelError(f"{path}: {name} must be a number, got {value!r}")
                setattr(cfg, name, kind(value))
        return cfg

    def dump(self):
        return ("model:\n" + "".join(f"  {k}: {str(getattr(self, k)).lower() if isinstance(getattr(self, k), bool) else getattr(self, k)}\n"
                                     for k in ("ss", "n_samp_per_vox", "sh_degree", "white_background", "black_background"))
                + "data:\n" + "".join(f"  {k}: {_yaml_value(getattr(self, k))}\n"
                                      for k in ("source_path", "eval", "test_every", "res_downscale", "res_width")))


def _yaml_value(v):
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return v


def find_checkpoint(model_path, iteration=None):
    """(checkpoint file, iteration, model folder or None) for a model folder or a .pt file."""
    path = Path(model_path)
    if path.is_file():
        m = CHECKPOINT_RE.search(path.name)
        folder = path.parent.parent if path.parent.name == "checkpoints" else None
        return path, int(m.group(1)) if m else 0, folder
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder or checkpoint file")
    ckpts = {}
    for f in (path / "checkpoints").glob("iter*_model.pt"):
        m = CHECKPOINT_RE.search(f.name)
        if m:
            ckpts[int(m.group(1))] = f
    if not ckpts:
        raise ModelError(f"{path}: no checkpoints/iterNNNNNN_model.pt found")
    if iteration is None or iteration < 0:
        iteration = max(ckpts)
    if iteration not in ckpts:
        raise ModelError(f"{path}: no checkpoint for iteration {iteration} (have {sorted(ckpts)})")
    return ckpts[iteration], iteration, path


def _dequantize(value, name, path):
    if isinstance(value, dict):
        if set(value) != {"index", "codebook"}:
            raise ModelError(f"{path}: quantized {name} needs keys 'index' and 'codebook', got {sorted(value)}")
        index, codebook = value["index"], value["codebook"]
        if not (isinstance(index, torch.Tensor) and isinstance(codebook, torch.Tensor)) or index.dtype != torch.uint8 \
                or codebook.numel() != 256:
            raise ModelError(f"{path}: quantized {name} must be a uint8 index and a 256-entry codebook")
        return codebook.float()[index.long()]
    if isinstance(value, (list, tuple)):
        slices = [_dequantize(v, name, path) for v in value]
        if not slices:
            return torch.zeros(0)
        if any(s.shape != slices[0].shape for s in slices):
            raise ModelError(f"{path}: the quantized slices of {name} differ in shape")
        return torch.stack(slices, 1)
    if not isinstance(value, torch.Tensor):
        raise ModelError(f"{path}: {name} must be a tensor, got {type(value).__name__}")
    return value


def _shape_check(path, name, t, shape, dtypes):
    if not isinstance(t, torch.Tensor) or t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ModelError(f"{path}: {name} must have shape {list(shape)}, got {got}")
    if t.dtype not in dtypes:
        raise ModelError(f"{path}: {name} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")


REQUIRED_KEYS = ("active_sh_degree", "scene_center", "scene_extent", "octpath", "octlevel", "_geo_grid_pts", "_sh0", "_shs")


class SVRasterModel:
    """A trained sparse-voxel model ready to render."""

    def __init__(self, octpath, octlevel, scene_center, scene_extent, grid_pts, sh0, shs, active_sh_degree,
                 config=None, inside_extent=None, iteration=0, path=None):
        self.octpath, self.octlevel = octpath, octlevel
        self.scene_center, self.scene_extent = scene_center.float(), scene_extent.float()
        self.inside_extent = inside_extent if inside_extent is not None else self.scene_extent.clone()
        self._geo_grid_pts, self._sh0, self._shs = grid_pts, sh0, shs
        self.active_sh_degree = int(active_sh_degree)
        self.config = config or ModelConfig()
        self.iteration, self.path = iteration, path
        self._decode()

    def _decode(self):
        """Voxel centres, sizes and the 8 grid-point indices of every voxel (vox_key)."""
        level = self.octlevel.long().reshape(-1, 1)
        ijk = utils.octpath_2_ijk(self.octpath, self.octlevel)
        size = self.scene_extent * torch.pow(2.0, -level.float())
        scene_min = self.scene_center - 0.5 * self.scene_extent
        self.vox_centers = scene_min + (ijk.float() + 0.5) * size
        self.vox_lengths = size
        shift = meta.MAX_NUM_LEVELS - level
        corner = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], device=ijk.device)
        lattice = ((ijk[:, None, :] + corner) << shift[:, None, :]).reshape(-1, 3)
        _, inverse = torch.unique(lattice, dim=0, return_inverse=True)
        self.vox_key = inverse.reshape(-1, 8)

    @property
    def n_voxels(self):
        return len(self.octpath)

    @property
    def device(self):
        return self.octpath.device

    def to(self, device):
        for name in ("octpath", "octlevel", "scene_center", "scene_extent", "inside_extent", "_geo_grid_pts", "_sh0",
                     "_shs", "vox_centers", "vox_lengths", "vox_key"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    # --- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, model_path, iteration=None, device="cpu"):
        ckpt_path, iteration, folder = find_checkpoint(model_path, iteration)
        config = ModelConfig()
        if folder is not None and (folder / "config.yaml").is_file():
            config = ModelConfig.load(folder / "config.yaml")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
            kind = "holds Python objects that weights_only loading refuses" if "Weights only" in str(exc) \
                else f"is truncated or corrupt ({exc.__class__.__name__})"
            raise ModelError(f"{ckpt_path}: not a loadable checkpoint: the file {kind}") from None
        if not isinstance(state, dict):
            raise ModelError(f"{ckpt_path}: expected a dict, got {type(state).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in state]
        if missing:
            raise ModelError(f"{ckpt_path}: missing keys {missing}")
        octpath, octlevel = state["octpath"], state["octlevel"]
        _shape_check(ckpt_path, "octpath", octpath, (None, 1), (torch.int64,))
        n = octpath.shape[0]
        if n > MAX_CHECKPOINT_VOXELS:
            raise ModelError(f"{ckpt_path}: {n} voxels exceed the supported {MAX_CHECKPOINT_VOXELS}")
        _shape_check(ckpt_path, "octlevel", octlevel, (n, 1), (torch.int8, torch.int16, torch.int32, torch.int64))
        if n and (int(octlevel.min()) < 1 or int(octlevel.max()) > meta.MAX_NUM_LEVELS):
            raise ModelError(f"{ckpt_path}: octlevel must be in 1..{meta.MAX_NUM_LEVELS}")
        deg = state["active_sh_degree"]
        if isinstance(deg, torch.Tensor):
            deg = int(deg)
        if not isinstance(deg, int) or not 0 <= deg <= 3:
            raise ModelError(f"{ckpt_path}: active_sh_degree must be 0..3, got {deg!r}")
        grid = _dequantize(state["_geo_grid_pts"], "_geo_grid_pts", ckpt_path).float().reshape(-1, 1)
        sh0 = _dequantize(state["_sh0"], "_sh0", ckpt_path).float()
        if sh0.numel() != 3 * n:
            raise ModelError(f"{ckpt_path}: _sh0 must have shape [{n}, 3], got {tuple(sh0.shape)}")
        sh0 = sh0.reshape(n, 3)
        shs = _dequantize(state["_shs"], "_shs", ckpt_path).float()
        if shs.numel() % max(3 * n, 1):
            raise ModelError(f"{ckpt_path}: _shs must have shape [N, K, 3], got {tuple(shs.shape)}")
        shs = shs.reshape(n, -1, 3) if shs.numel() else torch.zeros(n, 0, 3)
        if shs.shape[1] < (deg + 1) ** 2 - 1:
            raise ModelError(f"{ckpt_path}: _shs has {shs.shape[1]} coefficients, degree {deg} needs {(deg + 1) ** 2 - 1}")
        center = torch.as_tensor(state["scene_center"]).float().reshape(3)
        extent = torch.as_tensor(state["scene_extent"]).float().reshape(1)
        inside = torch.as_tensor(state.get("inside_extent", extent)).float().reshape(1)
        if not (torch.isfinite(center).all() and torch.isfinite(extent).all() and extent.item() > 0):
            raise ModelError(f"{ckpt_path}: scene_center/scene_extent must be finite with a positive extent")
        model = cls(octpath, octlevel, center, extent, grid, sh0, shs, deg, config, inside, iteration, folder)
        needed = int(model.vox_key.max()) + 1 if n else 0
        if len(grid) != needed:
            raise ModelError(f"{ckpt_path}: _geo_grid_pts has {len(grid)} points, the octree needs {needed}")
        return model.to(device)

    def state_dict(self, quantize=False):
        def q(t):
            if not quantize:
                return t.cpu()
            flat = t.reshape(-1).float().cpu().contiguous()
            codebook = torch.quantile(flat[torch.randperm(len(flat))[:1 << 20]], torch.linspace(0, 1, 256)) if len(flat) else torch.zeros(256)
            index = torch.bucketize(flat, (codebook[1:] + codebook[:-1]) / 2).to(torch.uint8)
            return {"index": index.reshape(t.shape), "codebook": codebook}

        return {"active_sh_degree": self.active_sh_degree, "scene_center": self.scene_center.cpu(),
                "inside_extent": self.inside_extent.cpu(), "scene_extent": self.scene_extent.cpu(),
                "octpath": self.octpath.cpu(), "octlevel": self.octlevel.cpu(),
                "_geo_grid_pts": q(self._geo_grid_pts), "_sh0": [q(self._sh0[:, i]) for i in range(3)] if quantize else self._sh0.cpu(),
                "_shs": [q(self._shs[:, i]) for i in range(self._shs.shape[1])] if quantize else self._shs.cpu(),
                "quantized": bool(quantize)}

    def save(self, folder, iteration=None, quantize=False):
        """Write an SVRaster model folder: config.yaml and checkpoints/iterNNNNNN_model.pt."""
        folder = Path(folder)
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        iteration = self.iteration if iteration is None else iteration
        (folder / "config.yaml").write_text(self.config.dump())
        path = folder / "checkpoints" / f"iter{iteration:06d}_model.pt"
        torch.save(self.state_dict(quantize), path)
        return path

    # --- rendering ----------------------------------------------------------------------
    def vox_fn(self, idx, cam_pos, color_mode="sh"):
        """SVRaster's per-frame parameters: densities from the grid points, colours from SH."""
        geos = GatherGeoParams.apply(self.vox_key, idx, self._geo_grid_pts)
        rgbs = SH_eval.apply(self.active_sh_degree, idx, self.vox_centers, cam_pos, None, self._sh0, self._shs)
        subdiv_p = torch.zeros(self.n_voxels, 1, device=self.device, requires_grad=torch.is_grad_enabled())
        return {"geos": geos, "rgbs": rgbs, "subdiv_p": subdiv_p}

    @property
    def bg_color(self):
        return 1.0 if self.config.white_background else 0.0

    def raster_settings(self, camera, ss=1.0, n_samp_per_vox=None, **settings):
        """RasterSettings for a `cameras.Camera` (at round(W*ss) x round(H*ss))."""
        n_samp = self.config.n_samp_per_vox if n_samp_per_vox is None else n_samp_per_vox
        W, H = round(camera.width * ss), round(camera.height * ss)
        return RasterSettings(color_mode="sh", n_samp_per_vox=n_samp, image_width=W, image_height=H,
                              tanfovx=camera.tanfovx, tanfovy=camera.tanfovy, cx=camera.cx * W / camera.width,
                              cy=camera.cy * H / camera.height, w2c_matrix=camera.w2c,
                              c2w_matrix=camera.c2w, bg_color=self.bg_color, **settings)

    def render(self, camera, ss=None, n_samp_per_vox=None, need_depth=False, need_normal=False, **settings):
        """Render a `cameras.Camera`. Supersampling `ss` renders at round(W*ss) x round(H*ss)
        and resizes down with antialiasing. Returns a dict of [C, H, W] tensors."""
        ss = self.config.ss if ss is None else ss
        s = self.raster_settings(camera, ss, n_samp_per_vox, need_depth=need_depth, need_normal=need_normal, **settings)
        W, H = s.image_width, s.image_height
        color, depth, normal, T, _ = rasterize_voxels(s, self.octpath, self.vox_centers, self.vox_lengths, self.vox_fn)
        if not (self.config.white_background or self.config.black_background):
            color = color + T * color.mean(dim=(1, 2), keepdim=True)
        out = {"color": color, "alpha": 1 - T}
        if need_depth:
            out["depth"] = depth[0:1]
        if need_normal:
            out["normal"] = normal
        if (W, H) != (camera.width, camera.height):
            out = {k: F.interpolate(v[None], size=(camera.height, camera.width), mode="bilinear", antialias=True,
                                    align_corners=False)[0] for k, v in out.items()}
        return out
