"""rlhf_core.models: the offline tiny model and tokenizer, loading helpers, value head and reference models.

Import the submodules directly (`rlhf_core.models.tiny`, `rlhf_core.models.loading`); this package imports
nothing eagerly so that `import rlhf_core.models` stays cheap.
"""
