"""Byte layouts: safetensors I/O, compressed-tensors pack-quantized, sparse masks, entropy-coded frames, GGUF
reading, the quantized-weight record they encode, sizes and inspection of a written folder."""
