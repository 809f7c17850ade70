"""BLIP caption throughput at several batch sizes, and peak RSS with BLIP loaded.

    python benchmarks/captions.py FOLDER [--batch-sizes 1 8] [--max-tokens 20] [--beams 1]
    python benchmarks/captions.py FOLDER --model Salesforce/blip-image-captioning-base

Decodes FOLDER's images into previews (the pipeline's own decoder), then captions them through
``BlipResource.caption`` once per batch size and prints JSON (captions/s per batch size, model
load seconds, peak RSS before and after loading BLIP). Without ``--model`` it builds the BLIP-base
architecture (``BlipConfig()`` defaults: ViT-B/16 at 384 px + 12-layer BERT text decoder, 30524
token vocabulary of dummy words) with RANDOM weights: the real model's speed and memory, but
gibberish captions, and no download. Random weights are announced on stderr.
"""

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from vibe_assets.imaging.decode import decode_photo
from vibe_assets.imaging.errors import PhotoError
from vibe_assets.resources.blip import BlipResource

BERT_BASE_VOCAB = 30524  # BlipTextConfig's default vocab_size


def blip_base_folder(folder: Path) -> Path:
    """Write a BLIP-base config and processor (dummy vocabulary) to ``folder``; no weights."""
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(BERT_BASE_VOCAB - len(words))]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    BlipConfig().save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def previews(folder: Path) -> list[Image.Image]:
    """512 px previews of every decodable image under ``folder`` (the pipeline's decoder)."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            out.append(decode_photo(path).image)
        except PhotoError:
            continue
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default=None, help="hub id or local folder (default: random)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--beams", type=int, default=1)
    args = parser.parse_args()

    images = previews(args.folder)
    if not images:
        print(f"no decodable images in {args.folder}", file=sys.stderr)
        return 1
    rss_before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        random = args.model is None
        model = str(blip_base_folder(Path(tmp))) if random else args.model
        if random:
            print("BLIP-base architecture with RANDOM WEIGHTS (speed only)", file=sys.stderr)
        blip = BlipResource(
            model_name=model,
            random_weights=random,
            max_new_tokens=args.max_tokens,
            num_beams=args.beams,
            idle_unload_seconds=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = blip.load()
        blip.caption(images[:1])  # warm-up
        results = {}
        for batch_size in args.batch_sizes:
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                blip.caption(images[i : i + batch_size])
            seconds = time.perf_counter() - start
            results[str(batch_size)] = {
                "captions_per_s": round(len(images) / seconds, 3),
                "seconds_per_caption": round(seconds / len(images), 3),
            }
        print(
            json.dumps(
                {
                    "folder": str(args.folder),
                    "images": len(images),
                    "model": blip.model_id,
                    "random_weights": random,
                    "device": loaded.device,
                    "dtype": str(loaded.dtype),
                    "torch_threads": torch.get_num_threads(),
                    "max_new_tokens": args.max_tokens,
                    "num_beams": args.beams,
                    "model_load_seconds": round(loaded.load_seconds, 2),
                    "by_batch_size": results,
                    "peak_rss_mib_before_blip": rss_before,
                    "peak_rss_mib_with_blip": peak_rss_mib(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
