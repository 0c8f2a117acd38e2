"""Checkpoint import and export: Hugging Face directories, GGUF files, llama2.c checkpoints, orbax."""
