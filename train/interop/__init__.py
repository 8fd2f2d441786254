"""Interop with other tools: Hugging Face Llama export (export_hf) and import (import_hf, hf_weights), GGUF for
llama.cpp (export_gguf)."""
