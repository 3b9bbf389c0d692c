"""Synthetic tool-use environments in the style of tau-bench: a registry-office database (db), its read/write tools
(office), tasks generated from the synthetic world with a verifiable pass criterion (tasks), and running models in
them: episodes, the gold oracle, filtering and pass^k (evaluate)."""
