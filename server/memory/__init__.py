"""Long-term memory: what each user said across sessions, and a running summary of them."""
