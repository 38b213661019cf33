"""Operations: build the model archive, run TorchServe locally, talk to its management API."""
