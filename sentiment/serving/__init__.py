"""The model and its request contract, free of any server: what the archive ships and the handler wraps."""
