"""Storage: the albert-ref HDF5 model format and converters from TF checkpoints, TF-Hub modules and Hugging Face."""
