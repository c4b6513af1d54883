"""Tabular benchmarks: spaces whose every cell was trained, so a searched cell's true accuracy is a lookup.

``nb201``: NAS-Bench-201 (Dong & Yang, ICLR 2020), its arch strings and test accuracies after 200 epochs.
"""
