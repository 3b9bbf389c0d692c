"""kexaone.tokenizer: the SuperBPE tokenizer of K-EXAONE, its special tokens and its chat format.

`KExaoneTokenizer` (wrapper.py) encodes and decodes; `superbpe.train_superbpe` trains; `chat` renders, masks and
parses conversations; `evaluate` measures bytes per token; `cli` is the `kexaone tokenizer` command.
"""

from kexaone.tokenizer.specials import SPECIAL_TOKENS
from kexaone.tokenizer.wrapper import KExaoneTokenizer

__all__ = ["KExaoneTokenizer", "SPECIAL_TOKENS"]
