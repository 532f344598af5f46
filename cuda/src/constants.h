// The rendering constants of SPEC.md, defined once. The CUDA kernels include this
// header, the `_C` extension exports the values, and `svraster_cuda.meta` reads this
// very file when `_C` is absent, so Python and CUDA can never disagree.
#pragma once

#define MAX_NUM_LEVELS 16     // octree depth; 3 bits of octpath per level
#define MAX_N_SAMP 3          // quadrature points per voxel segment
#define STEP_SZ_SCALE 100.0f  // density scale of the volume integral
#define MAX_ALPHA 0.99999f    // opacity clamp (straight-through in backward)
#define MIN_ALPHA 1e-5f       // voxels fainter than this are skipped
#define EARLY_STOP_T 1e-4f    // compositing stops after T falls below this
#define ACTIVATION_KNEE 1.1f  // density activation: linear above, exponential below
#define NEAR_DEFAULT 0.02f    // default near plane (camera z)
#define FOOTPRINT_NEAR_MIN 1e-6f  // screen footprints project from z >= max(near, this): no 0/0
#define NORMAL_EPS 1e-15f     // normal = g / sqrt(|g|^2 + NORMAL_EPS)
#define MEDIAN_SUBSTEPS 16    // sub-steps walked inside the median voxel
#define TILE_SIZE 8           // pixels per tile side; one CUDA block per tile (render_common.cuh: why 8)
#define MAX_VOXELS 536870911  // 2^29 - 1: voxel ids share 32 bits with a 3-bit octant
#define MAX_EXACT_TILES 64    // sparse binning tests requested pixels per tile up to this many tiles
#define MAX_IMAGE_SIZE 16384  // pixels per image side: pixel rectangles are stored as int16
