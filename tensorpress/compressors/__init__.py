"""The registry of compressors, keyed by the name used in recipes. Explicit: no discovery magic."""

from tensorpress.compressors.awq import AWQ
from tensorpress.compressors.base import Compressor
from tensorpress.compressors.entropy import Entropy
from tensorpress.compressors.eora import EoRA
from tensorpress.compressors.gptq import GPTQ
from tensorpress.compressors.prune import Prune
from tensorpress.compressors.rtn import RTN
from tensorpress.compressors.svd import SVD

REGISTRY: dict[str, type[Compressor]] = {c.name: c for c in (RTN, GPTQ, AWQ, SVD, Prune, EoRA, Entropy)}

__all__ = ["REGISTRY", "Compressor"]
