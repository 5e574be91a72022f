"""The paper's figures drawn from a real tiny run: panels, sizes, and the data they encode
(the highlighted candidate is the ground truth, histograms count every pair, the rank
moves add up to the queries)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from PIL import Image

from diffret_cli.diagnostics import rerank_diagnostics
from diffret_cli.errors import ConfigError
from diffret_cli.metrics import retrieval_metrics, t2v_ranks
from diffret_cli.viz.frames import GT_COLOR, png_bytes
from viz_helpers import tiny_run, tiny_view


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def view(run):
    return tiny_view(run)


@pytest.fixture(scope="module")
def scored(view):
    return view.scores(keep_chains=True)


def _axes(fig, prefix):
    return [a for a in fig.axes if a.get_label().startswith(prefix)]


def _png_size(fig):
    with Image.open(io.BytesIO(png_bytes(fig))) as im:
        return im.size


def _bar_colors(ax):
    return [to_hex(p.get_facecolor()) for p in ax.patches]


def test_scores_are_what_eval_reports(view, scored):
    """The figures' scores (re-ranked through the chain-keeping sampler) equal
    evaluation's own, and each chain ends at the recorded sample."""
    from diffret_cli.evaluation import evaluate_split

    res = evaluate_split(view.model, scored.split, view.settings)
    assert retrieval_metrics(scored.t2v, scored.v2t, scored.caption_video) == res["rows"]["diffusion"]
    assert retrieval_metrics(scored.stage1, scored.stage1.t(), scored.caption_video) == res["rows"]["stage1"]
    # evaluation's diagnostics (in `diffret eval --json`) are the figures' ones
    assert res["diagnostics"] == rerank_diagnostics(scored.stage1, (scored.t2v, scored.v2t), scored.caption_video,
                                                    record=scored.record)
    for d in ("t2v", "v2t"):
        assert len(scored.chains[d]) == len(scored.record[d]) > 0
        for states, chunk in zip(scored.chains[d], scored.record[d]):
            assert torch.equal(states[-1], chunk["sample"].float().cpu())
    steps = view.model.config["schedule"]["args"]["num_steps"]
    assert scored.chains["t2v"][0].shape[0] == steps + 1
    assert scored.step_labels[0] == f"x_{steps}" and scored.step_labels[-1] == "x_0"


def _query_with_gt_in_topk(scored):
    cand = np.concatenate([c["candidates"].numpy() for c in scored.record["t2v"]])
    rows = np.concatenate([c["rows"].numpy() for c in scored.record["t2v"]])
    for r, c in zip(rows, cand):
        gt = scored.caption_video[r]
        if gt in c and list(c).index(gt) > 0:  # not stage 1's first: a row to lift
            return int(r), list(c).index(gt)
    pytest.fail("no caption of the tiny run has its video among its candidates below the first")


def test_diffusion_figure_highlights_the_ground_truth(scored, view):
    from diffret_cli.viz.diffusion import diffusion_figure

    q, pos = _query_with_gt_in_topk(scored)
    fig = diffusion_figure(scored, query=q, direction="t2v", snapshots=3, model=view.model)
    (heat,) = _axes(fig, "trajectory")
    snaps = _axes(fig, "snapshot:")
    assert [a.get_title() for a in snaps] == ["x_10", "x_5", "x_0"]
    states, cand = scored.chain_of("t2v", q)
    k = view.model.config["rerank"]["topk_t2v"]
    assert states.shape == (11, k) and cand[pos] == scored.caption_video[q]
    np.testing.assert_allclose(heat.images[0].get_array(), states.T)  # candidates x steps
    green = [i for i, t in enumerate(heat.get_yticklabels()) if to_hex(t.get_color()) == GT_COLOR]
    assert green == [pos]
    for ax in snaps:
        colors = _bar_colors(ax)
        assert len(colors) == k and [i for i, c in enumerate(colors) if c == GT_COLOR] == [pos]
    sample = [c["sample"][(c["rows"] == q).nonzero()[0, 0]] for c in scored.record["t2v"] if (c["rows"] == q).any()]
    np.testing.assert_allclose([p.get_height() for p in snaps[-1].patches], sample[0].numpy(), rtol=1e-6)
    assert _png_size(fig) == tuple(int(round(x * 100)) for x in fig.get_size_inches())


def test_diffusion_figure_video_to_text_marks_every_own_caption(scored, view):
    from diffret_cli.viz.diffusion import diffusion_figure

    for video in range(len(scored.video_ids)):
        states, cand = scored.chain_of("v2t", video)
        own = [i for i, c in enumerate(cand) if scored.caption_video[c] == video]
        if own:
            break
    fig = diffusion_figure(scored, query=video, direction="v2t", model=view.model)
    heat = _axes(fig, "trajectory")[0]
    green = [i for i, t in enumerate(heat.get_yticklabels()) if to_hex(t.get_color()) == GT_COLOR]
    assert green == own
    with pytest.raises(ConfigError, match="out of range"):
        diffusion_figure(scored, query=len(scored.captions), direction="t2v", model=view.model)


