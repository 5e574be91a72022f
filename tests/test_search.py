"""Search indexes: the pipeline computes what evaluation computes, the approximate first
stage agrees with the exact one, builds survive bad videos and interruptions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from search_helpers import CAPTIONS, dataset_index, folder_index, world


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    return world(tmp_path_factory.getbasetemp() / "search-world")


@pytest.fixture(scope="module")
def model(w):
    from diffret_cli import api

    return api.load(w["ckpt"])


def _split(w):
    from diffret_cli.data.manifest import PreparedDataset

    return PreparedDataset.open(w["data"], "synthetic").split("test")


def test_dataset_index_gives_the_hits_of_direct_scoring(w, model):
    """Every caption of the split: the index's ranking (stage 1 from the stored features,
    then diffusion re-ranking) equals Eq. 10 over the whole gallery plus re-ranking as
    evaluation runs it, rank for rank; and so its R@1 equals the one evaluation reports."""
    from diffret_cli.features import SplitTexts, encode_videos
    from diffret_cli.metrics import retrieval_metrics
    from diffret_cli.model.diffusionret import VideoFeatures
    from diffret_cli.rerank import rerank_direction
    from diffret_cli.search import SearchIndex, scoring

    idx = dataset_index(w, w["ckpt"].parent / "idx-dataset")
    sp = _split(w)
    texts = SplitTexts.from_split(sp)
    index = SearchIndex.open(idx)
    assert index.meta["videos"]["count"] == len(sp.videos) == 12
    assert index.meta["captions"]["count"] == len(texts.captions) == 48

    # stored features are evaluation's features in float16
    vf = encode_videos(model, sp, batch_size=4, device=torch.device("cpu"))
    stored = torch.from_numpy(np.load(idx / "videos" / "features.npy")).float()
    assert stored.shape == vf.frames.shape
    torch.testing.assert_close(stored, vf.frames, atol=2e-3 * vf.frames.abs().max().item(), rtol=1e-3)
    assert np.array_equal(np.load(idx / "videos" / "lengths.npy"), vf.mask.sum(1).numpy())

    text = scoring.encode_queries(model, texts.captions)
    gallery = VideoFeatures(stored, vf.mask)
    sim = model.similarity_matrix(text, gallery)
    r = model.config["rerank"]
    direct = rerank_direction(sim, direction="t2v", denoiser=model.denoiser_t2v, sampler=model.make_sampler(),
                              text_cls=text.cls, video_frames=stored, video_mask=vf.mask, topk=r["topk_t2v"],
                              alpha=r["alpha_t2v"], tau=r["tau_t2v"], chunk_size=r["chunk_size"],
                              generator=torch.Generator().manual_seed(0))
    res = index.search_features(text, top=12, seed=0)
    rows = torch.tensor([[h["row"] for h in q["results"]] for q in res])
    scores = torch.tensor([[h["score"] for h in q["results"]] for q in res])
    d_scores, d_rows = direct.topk(12, dim=1)
    assert torch.equal(rows[:, 0], d_rows[:, 0])  # the same rank-1 hit for every caption
    assert torch.equal(rows, d_rows)
    torch.testing.assert_close(scores, d_scores, atol=1e-5, rtol=0)
    s1 = torch.tensor([[h["stage1"] for h in q["results"]] for q in res])
    torch.testing.assert_close(s1, sim.gather(1, rows), atol=1e-5, rtol=0)
    # ... hence evaluation's R@1 of the diffusion row
    r1_index = 100.0 * float(np.mean(rows[:, 0].numpy() == texts.caption_video))
    assert r1_index == pytest.approx(retrieval_metrics(direct, None, texts.caption_video)["t2v"]["R@1"])
    # one query through the CLI path (string -> text tower): its own noise draw, [1, K]
    single = rerank_direction(sim[5:6], direction="t2v", denoiser=model.denoiser_t2v, sampler=model.make_sampler(),
                              text_cls=text.cls[5:6], video_frames=stored, video_mask=vf.mask, topk=r["topk_t2v"],
                              alpha=r["alpha_t2v"], tau=r["tau_t2v"], generator=torch.Generator().manual_seed(0))
    [one] = index.search(texts.captions[5], top=3)
    assert [h["row"] for h in one["results"]] == single[0].topk(3).indices.tolist()


def test_query_encoding_runs_only_the_query_tokens_and_is_exact(model):
    """Running the text tower over the longest query (+1 padded column) instead of all
    max_words positions changes no score: padding never reaches a valid token."""
    from diffret_cli.features import encode_texts
    from diffret_cli.model.diffusionret import VideoFeatures
    from diffret_cli.search import scoring

    caps = ["a red circle moves left", "a big green triangle falls after a small blue star spins", "grey"]
    full = encode_texts(model, caps, batch_size=8, device=torch.device("cpu"))
    short = scoring.encode_queries(model, caps)
    n = short.tokens.shape[1]
    assert n < full.tokens.shape[1]  # really shorter
    valid = full.mask[:, :n].bool()
    torch.testing.assert_close(short.tokens[valid], full.tokens[:, :n][valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.cls, full.cls, atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(7, model.config["max_frames"], model.encoder.embed_dim, generator=g)
    mask = torch.ones(7, model.config["max_frames"], dtype=torch.long)
    mask[2, 2:] = 0
    ref = model.similarity_matrix(full, VideoFeatures(frames, mask))
    t, tw, tmask, _ = scoring.text_side(model, short)
    _, vw = model.similarity.prepare_video(frames, mask)
    got = scoring.tokenwise(t, tw, tmask, scoring.normalise(frames, mask), vw)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _feature_index(model, centres, out, *, n, first_stage, nlist=None):
    from diffret_cli.search.build import BuildSettings, write_feature_index
    from diffret_cli.search.synthetic import GalleryGenerator, Lift

    gen = GalleryGenerator(centres, Lift(centres.frames.shape[2], model.encoder.embed_dim), frames=4, seed=1)

    def batches():
        for a in range(0, n, 1000):
            f, ln = gen.chunk(a, min(1000, n - a))
            yield a, torch.from_numpy(f), torch.from_numpy(ln)

    write_feature_index(model, out, n=n, batches=batches(), items=({"id": f"v{i}", "path": None} for i in range(n)),
                        settings=BuildSettings(first_stage=first_stage, nlist=nlist, progress=False))
    return gen


def test_approximate_first_stage_agrees_with_the_exact_one(w, model, tmp_path):
    """IVF vs flat on 3,000 generated videos: scanning every cell gives the flat results
    exactly, scanning half of them keeps nearly all of the final top 10; and the flat
    index with the whole gallery shortlisted equals exhaustive scoring."""
    from diffret_cli.search import SearchIndex
    from diffret_cli.search.bench import exhaustive_results
    from diffret_cli.search.synthetic import centres_from_model

    centres = centres_from_model(model, data_root=w["data"])
    gen = _feature_index(model, centres, tmp_path / "flat", n=3000, first_stage="flat")
    _feature_index(model, centres, tmp_path / "ivf", n=3000, first_stage="ivf", nlist=16)
    flat, ivf = SearchIndex.open(tmp_path / "flat", model=model), SearchIndex.open(tmp_path / "ivf", model=model)
    assert flat.meta["videos"]["first_stage"] == {"kind": "flat"}
    assert ivf.meta["videos"]["first_stage"]["kind"] == "ivf" and ivf.meta["videos"]["first_stage"]["nlist"] == 16
    text = gen.queries(np.arange(40))
    kw = dict(top=10, shortlist=300, rerank=4)

    def rows(index, **extra):
        return [[h["row"] for h in r["results"]] for r in index.search_features(text, **{**kw, **extra})]

    exact = rows(flat)
    assert rows(ivf, nprobe=16) == exact  # every cell scanned: the exact shortlist
    # fewer cells scanned, less of the exact top 10 kept (untrained tiny model: its pooled
    # and token-wise scores agree less than a trained model's, so this is a hard case)
    overlap = [np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows(ivf, nprobe=k), exact)]) for k in (2, 8, 12)]
    assert overlap == sorted(overlap) and overlap[0] < 0.6 and overlap[2] >= 0.9, overlap
    _feature_index(model, centres, tmp_path / "hnsw", n=3000, first_stage="hnsw")
    hnsw = SearchIndex.open(tmp_path / "hnsw", model=model)
    assert hnsw.meta["videos"]["first_stage"]["kind"] == "hnsw"
    graph = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows(hnsw), exact)])
    assert graph >= 0.9, graph
    # one query at a time (each its own noise draw, as the bench queries): the whole
    # gallery shortlisted is the exhaustive computation
    ref, ref1 = exhaustive_results(flat, text, top=10, rerank=4, steps=None, seed=0)
    for i in range(0, 40, 5):
        one = type(text)(text.tokens[i:i + 1], text.cls[i:i + 1], text.mask[i:i + 1])
        [r] = flat.search_features(one, top=10, shortlist=3000, rerank=4)
        assert [h["row"] for h in r["results"]] == ref[i]
        [r] = flat.search_features(one, top=10, shortlist=3000, rerank=0)
        assert [h["row"] for h in r["results"]] == ref1[i]


def test_a_first_stage_that_finds_fewer_items_than_the_rerank_loses_none(w, model, tmp_path):
    """IVF scanning one small cell returns fewer items than the re-ranking asks for (faiss
    pads its labels with -1): every item it did find is re-ranked and returned, the
    smallest row (where padding entries point) included."""
    from diffret_cli.search import SearchIndex, scoring
    from diffret_cli.search.synthetic import centres_from_model

    centres = centres_from_model(model, data_root=w["data"])
    gen = _feature_index(model, centres, tmp_path / "ivf", n=600, first_stage="ivf", nlist=16)
    ivf = SearchIndex.open(tmp_path / "ivf", model=model)
    text = gen.queries(np.arange(1))
    first_stage_vector = scoring.text_side(model, text)[3]
    found, member = ivf.videos.shortlist(first_stage_vector, 200, 1)
    assert member.all() and 10 < len(found) < 200  # one cell: fewer items than asked for
    [r] = ivf.search_features(text, top=200, shortlist=200, rerank=200, nprobe=1, steps=2)
    rows = [h["row"] for h in r["results"]]
    assert sorted(rows) == found.tolist()
    assert all(np.isfinite(h["score"]) for h in r["results"])


def test_folder_index_skips_a_bad_video_and_keeps_the_rest(w):
    from diffret_cli.search.store import Part

    idx = folder_index(w, w["ckpt"].parent / "idx-folder")
    meta = json.loads((idx / "index.json").read_text())
    assert meta["videos"]["count"] == 3 and meta["failed"] == 1
    failures = json.loads((idx / "failures.json").read_text())
    assert [f["id"] for f in failures] == ["broken.mp4"] and failures[0]["reason"]
    part = Part.open(idx / "videos")
    items = [part.item(i) for i in range(len(part))]
    assert [it["id"] for it in items] == ["a_clip.mp4", "c_clip.mkv", "sub/b_clip.mp4"]
    assert all((w["videos"] / it["id"]).resolve() == __import__("pathlib").Path(it["path"]) for it in items)
    for i in range(3):
        jpg = part.thumbnail(i)
        assert jpg[:2] == b"\xff\xd8" and len(jpg) > 200
    assert part.features.dtype == np.float16 and part.pooled.dtype == np.float16
    assert list(part.lengths) == [3, 2, 2]  # 1 fps over 3 s, 2 s, 2 s (max_frames 4)
    caps = Part.open(idx / "captions")
    assert [caps.item(i)["text"] for i in range(len(caps))] == CAPTIONS


def test_an_interrupted_build_resumes_from_its_finished_chunks(w, model, tmp_path, monkeypatch):
    from diffret_cli.search import build as build_mod
    from diffret_cli.search.build import BuildSettings, build_dir_for, build_index
    from diffret_cli.search.sources import folder_source

    src = folder_source(w["videos"], short_side=model.encoder.image_size, max_frames=model.config["max_frames"])
    settings = BuildSettings(progress=False, batch_size=2, chunk_size=2, thumbnails=False)
    real = build_mod.encode_chunk
    calls = []

    def flaky(*a, **k):
        calls.append(len(a[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(build_mod, "encode_chunk", flaky)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(model, src, out, settings=settings)
    assert not out.exists()
    assert sorted(p.name for p in (build_dir_for(out) / "chunks").iterdir()) == ["chunk-000000.npz"]
    calls.clear()
    meta = build_index(model, src, out, settings=settings)
    assert calls == [2]  # only the unfinished chunk (videos 3 and 4 of 4) was encoded again
    assert meta["videos"]["count"] == 3 and not build_dir_for(out).exists()
    ref = folder_index(w, w["ckpt"].parent / "idx-folder")
    assert np.array_equal(np.load(out / "videos" / "features.npy"), np.load(ref / "videos" / "features.npy"))


def test_cli_search_prints_the_index_results(w):
    from diffret_cli.cli.main import cli
    from diffret_cli.search import SearchIndex

    idx = dataset_index(w, w["ckpt"].parent / "idx-dataset")
    q = "a large green triangle sinks"
    out = CliRunner().invoke(cli, ["search", str(idx), q, "--top", "4", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    [ref] = SearchIndex.open(idx).search(q, top=4)
    assert [(h["row"], h["id"], h["score"]) for h in res["results"]] == [
        (h["row"], h["id"], h["score"]) for h in ref["results"]]
    assert res["settings"]["shortlist"] == 12 and res["settings"]["first_stage"] == "flat"
    table = CliRunner().invoke(cli, ["search", str(idx), q, "--top", "2"])
    assert table.exit_code == 0 and ref["results"][0]["id"] in table.stdout
    info = CliRunner().invoke(cli, ["index", "info", str(idx), "--json"])
    assert json.loads(info.stdout)["videos"]["count"] == 12


def test_video_to_text_scores_the_captions_of_the_index(w, model):
    from diffret_cli.cli.main import cli
    from diffret_cli.features import encode_texts
    from diffret_cli.search.sources import load_file

    idx = folder_index(w, w["ckpt"].parent / "idx-folder")
    clip = w["videos"] / "a_clip.mp4"
    out = CliRunner().invoke(cli, ["search", str(idx), "--video", str(clip), "--json", "--top", "5"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert res["direction"] == "v2t" and sorted(h["caption"] for h in res["results"]) == sorted(CAPTIONS)
    enc = model.encoder
    x = load_file(clip, image_size=enc.image_size, mean=enc.image_mean, std=enc.image_std,
                  max_frames=model.config["max_frames"], thumbs=False)
    with torch.no_grad():
        v = model.encode_video(x.frames[None], x.mask[None])
        t = encode_texts(model, CAPTIONS, batch_size=8, device=torch.device("cpu"))
        ref = model.similarity_matrix(t, v)[:, 0]
    for h in res["results"]:
        assert h["stage1"] == pytest.approx(float(ref[CAPTIONS.index(h["caption"])]), abs=2e-3)


def test_errors_name_the_index_and_the_fix(w, tmp_path):
    from diffret_cli import api
    from diffret_cli.cli.main import main
    from diffret_cli.search import SearchIndex
    from diffret_cli.search.store import SearchIndexError

    with pytest.raises(SearchIndexError, match="not a search index"):
        SearchIndex.open(tmp_path)
    idx = dataset_index(w, w["ckpt"].parent / "idx-dataset")
    other = api.load(w["ckpt"])
    with torch.no_grad():
        other.similarity.text_weight_fc[0].weight.add_(1.0)
    with pytest.raises(SearchIndexError, match="built with another model") as e:
        SearchIndex.open(idx, model=other)
    assert "rebuild" in e.value.hint
    with pytest.raises(SystemExit) as code:
        main(["search", str(tmp_path), "anything"])
    assert code.value.code == 2


def test_query_groups_bound_memory_without_changing_results(w, model, monkeypatch):
    """Stage 2 in groups of one query (as a large batch against a large index runs)
    gives the results of one group; stage 3's noise does not depend on the grouping."""
    from diffret_cli.features import SplitTexts
    from diffret_cli.search import SearchIndex, engine, scoring

    idx = dataset_index(w, w["ckpt"].parent / "idx-dataset")
    index = SearchIndex.open(idx)
    text = scoring.encode_queries(model, SplitTexts.from_split(_split(w)).captions[:20])
    whole = index.search_features(text, top=5)
    monkeypatch.setattr(engine, "MAX_SCORED_ROWS", 1)
    grouped = index.search_features(text, top=5)
    assert [r["results"] for r in grouped] == [r["results"] for r in whole]
