"""The interactive demo (scripts/app.py): the top floor; it calls the pipelines floor, nothing imports it."""
