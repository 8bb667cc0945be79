"""Build the bundled demo model, weights/demo/albert_demo.h5 (run by hand; the output is committed).

A small ALBERT with RANDOM weights: its vectors carry no meaning. It exists so that
`albert-ref embed "hello world"` runs straight after install and so that the whole
pipeline (tokenizer, model file, kernels, writers) can be exercised without downloading
anything. Its sentencepiece model is trained on corpus.txt, written for this project.

    python weights/demo/make_demo.py
"""
import io
from pathlib import Path

import sentencepiece as spm

from albert_ref.config import AlbertConfig
from albert_ref.weights.model_file import write_model
from albert_ref.weights.random_model import random_model_file

HERE = Path(__file__).parent


def train_tokenizer(corpus: Path, vocab_size: int) -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.read_text(encoding="utf-8").lower().splitlines()), model_writer=out,
        model_type="unigram", vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=1, seed_sentencepiece_size=100000, minloglevel=2)
    return out.getvalue()


def main():
    model_bytes = train_tokenizer(HERE / "corpus.txt", vocab_size=600)
    vocab = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()
    config = AlbertConfig(vocab_size=vocab, embedding_size=32, hidden_size=128, num_hidden_layers=4,
                          num_attention_heads=4, intermediate_size=512, max_position_embeddings=512,
                          hidden_act="gelu_tanh")
    model = random_model_file(config, seed=2019, spm_model=model_bytes)
    model.provenance = {"source_format": "random", "seed": 2019,
                        "note": "random weights for demonstration; the vectors carry no meaning"}
    write_model(HERE / "albert_demo.h5", model)
    print(f"wrote {HERE / 'albert_demo.h5'}: vocab {vocab}, digest {model.digest}")


if __name__ == "__main__":
    main()
