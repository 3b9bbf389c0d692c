"""kexaone.eval: held-out loss and bits per byte (heldout), task accuracy against baselines (tasks), sampled
answers (generation) and decode speed plain vs MTP speculative (speed)."""
