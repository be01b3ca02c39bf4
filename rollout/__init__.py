"""Rollout engines (transformers, vLLM) behind one interface, and Ray workers."""
