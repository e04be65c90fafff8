"""Benchmark metrics (DAVIS J&F, YouTube-VIS AP, KITTI-MOTS sMOTSA/HOTA) and result writers.

Never imports the model: everything works on files and NumPy arrays.
"""
