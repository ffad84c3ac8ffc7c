"""The pipeline: recipe parsing, planning which step compresses which module, and the layer loop."""
