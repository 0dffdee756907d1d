"""Training scripts beside the library (like diffusers' ``examples/``): they import :mod:`hgc_tune`, and
nothing in :mod:`hgc_tune` imports them. Run them from the repository root, e.g.
``python -m training.shapes.train --help``. Not part of the installed package."""
