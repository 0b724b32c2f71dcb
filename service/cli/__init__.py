"""``openft``, the command line: an HTTP client of the API (the ``openai`` SDK plus openft's
documented extensions) that imports nothing else of the project."""
