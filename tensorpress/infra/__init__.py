"""Infrastructure every stage may use: atomic writes, the cache folder, progress display, time and memory meters."""
