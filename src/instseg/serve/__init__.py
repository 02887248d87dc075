"""``instseg serve``: a model behind HTTP (FastAPI + uvicorn), with a web page at ``/``."""
