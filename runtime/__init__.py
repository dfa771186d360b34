"""The bundle runtime both sides run: load and verify a model bundle, build a list with the
cached session state, exploration and propensities. numpy + onnxruntime (+ contract) only."""
