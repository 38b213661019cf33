"""Training data, fine-tuning, evaluation and importing your own checkpoints."""
