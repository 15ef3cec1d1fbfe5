"""Deployment: exporting a model (`deploy.export`: ONNX, OpenVINO IR, TorchScript, int8), the engines
that run it and the choice between them (`deploy.engines`), and the torch-free predictors
(`deploy.runtimes`)."""
