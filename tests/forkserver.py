"""A process that imports tensorpress (torch, transformers) once and forks a child per CLI run.

Crash tests kill runs with real signals at chosen moments; paying ~10 s of imports per spawned process
would make a dozen kills cost minutes. The children are ordinary processes (`kill -9` is real); the server
runs no torch op before forking, so no thread pool crosses a fork.

Protocol, one JSON object per line on stdin → one on stdout:
    {"op": "run", "argv": [...], "env": {...}, "log": PATH} → {"pid": N}
    {"op": "wait", "pid": N}                                → {"status": exit code, or -signal}
"""

from __future__ import annotations

import importlib
import json
import os
import sys

PRELOAD = (  # everything a run imports lazily, imported once before forking
    "transformers.models.llama.modeling_llama",
    "matplotlib.pyplot",
    "tensorpress.batch.runner",
    "tensorpress.batch.merge",
    "tensorpress.evaluation.metrics",
    "tensorpress.evaluation.report",
    "tensorpress.evaluation.html_report",
    "tensorpress.evaluation.charts",
    "tensorpress.model.decompress",
    "tensorpress.pipeline.run",
)


def serve() -> None:
    import matplotlib

    matplotlib.use("Agg")
    for name in PRELOAD:
        importlib.import_module(name)
    from tensorpress.cli.main import main

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "run":
            pid = os.fork()
            if pid == 0:
                os.environ.update(req.get("env") or {})
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                rc = 1
                try:
                    rc = main(req["argv"])
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(rc)
            print(json.dumps({"pid": pid}), flush=True)
        elif req["op"] == "wait":
            _, status = os.waitpid(req["pid"], 0)
            code = os.waitstatus_to_exitcode(status)
            print(json.dumps({"status": code}), flush=True)


if __name__ == "__main__":
    serve()
