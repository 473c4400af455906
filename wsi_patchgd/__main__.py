"""``python -m wsi_patchgd`` = the ``wsi-patchgd`` command."""

from .cli import main

main()
