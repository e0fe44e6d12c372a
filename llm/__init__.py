"""The causal LM side of EGMF: loading (hub id, local path, GGUF), LoRA, prompts with pseudo-token
placeholders, splicing, the answer-only loss and constrained decoding. Imports nothing of ours."""
