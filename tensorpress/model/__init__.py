"""The model: resolving MODEL (folder, hub id, GGUF), the meta-device skeleton, structural records (low-rank,
EoRA), loading an output back (`load`, `decompress`) and fetching the sample model."""
