"""Base models: registering one in the bucket (``python -m service.base_models register``) and
the tokenizer and config the API reads of each."""
