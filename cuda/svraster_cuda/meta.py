"""Rendering constants, read from the one place they are defined: `cuda/src/constants.h`.

With the compiled extension present the values come from `_C` (compiled from that header);
without it the header itself is parsed, from the source tree or from the copy that a
regular (non-editable) install ships inside the package.
"""
import re
from pathlib import Path

_HEADER_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "src" / "constants.h",  # source tree / editable
    Path(__file__).resolve().parent / "_constants.h",                # installed copy
)


def _parse_header():
    for path in _HEADER_CANDIDATES:
        if path.is_file():
            text = path.read_text()
            values = {}
            for name, literal in re.findall(r"^#define\s+(\w+)\s+([-+0-9.eE]+)f?\b", text, re.M):
                values[name] = float(literal) if re.search(r"[.eE]", literal) else int(literal)
            return values
    raise ImportError("svraster_cuda: constants.h not found in " + ", ".join(map(str, _HEADER_CANDIDATES)))


_VALUES = _parse_header()

MAX_NUM_LEVELS = _VALUES["MAX_NUM_LEVELS"]
MAX_N_SAMP = _VALUES["MAX_N_SAMP"]
STEP_SZ_SCALE = _VALUES["STEP_SZ_SCALE"]
MAX_ALPHA = _VALUES["MAX_ALPHA"]
MIN_ALPHA = _VALUES["MIN_ALPHA"]
EARLY_STOP_T = _VALUES["EARLY_STOP_T"]
ACTIVATION_KNEE = _VALUES["ACTIVATION_KNEE"]
NEAR_DEFAULT = _VALUES["NEAR_DEFAULT"]
FOOTPRINT_NEAR_MIN = _VALUES["FOOTPRINT_NEAR_MIN"]
NORMAL_EPS = _VALUES["NORMAL_EPS"]
MEDIAN_SUBSTEPS = _VALUES["MEDIAN_SUBSTEPS"]
TILE_SIZE = _VALUES["TILE_SIZE"]
MAX_VOXELS = _VALUES["MAX_VOXELS"]
MAX_EXACT_TILES = _VALUES["MAX_EXACT_TILES"]
MAX_IMAGE_SIZE = _VALUES["MAX_IMAGE_SIZE"]
