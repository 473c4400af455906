"""wsi_patchgd: Patch Gradient Descent on gigapixel whole-slide images in sharded Zarr stores."""

__version__ = "0.1.0"
