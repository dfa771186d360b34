"""Online side: the FastAPI ranking service. Never imports training or torch.

Building blocks, each built once by the app and passed in: ``settings`` (the ``RANKER_*``
settings), ``bucketing`` (GrowthBook-compatible A/B arms), ``state_store`` (session state in
process or in Redis), ``exposure`` (exposure and feedback logs and their join into the
impression log) and ``metrics`` (Prometheus metrics and ``/metrics``).
"""
