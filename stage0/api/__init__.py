"""The HTTP edge: JSON API, SSE timeline and web console (Starlette on uvicorn)."""
