"""Calibration data and what is gathered from it: texts, token windows, the layer under compression with its
inputs, running the model's pieces on them, and the statistics hooks collect (Hessians, staged replay)."""
