"""Offline side: the world simulator, the data pipeline, the models, evaluation and the CLI.

May import ``contract``; never ``service``, fastapi or redis.
"""
