"""The embedded default data: a synthetic multilingual curriculum generated deterministically, no download.

- `write_corpus(dir, size)` / `generate_corpus(size)`: the training corpus (knowledge in six languages, arithmetic
  with step-by-step reasoning, long retrieval documents, tool-use dialogues, Python stdlib code), see `corpus`.
- `tokenizer_corpus(size, max_bytes)`: a fair sample of that corpus for training the default tokenizer.
- `tasks.build_tasks(size)`: held-out evaluation items (arithmetic, cross-lingual recall, in-context retrieval,
  code completion), disjoint from the training corpus by construction.
"""

from kexaone.data.synthetic.corpus import (
    CORPUS_SIZES,
    DOMAINS,
    CorpusSize,
    domain_documents,
    generate_corpus,
    tokenizer_corpus,
    write_corpus,
)
from kexaone.data.synthetic.languages import LANGS

__all__ = ["CORPUS_SIZES", "DOMAINS", "LANGS", "CorpusSize", "domain_documents", "generate_corpus",
           "tokenizer_corpus", "write_corpus"]
