"""The web console (``trustbus console``): live decisions, holds to answer, incident graphs, SQL.

It needs the ``console`` extra (Starlette and uvicorn); nothing else in trustbus imports it.
"""
