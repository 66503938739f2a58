"""Training: the one loop (``loop.py``) that the ``distill`` and ``pretrain`` stages
(``stages.py``) share, its on-disk state (``checkpoint.py``), their tasks (``distill.py``,
``pretrain.py``) and schedules."""
