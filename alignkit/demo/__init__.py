"""The offline demo task: an arithmetic-assistant world with a hidden gold judge, a tiny tokenizer and model."""
