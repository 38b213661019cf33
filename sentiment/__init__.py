"""Sentiment analysis with BERT on TorchServe.

Layers, from the request inward:
    serving   the model configuration, the classifier and the request contract; nothing of
              TorchServe. The model archive ships this subpackage and the handler wraps it.
    ops       build the archive, run TorchServe locally, talk to its management API.
    training  corpora, fine-tuning, evaluation, importing your own checkpoints.
    perf      benchmark and load test.
"""
