"""Datasets: synthetic whole-slide images (:mod:`wsi_patchgd.datasets.synthetic`)."""
