"""Everything inference needs (`mambaserve.model`): the network, checkpoint I/O, tokenizer, features,
search, the compiled decode step and the in-process `Recognizer`. Imports the contract and the kernels."""
