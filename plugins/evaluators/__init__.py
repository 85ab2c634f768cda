"""Evaluator plugins: classification metrics and not-same-compound k-NN."""
