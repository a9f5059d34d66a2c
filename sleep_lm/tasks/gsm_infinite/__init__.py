"""GSM-Infinite-style long-context grade-school math (issue 11), our own generator.

    from sleep_lm.tasks.gsm_infinite import generate_problem, TEMPLATES, MODES
    p = generate_problem(np.random.default_rng(0), op=4, mode="forward", template="zoo",
                         level="hard", length=2000)
    p["prompt"], p["answer"], p["solution"]

- ``generator``: ``generate_problem`` (see its docstring for the precise definition of the
  operation count), from ``graph`` (world, dependency graph, op count), ``solver`` (targets,
  reverse mode's unknown) and ``text`` (sentences, solution, prompt, filler).
- ``worlds``: the templates' vocabularies (zoo animals, teachers in schools, films at
  festivals).
- ``tokens``: byte-level tokenizer or a ``tokenizer.json`` through ``tokenizers``.
- ``task``: ``GsmInfinite``, the training task (``get_task({"name": "gsm_infinite", ...})``).
- ``export``: ``python -m sleep_lm.tasks.gsm_infinite.export`` writes held-out sets as JSONL.
"""

from sleep_lm.tasks.gsm_infinite.generator import (
    LEVELS,
    MODES,
    TEMPLATES,
    format_prompt,
    generate_problem,
)
from sleep_lm.tasks.gsm_infinite.task import GsmInfinite

__all__ = ["LEVELS", "MODES", "TEMPLATES", "GsmInfinite", "format_prompt", "generate_problem"]
