"""Model wrappers: NNsight for any torch module, LanguageModel for transformers."""
