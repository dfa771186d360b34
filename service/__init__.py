"""Online side: the FastAPI ranking service (later issues). Never imports training or torch."""
