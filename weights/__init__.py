"""Storage: the albert-ref HDF5 model format and converters from TF checkpoints, TF-Hub modules and Hugging Face."""

from pathlib import Path

# The bundled demo model: random weights, a real sentencepiece tokenizer (demo/make_demo.py).
DEMO_MODEL = Path(__file__).parent / "demo" / "albert_demo.h5"
