"""Data: record formats, loading and validation, chat templates and loss masks, collators."""
