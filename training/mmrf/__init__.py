"""MMRF: the model-based multi-agent WatchTime ranker (METHODS.md, "MMRF"; seeds/001)."""
