"""`aitimestepper bench`: a quick kernel table (kernels.py). The tuning suite lives in the
repository's bench/ folder, not in the installed package."""
