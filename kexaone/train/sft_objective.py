"""The SFT objective: pre-training's CE + w x MTP + c x aux, restricted to the batch's loss mask (the assistant
tokens), so the MTP head keeps training on the same targets as the main head and speculative decoding still pays
after SFT.

`PretrainObjective` already folds a `loss_mask` into the targets of both CEs (each a mean over the step's masked-in
targets at its distance: 1 for the next token, 2 for the MTP token); this class only insists on the mask, so an SFT
batch can never silently train on prompts. Compare `kexaone.train.masked_ce.MaskedCEObjective` (CE only, no MTP).
Not here: building batches (kexaone.data.conversations), the loop.
"""

from __future__ import annotations

import torch

from kexaone.train.objectives import PretrainObjective


class SFTObjective(PretrainObjective):
    name = "sft"

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if "loss_mask" not in batch:
            raise ValueError("SFT batches need a `loss_mask` [B, T] (1 = an assistant token to train on)")
        return super().denominators(batch)
