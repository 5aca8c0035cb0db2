"""Evaluation: metrics, decisions and thresholds, inference with test-time augmentation."""
