"""Search at scale: build an index of N synthetic videos and measure it.

The gallery is drawn around the features a trained model gives the ``synthetic``
benchmark (see diffret_cli/search/synthetic.py), queried end to end at ViT-B/32 shapes
(text tower, FAISS first stage, token-wise similarity on the shortlist, diffusion
re-ranking of the top 32). Prints one JSON object: build time, p50/p95 latency, recall
of the exhaustive top 10, bytes per video on disk and in memory, the machine's load.

    python bench/bench_search.py --checkpoint runs/quickstart --gallery 100000
    python bench/bench_search.py --checkpoint runs/quickstart --gallery 1000000 \
        --workdir /data/bench-1m --reuse --json bench-1m.json       # re-measure a built index
    python bench/bench_search.py ... --shortlist 2000 --nprobe 64   # other search settings

``diffret bench search`` runs the same function.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a model trained on `synthetic` (the quickstart run)")
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None, help="keep the index here (default: a temp folder, deleted)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--reuse", action="store_true", help="measure the index already in --workdir")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--recall-queries", type=int, default=100)
    ap.add_argument("--shortlist", type=int, default=None)
    ap.add_argument("--rerank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--first-stage", default="auto", choices=["auto", "flat", "ivf", "hnsw"])
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold page-cache pass")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)

    from diffret_cli.search.bench import bench_search

    t0 = time.time()
    res = bench_search(gallery=a.gallery, device=a.device, checkpoint=a.checkpoint, workdir=a.workdir,
                       data_root=a.data_root, queries=a.queries, recall_queries=a.recall_queries,
                       shortlist=a.shortlist, rerank=a.rerank, steps=a.steps, first_stage=a.first_stage,
                       nlist=a.nlist, nprobe=a.nprobe, threads=a.threads, cold=not a.no_cold, reuse=a.reuse,
                       keep=a.workdir is not None, log=lambda s: print(f"[{time.time() - t0:7.1f}s] {s}",
                                                                      file=sys.stderr, flush=True))
    res["wall_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