def test_attention_figure_is_the_denoisers_pooling(scored, view):
    """The drawn weights pool the frames exactly as the t2v denoiser does (Eq. 4): its
    key projection of our weighted frames equals the one prepare() computes."""
    from diffret_cli.viz.attention import attention_figure, text_frame_attention

    model, q = view.model, 1
    gt = int(scored.caption_video[q])
    fig = attention_figure(scored, model=model, caption=q)
    bars, frames = _axes(fig, "weights:"), _axes(fig, "frames:")
    assert len(bars) == len(frames) == 2
    heights = np.array([p.get_height() for p in bars[0].patches])
    w = text_frame_attention(model.denoiser_t2v, scored.text.cls[q], scored.video.frames[gt], scored.video.mask[gt])
    n = int(scored.video.mask[gt].sum())
    assert len(heights) == n
    np.testing.assert_allclose(heights, w[:n], rtol=1e-6)
    ctx = model.denoiser_t2v.prepare(scored.text.cls[q:q + 1], scored.video.frames[gt][None, None],
                                     scored.video.mask[gt][None, None])
    pooled = torch.as_tensor(w) @ scored.video.frames[gt]
    torch.testing.assert_close(model.denoiser_t2v.k_proj(pooled), ctx.tensors["k_c"][0, 0], rtol=1e-5, atol=1e-6)
    # the first row is the caption's own video, framed green; the thumbnails are its frames
    assert to_hex(frames[0].spines["top"].get_edgecolor()) == GT_COLOR
    assert to_hex(frames[1].spines["top"].get_edgecolor()) != GT_COLOR
    img = frames[0].images[0].get_array()
    assert img.shape[1] == n * scored.split.frames(scored.video_ids[gt])[0].shape[2]


def test_similarity_histograms_count_every_pair(view, scored):
    from diffret_cli.viz.similarity import pair_auc, pair_scores, similarity_figure

    out = [(name, view.scores(name, split)) for name, split in view.out_domain()]
    fig = similarity_figure([("in", scored)] + out)
    axes = _axes(fig, "stage 1|") + _axes(fig, "re-ranked|")
    assert len(axes) == 4
    for ax in axes:
        row, title = ax.get_label().split("|")
        s = scored if title == "in" else out[0][1]
        c, v = s.stage1.shape
        pos, neg = pair_scores(s.stage1 if row == "stage 1" else s.t2v, s.caption_video)
        # two histograms: negatives drawn first; heights are fractions of each kind's pairs
        n_bins = len(ax.patches) // 2
        for patches, values in ((ax.patches[:n_bins], neg), (ax.patches[n_bins:], pos)):
            counts = np.array([p.get_height() for p in patches]) * values.size
            np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)
            edges = [p.get_x() for p in patches] + [patches[-1].get_x() + patches[-1].get_width()]
            np.testing.assert_array_equal(np.round(counts), np.histogram(values, bins=edges)[0])
        assert pos.size == c and neg.size == c * (v - 1)
        assert f"n={c}" in ax.get_legend().get_texts()[1].get_text()
    assert pair_auc(np.array([1.0, 2.0]), np.array([0.0, 1.5])) == 0.75
    assert pair_auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_examples_mark_exactly_the_ground_truth(scored, view):
    from diffret_cli.viz.examples import examples_figure, pick_queries

    before, after = t2v_ranks(scored.stage1, scored.caption_video), t2v_ranks(scored.t2v, scored.caption_video)
    picked = pick_queries(before, after, 3)
    gain = before - after
    assert len(picked) == 3 and len(set(picked)) == 3
    if (gain > 0).any():
        assert gain[picked[0]] == gain.max()
    fig = examples_figure(scored, model=view.model, count=3, top=5)
    cells = _axes(fig, "cell:")
    assert len(cells) == 3 * 2 * 5
    for ax in cells:
        _, i, r, c = ax.get_label().split(":")
        q = picked[int(i)]
        m = scored.stage1 if r == "0" else scored.t2v
        v = int(m[q].topk(5).indices[int(c)])
        assert ax.get_gid() == scored.video_ids[v]
        framed = to_hex(ax.spines["left"].get_edgecolor()) == GT_COLOR
        assert framed == (v == scored.caption_video[q])


