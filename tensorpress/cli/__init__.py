"""The `tensorpress` command line: a thin layer over the Python API, one file per command."""
