"""Data, synthesis, training and evaluation (`mambaserve.training`): everything that produces a
checkpoint. Imports the model library (`mambaserve.model`), the kernels and the contract."""
