"""``python -m bench._on_uvloop MODULE ARGS...``: run ``python -m MODULE ARGS...`` with uvloop's event loop.

bench/mediated.py's ``--uvloop`` starts every process of both topologies (raw and mediated) this way, so
the raw relay is as strong as a plain nats-py program can be made without changing its code, and the
mediated path is measured on the same loop.
"""

from __future__ import annotations

import asyncio
import runpy
import sys

import uvloop


def main() -> None:
    module, *args = sys.argv[1:]
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
