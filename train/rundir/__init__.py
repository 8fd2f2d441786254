"""The run directory: where a run's files live (paths), its weights and metadata, Lightning checkpoints, LoRA
adapters, and loading a run back as a model + tokenizer (load)."""
