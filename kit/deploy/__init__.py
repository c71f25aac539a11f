"""kit.deploy: fine-tuned segmentation models out of the kit.

:mod:`kit.deploy.predict` (``kit predict``: NIfTI in, label maps out, with the training cache's
preprocessing), :mod:`kit.deploy.bundle` (``kit export-bundle``: a MONAI bundle that runs without the kit) and
:mod:`kit.deploy.bundle_scripts` (copied into the bundle). It depends on ``kit.models`` and ``kit.data`` (and the
utilities at the bottom) only, never on training.

Example:
    >>> from kit.deploy.bundle import check_spacing
    >>> check_spacing([1, 1, 1.5], "--spacing")
    [1.0, 1.0, 1.5]
"""
