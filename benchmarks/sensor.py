"""Cost of the ``new_photo_folders`` sensor on a synthetic library.

    python benchmarks/sensor.py [--folders 5000] [--files 20] [--per-group 100]
                                [--max-per-tick 2000] [--max-per-run 32] [--changed 10]

Builds ROOT/gNNN/fNNNNN folders (``--per-group`` folders per group folder) holding ``--files``
hard links each to a few tiny valid JPEGs (hard links save disk and time; ext4 allows 65,000
links per inode, so a new source file is made when one is full), in a temp dir. Then, with a
temp VIBE_HOME and an ephemeral Dagster instance, evaluates the sensor tick after tick the way
the daemon does (dynamic partitions applied between ticks, timed apart) until a full pass is
done; then a full pass over the unchanged library; then a pass after ``--changed`` folders got
one more file. Prints JSON: seconds per tick (the first one, the slowest, each pass's total),
ticks per pass, runs requested, folders registered. Page cache warm (the library was just
written): a cold disk or a network share lists slower.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from vibe_assets.automation import build_new_photo_folders_sensor
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources import StoreResource


def build_library(root: Path, folders: int, files: int, per_group: int) -> list[Path]:
    """Create the synthetic library; return the photo folders in walk order."""
    source = root.parent / "src"
    source.mkdir()
    sources = [source / "0.jpg"]
    Image.new("RGB", (16, 12), "gray").save(sources[0], quality=80)
    made: list[Path] = []
    for i in range(folders):
        folder = root / f"g{i // per_group:04d}" / f"f{i:06d}"
        folder.mkdir(parents=True)
        for j in range(files):
            target = folder / f"IMG_{j:04d}.jpg"
            try:
                os.link(sources[-1], target)
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
                sources.append(source / f"{len(sources)}.jpg")
                shutil.copy(sources[0], sources[-1])
                os.link(sources[-1], target)
        made.append(folder)
    return made


class Daemon:
    """Evaluates the sensor like the sensor daemon: cursor in, partitions applied."""

    def __init__(self, sensor: dg.SensorDefinition, store: StoreResource, instance: Any) -> None:
        self.sensor, self.store, self.instance = sensor, store, instance
        self.cursor: str | None = None
        self.apply_s = 0.0

    def tick(self) -> tuple[float, Any]:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"store": self.store}
        ) as context:
            start = time.perf_counter()
            data = self.sensor.evaluate_tick(context)
            seconds = time.perf_counter() - start
        start = time.perf_counter()
        for request in data.dynamic_partitions_requests or []:
            existing = set(self.instance.get_dynamic_partitions(PARTITIONS_NAME))
            new = [k for k in request.partition_keys if k not in existing]
            self.instance.add_dynamic_partitions(PARTITIONS_NAME, new)
        self.apply_s += time.perf_counter() - start
        self.cursor = data.cursor
        return seconds, data

    def full_pass(self) -> dict[str, Any]:
        """Ticks until the walk's pass is complete (cursor ``after`` is None)."""
        seconds: list[float] = []
        runs = partitions = 0
        while True:
            s, data = self.tick()
            seconds.append(s)
            runs += len(data.run_requests or [])
            partitions += sum(len(r.partition_keys) for r in data.dynamic_partitions_requests or [])
            if json.loads(self.cursor or "{}").get("after") is None:
                break
        return {
            "ticks": len(seconds),
            "first_tick_s": round(seconds[0], 3),
            "max_tick_s": round(max(seconds), 3),
            "pass_s": round(sum(seconds), 3),
            "runs_requested": runs,
            "partitions_added": partitions,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=5000)
    parser.add_argument("--files", type=int, default=20, help="files per folder")
    parser.add_argument("--per-group", type=int, default=100, help="folders per group folder")
    parser.add_argument("--max-per-tick", type=int, default=2000)
    parser.add_argument("--max-per-run", type=int, default=32)
    parser.add_argument("--changed", type=int, default=10, help="folders changed for pass 3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        root = Path(tmp, "library", "Photos")
        root.mkdir(parents=True)
        start = time.perf_counter()
        folders = build_library(root, args.folders, args.files, args.per_group)
        build_s = time.perf_counter() - start

        store = StoreResource(home=str(Path(tmp, "vibe_home")))
        job = dg.define_asset_job("ingest_job")
        sensor = build_new_photo_folders_sensor(
            job, args.max_per_run, args.max_per_tick, roots=[root]
        )
        daemon = Daemon(sensor, store, instance)
        first = daemon.full_pass()
        apply_s, daemon.apply_s = daemon.apply_s, 0.0
        unchanged = daemon.full_pass()
        step = max(1, len(folders) // max(1, args.changed))
        for folder in folders[::step][: args.changed]:
            shutil.copy(folder / "IMG_0000.jpg", folder / "IMG_new.jpg")
        changed = daemon.full_pass()
        result = {
            "folders": args.folders,
            "files": args.folders * args.files,
            "max_folders_per_tick": args.max_per_tick,
            "max_per_run": args.max_per_run,
            "library_build_s": round(build_s, 2),
            "first_pass": first,
            "apply_partitions_s": round(apply_s, 3),
            "unchanged_pass": unchanged,
            f"pass_after_{args.changed}_changed": changed,
            "folders_registered": len(store.registry.list()),
            "partitions": len(instance.get_dynamic_partitions(PARTITIONS_NAME)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cpus": os.cpu_count(),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
