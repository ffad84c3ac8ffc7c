"""tensorpress: compress Hugging Face language-model checkpoints with YAML recipes.

The CLI is a thin layer over this API, which the tests use too:

    import tensorpress
    result = tensorpress.compress("path/to/model", "rtn-w4g64", "out/")
    model = tensorpress.load("out/")
    report = tensorpress.evaluate("out/", base="path/to/model", text="kjv:eval")
"""

from tensorpress.errors import TensorpressError
from tensorpress.version import __version__

__all__ = ["TensorpressError", "__version__", "compress", "evaluate", "load"]


def __getattr__(name: str):
    # Lazy: importing the package (e.g. for `--help`) must not import torch/transformers.
    if name == "compress":
        from tensorpress.pipeline.run import compress

        return compress
    if name == "load":
        from tensorpress.model.loader import load

        return load
    if name == "evaluate":
        from tensorpress.evaluation.metrics import evaluate

        return evaluate
    raise AttributeError(name)
