"""Data in: sources, splits, leakage checks, training subsets, the decode cache, augmentation."""
