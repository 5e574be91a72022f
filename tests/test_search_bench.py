"""``diffret bench search`` on a tiny model: the pipeline's results are the exhaustive
ones when the shortlist holds the gallery, and bytes per video add up."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from search_helpers import world
from train_helpers import tiny_model_config


@pytest.mark.slow
def test_bench_search_measures_a_small_gallery(tmp_path_factory, tmp_path):
    from diffret_cli.search.bench import bench_search, summary_lines

    w = world(tmp_path_factory.getbasetemp() / "search-world")
    cfg = tiny_model_config()
    res = bench_search(gallery=700, checkpoint=w["ckpt"], data_root=w["data"], workdir=tmp_path, queries=8,
                       recall_queries=6, shortlist=700, rerank=4, threads=1, model_config=cfg, cold=False)
    # the whole gallery shortlisted: the index returns exactly the exhaustive top 10
    assert res["recall"]["top10"] == 1.0 and res["recall"]["stage1_top10"] == 1.0
    assert res["build"]["first_stage"] == {"kind": "flat"}
    q = res["query"]
    assert 0 < q["p50_ms"] <= q["p95_ms"] and q["queries"] == 8
    assert set(q["stages_p50_ms"]) == {"text_tower", "first_stage", "read", "tokenwise", "rerank"}
    t, d = cfg["max_frames"], cfg["encoder"]["args"]["model_config"]["embed_dim"]
    per = res["bytes_per_video"]["disk_by_file"]
    assert per["features.npy"] == pytest.approx(t * d * 2, abs=1)  # float16 frames, + a .npy header / 700
    assert per["weights.npy"] == pytest.approx(t * 4, abs=1) and per["pooled.npy"] == pytest.approx(d * 2, abs=1)
    assert per["first_stage.faiss"] == pytest.approx(d * 2, rel=0.05)  # FAISS float16 codes
    assert res["bytes_per_video"]["disk"] == pytest.approx(sum(per.values()), abs=0.5)
    assert res["bytes_per_video"]["read_per_query_bytes"] == 700 * (t * d * 2 + t * 4 + 2)
    # the generated gallery agrees with Eq. 10 about as the real features do
    a = res["agreement"]
    assert a["real"]["gallery"] == a["generated"]["gallery"] == 24  # the 8 + 4 + 12 prepared videos
    print("AGREEMENT", a)
    assert abs(a["real"]["spearman"] - a["generated"]["spearman"]) < 0.3
    assert any("recall of exhaustive" in line for line in summary_lines(res))


def test_bench_search_without_a_trained_run_says_how_to_get_one(tmp_path, monkeypatch):
    from diffret_cli.cli.main import cli

    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, ["bench", "search", "--gallery", "10"])
    assert out.exit_code != 0
    assert "diffret train --recipe quickstart" in str(out.exception.hint)
