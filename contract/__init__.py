"""What crosses between openft's roles, in one place.

The API (``service/``), the training run (``training/``) and the serving app (``serving/``)
never import each other: they share what is here, and only this. It imports pydantic and
the standard library, nothing of the project, so every role can read it without pulling in
another role's dependencies.

- :mod:`contract.bucket`: the bucket layout, the only module that spells an S3 key;
- :mod:`contract.spec`: the job spec the service writes and the training driver reads;
- :mod:`contract.hyperparameters`: the resolved hyperparameters of a run, defaults defined once;
- :mod:`contract.events`: the progress events training writes and the service ingests;
- :mod:`contract.chat_format`: the chat JSONL validator of uploads and training;
- :mod:`contract.serving`: the serving knobs the service's settings and serving's config share.
"""
