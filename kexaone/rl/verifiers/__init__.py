"""Rule-based verifiers shared by RL rewards and the evaluation harness: math final answers and IFEval checks."""