def test_moves_figure_adds_up_to_the_queries(scored):
    from diffret_cli.viz.moves import moves_figure

    d = rerank_diagnostics(scored.stage1, (scored.t2v, scored.v2t), scored.caption_video, record=scored.record)
    fig = moves_figure(d)
    for direction, queries in (("t2v", len(scored.captions)), ("v2t", len(scored.video_ids))):
        m = d[direction]["moves"]
        assert m["up"] + m["down"] + m["same"] == m["queries"] == queries
        (ax,) = _axes(fig, f"moves:{direction}")
        assert sum(p.get_height() for p in ax.patches) == queries
        ceiling, sample = d[direction]["ceiling"], d[direction]["sample"]
        assert ceiling["k"] == 4 and sample["queries"] == ceiling["in_topk"]


def test_curves_plot_every_logged_step(run):
    from diffret_cli.viz.curves import curves_figure, read_metrics

    records = read_metrics(run.run_dir / "metrics.jsonl")
    fig = curves_figure(records)
    (val,) = _axes(fig, "validation")
    for stage in (1, 2):
        (loss,) = _axes(fig, f"loss:{stage}")
        (line,) = loss.get_lines()
        assert list(line.get_ydata()) == [r["loss"] for r in records if r.get("stage") == stage and "loss" in r]
        assert len(line.get_ydata()) > 0
        vline = next(li for li in val.get_lines() if li.get_label() == f"stage {stage}")
        scores = [r["val_score"] for r in records if r.get("stage") == stage and "val_score" in r]
        assert list(vline.get_ydata()) == scores


@pytest.mark.slow  # five CLI runs, each loading the run and scoring its test split
def test_cli_writes_each_figure(run, tmp_path):
    from click.testing import CliRunner

    from diffret_cli.cli.main import cli

    common = [str(run.run_dir), "--data-root", str(run.data_root), "--device", "cpu", "--out", str(tmp_path)]
    for args in (["diffusion", "--query", "1"], ["diffusion", "--direction", "v2t"], ["attention", "--query", "2"],
                 ["similarity"], ["examples", "--count", "2"]):
        res = CliRunner().invoke(cli, ["viz", args[0], *common, *args[1:]], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        (path,) = [line for line in res.output.splitlines() if line.endswith(".png")]
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 200
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["attention-synthetic-test-2.png", "diffusion-synthetic-test-t2v-1.png",
                     f"diffusion-synthetic-test-v2t-{names[2].rsplit('-', 1)[1][:-4]}.png",
                     "examples-synthetic-test.png", "similarity-synthetic-test.png"]
    res = CliRunner().invoke(cli, ["viz", "diffusion", *common, "--query", "999"])
    assert res.exit_code != 0 and "out of range" in str(res.exception)


def test_truncated_sampler_draws_the_query_path():
    """DITS moves the text embedding: its figure scores every state against the gallery;
    the first state is the text itself (the dual encoder's score), the last v_0 (the
    generative score)."""
    from dits_helpers import fake_split, tiny_dits_config

    from diffret_cli.evaluation import EvalSettings
    from diffret_cli.model.dits import DITS
    from diffret_cli.viz.diffusion import diffusion_figure
    from diffret_cli.viz.runview import score_split

    torch.manual_seed(0)
    model = DITS(tiny_dits_config(), load_pretrained=False).eval()
    words = ["red ring moves left", "blue star up", "green ring down small", "big red star right",
             "small blue ring", "a star moves"]
    split = fake_split(list(range(6)), {i: (w,) for i, w in enumerate(words)})
    s = score_split(model, split, EvalSettings(device="cpu", seed=3), dataset="fake", split_name="test")
    fig = diffusion_figure(s, query=2, model=model)
    (ax,) = _axes(fig, "query-path")
    gt_line, other_line = ax.get_lines()
    assert len(gt_line.get_ydata()) == 3 + 1  # sample_steps=3, then v_0
    assert gt_line.get_ydata()[0] == pytest.approx(float(s.stage1[2, 2]), abs=1e-5)
    assert gt_line.get_ydata()[-1] == pytest.approx(float(s.t2v[2, 2]), abs=1e-5)
    others = torch.cat([s.t2v[2, :2], s.t2v[2, 3:]])
    assert other_line.get_ydata()[-1] == pytest.approx(float(others.max()), abs=1e-5)
    # its diagnostics (what evaluation saves for a DITS run): moves only, no shortlist
    d = rerank_diagnostics(s.stage1, (s.t2v, s.v2t), s.caption_video, record=s.record)
    assert d["t2v"]["ceiling"] is None and d["t2v"]["sample"] is None
    assert sum(d["t2v"]["moves"][k] for k in ("up", "down", "same")) == 6
    with pytest.raises(ConfigError, match="text queries only"):
        diffusion_figure(s, query=0, direction="v2t", model=model)
