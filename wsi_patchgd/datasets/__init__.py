"""Datasets: synthetic slides, UltraMNIST canvases and the PANDA challenge's slides.

:mod:`.synthetic` and :mod:`.ultramnist` generate data; :mod:`.panda` prepares a downloaded one.
"""
