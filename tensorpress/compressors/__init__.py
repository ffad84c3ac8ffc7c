"""The registry of compressors, keyed by the name used in recipes. Explicit: no discovery magic."""

from tensorpress.compressors.awq import AWQ
from tensorpress.compressors.base import Compressor
from tensorpress.compressors.entropy import Entropy
from tensorpress.compressors.gptq import GPTQ
from tensorpress.compressors.rtn import RTN

REGISTRY: dict[str, type[Compressor]] = {c.name: c for c in (RTN, GPTQ, AWQ, Entropy)}

__all__ = ["REGISTRY", "Compressor"]
