"""``vibe-assets`` in a subprocess, with the tiny test CLIP and optional stalls (for test_runs.py).

Usage: ``python -m vibe_assets_tests.cli_harness CONFIG_JSON vibe-assets-args...``. CONFIG_JSON
holds ``config_dir`` (where the tiny CLIP's open_clip config lies), ``marker`` (a file the stall
writes) and ``stall``:

- ``none``: run the CLI as it is;
- ``clip``: the second CLIP forward pass writes ``marker`` and sleeps (the process holds the
  ``gpu`` pool slot until it is killed);
- ``upsert``: the first vector-store upsert writes ``marker`` and sleeps (holds the ``qdrant``
  slot);
- ``slow_clip``: every CLIP forward pass sleeps ``batch_seconds`` and then appends a line to
  ``marker`` (one line per batch computed), so a signal can land mid-embedding.

Everything else (instance, resources, executor, signal handling) is the real CLI's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import open_clip

    open_clip.add_model_config(cfg["config_dir"])
    from vibe_assets.resources.clip import ClipResource

    marker = Path(cfg.get("marker", "/dev/null"))
    stall = cfg.get("stall", "none")

    def sleep_forever(where: str) -> None:
        marker.write_text(where)
        time.sleep(600)

    if stall in ("clip", "slow_clip"):
        real_encode = ClipResource.encode_images
        calls: list[int] = []

        def encode_images(self: ClipResource, batch: object) -> object:
            calls.append(1)
            if stall == "clip" and len(calls) == 2:
                sleep_forever("clip")
            if stall == "slow_clip":
                time.sleep(float(cfg.get("batch_seconds", 1.0)))
            out = real_encode(self, batch)
            if stall == "slow_clip":
                with marker.open("a") as f:
                    f.write(f"{len(calls)}\n")
            return out

        ClipResource.encode_images = encode_images  # type: ignore[method-assign]
    elif stall == "upsert":
        from vibe_assets.vectors.edge import EdgeVectorStore
        from vibe_assets.vectors.server import ServerVectorStore

        def upsert(self: object, *args: object, **kwargs: object) -> None:
            sleep_forever("upsert")
            raise AssertionError("unreachable")

        EdgeVectorStore.upsert = upsert  # type: ignore[method-assign]
        ServerVectorStore.upsert = upsert  # type: ignore[method-assign]

    from vibe_assets.cli import main as cli_main

    sys.argv = ["vibe-assets", *sys.argv[2:]]
    cli_main()


if __name__ == "__main__":
    main()
