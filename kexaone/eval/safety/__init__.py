"""kexaone.eval.safety: the K-AUT risk taxonomy (taxonomy), a KGC-Safety-style suite with an over-refusal split,
judge prompts, refusal rules and scoring (suite), model-driven growth of the suite (expand) and the
`kexaone safety` command (cli).

It does not run models: the evaluation harness (`kexaone eval --tasks kgc-safety`) sends the suite's messages to a
backend and hands the replies back to `judge_messages` / `rule_verdict` and `score`."""
