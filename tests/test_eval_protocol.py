"""Evaluation protocol: no ground truth leaks through caption/video order, ranks count only
strictly higher scores, and multi-caption splits are scored per caption / per caption group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffret_cli.data.types import VideoEntry
from diffret_cli.metrics import retrieval_metrics, t2v_ranks, v2t_ranks

V = 10


class FakeSplit:
    """A split with in-memory frames: .videos (VideoEntry) and .frames(video_id)."""

    def __init__(self, videos: list[VideoEntry], frames: dict[str, np.ndarray]):
        self.videos, self._frames = videos, frames

    def frames(self, video_id: str):
        return self._frames[video_id], None


def _split(order: list[int], captions: dict[int, tuple[str, ...]]) -> FakeSplit:
    rng = np.random.default_rng(0)
    frames = {f"v{i}": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for i in range(V)}
    return FakeSplit([VideoEntry(video_id=f"v{i}", captions=captions[i]) for i in order], frames)


@pytest.fixture(scope="module")
def model():
    from diffret_cli.model.diffusionret import DiffusionRet
    from train_helpers import tiny_model_config

    torch.manual_seed(0)
    return DiffusionRet(tiny_model_config(), load_pretrained=False).eval()


WORDS = ["red", "blue", "green", "star", "ring", "moves", "left", "right", "up", "down", "big", "small"]
# videos 3 and 7 have no caption: 8 queries for 10 videos; video 5 has two
CAPTIONS = {i: (f"{WORDS[i]} {WORDS[(3 * i + 1) % 12]} {WORDS[(5 * i + 2) % 12]}",) for i in range(V)}
CAPTIONS[3] = CAPTIONS[7] = ()
CAPTIONS[5] = CAPTIONS[5] + ("small green ring moves up",)


def _ranks(model, split):
    from diffret_cli.features import SplitTexts, encode_texts, encode_videos

    texts = SplitTexts.from_split(split)
    tf = encode_texts(model, texts.captions, batch_size=4, device=torch.device("cpu"), precision="fp32")
    vf = encode_videos(model, split, batch_size=3, device=torch.device("cpu"), precision="fp32")
    sim = model.similarity_matrix(tf, vf)
    return texts, sim, t2v_ranks(sim, texts.caption_video)


def test_ranks_do_not_depend_on_order(model):
    from diffret_cli.evaluation import EvalSettings, evaluate_split

    base = _split(list(range(V)), CAPTIONS)
    perm = [6, 2, 9, 0, 7, 4, 1, 8, 5, 3]
    shuffled = _split(perm, CAPTIONS)
    texts_a, sim_a, ranks_a = _ranks(model, base)
    texts_b, sim_b, ranks_b = _ranks(model, shuffled)
    assert len(texts_a.captions) == 9 < V and sim_a.shape == (9, V)
    # map each caption of the shuffled split back to its caption in the base split
    where = {c: i for i, c in enumerate(texts_a.captions)}
    back = np.array([where[c] for c in texts_b.captions])
    assert sorted(back.tolist()) == list(range(9)) and back.tolist() != list(range(9))
    np.testing.assert_array_equal(ranks_b, ranks_a[back])
    assert ranks_a.max() <= V and ranks_a.min() >= 1
    settings = EvalSettings(device="cpu", batch_size=4, rerank=False)
    ra = evaluate_split(model, base, settings)
    rb = evaluate_split(model, shuffled, settings)
    assert ra["rows"]["stage1"]["t2v"] == rb["rows"]["stage1"]["t2v"]
    assert ra["rows"]["stage1"]["t2v"]["queries"] == 9
    assert ra["num_captions"] == 9 and ra["num_videos"] == V


def test_t2v_ranks_with_ties_are_expected_ranks():
    # h higher, t tied: expected rank 1 + h + t/2, R@1 min(1, max(0, (1 - h) / (t + 1)))
    t2v = torch.tensor([[0.9, 0.5, 0.9, 0.1],   # gt 0 ties with video 2 -> rank 1.5, R@1 1/2
                        [0.2, 0.2, 0.2, 0.2],   # all tied -> rank 2.5, R@1 1/4
                        [0.3, 0.8, 0.1, 0.8],   # gt 2: three higher -> rank 4
                        [0.5, 0.6, 0.7, 0.6]])  # gt 3 (0.6): one higher, one tied -> rank 2.5, R@1 0
    cv = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(t2v_ranks(t2v, cv), [1.5, 2.5, 4, 2.5])
    m = retrieval_metrics(t2v, t2v.t(), cv)["t2v"]
    assert m["R@1"] == 18.75 and m["R@5"] == 100.0 and m["MdR"] == 2.5 and m["MnR"] == 2.625
    assert m["queries"] == 4


def test_multi_caption_protocol_hand_computed():
    # 3 videos; captions 0,1 -> video 0; 2 -> video 1; 3,4,5 -> video 2
    cv = np.array([0, 0, 1, 2, 2, 2])
    t2v = torch.tensor([[0.9, 0.1, 0.2],    # rank 1
                        [0.3, 0.4, 0.5],    # rank 3
                        [0.6, 0.6, 0.1],    # tie with video 0 -> rank 1.5
                        [0.1, 0.2, 0.3],    # rank 1
                        [0.5, 0.9, 0.2],    # rank 3
                        [0.2, 0.7, 0.4]])   # rank 2
    np.testing.assert_array_equal(t2v_ranks(t2v, cv), [1, 3, 1.5, 1, 3, 2])
    # v2t [V, C]: a caption group scores by its best caption
    v2t = torch.tensor([[0.1, 0.2, 0.9, 0.3, 0.1, 0.1],   # groups (0.2, 0.9, 0.3) -> rank 3
                        [0.5, 0.1, 0.5, 0.2, 0.1, 0.4],   # (0.5, 0.5, 0.4) tie -> rank 1.5
                        [0.1, 0.1, 0.1, 0.0, 0.8, 0.0]])  # (0.1, 0.1, 0.8) -> rank 1
    np.testing.assert_array_equal(v2t_ranks(v2t, cv), [3, 1.5, 1])
    m = retrieval_metrics(t2v, v2t, cv)
    assert m["t2v"]["queries"] == 6 and m["v2t"]["queries"] == 3
    assert m["t2v"]["R@1"] == pytest.approx(250 / 6) and m["t2v"]["MdR"] == 1.5  # lower middle of 1,1,1.5,2,3,3
    assert m["t2v"]["MnR"] == pytest.approx(11.5 / 6)
    assert m["v2t"]["R@1"] == pytest.approx(50.0) and m["v2t"]["MdR"] == 1.5


def test_query_counts_never_exceed_captions():
    # 4 videos, 3 captions: video 3 has no caption and must not be scored as a v2t query
    cv = np.array([0, 1, 2])
    t2v = torch.tensor([[0.9, 0.1, 0.2, 0.3],
                        [0.1, 0.2, 0.9, 0.3],
                        [0.1, 0.2, 0.9, 0.3]])
    v2t = t2v.t().contiguous()
    m = retrieval_metrics(t2v, v2t, cv)
    assert m["t2v"]["queries"] == 3
    np.testing.assert_array_equal(t2v_ranks(t2v, cv), [1, 3, 1])
    assert m["v2t"]["queries"] <= 3, "a video without captions was counted as a video-to-text query"
