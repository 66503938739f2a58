"""Training: the one loop (``loop.py``) that the ``distill`` and ``pretrain`` stages
(``stages.py``) share, their tasks (``distill.py``, ``pretrain.py``) and schedules."""
