"""Corpus preparation: adapters, the stage-gated driver (`prepare`), the demo corpus."""
