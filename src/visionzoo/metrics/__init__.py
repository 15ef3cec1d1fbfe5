"""What a model's outputs score: classification metrics and calibration error, temperature scaling
and the unknown rule, multi-label AP and thresholds, and their plots."""
