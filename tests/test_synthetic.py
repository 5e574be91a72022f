"""Tests of the ``synthetic`` and ``synthetic-shift`` generated benchmarks."""

from __future__ import annotations

import re
import time
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest

from diffret_cli.data.types import VideoEntry
from diffret_cli.errors import AnnotationError, ConfigError
from diffret_cli.registry import registry
from diffret_plugins.datasets import render
from diffret_plugins.datasets.synthetic import (
    COLOUR_WORDS,
    COLOURS,
    HARD_NEGATIVE_KINDS,
    HELD_OUT_PAIRS,
    MAX_CAPTION_TOKENS,
    MOTION_WORDS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    Synthetic,
    SyntheticShift,
    caption_length,
    caption_tokens,
    vocabulary,
)

CLASSES = (Synthetic, SyntheticShift)


@lru_cache(maxsize=None)
def _split(cls: type, split: str):
    """Default-option annotations, shared between tests (generation is deterministic)."""
    return cls().load_split(None, split)


def _scenes(d: Synthetic, split: str):
    return [d.scene(split, i) for i in range(d.num_videos(split))]


# --------------------------------------------------------------------- registration
def test_registered_with_class_attributes():
    assert registry().get("datasets", "synthetic") is Synthetic
    assert registry().get("datasets", "synthetic-shift") is SyntheticShift
    for cls in CLASSES:
        assert cls.splits == ("train", "val", "test")
        assert cls.protocol == "multi"
        assert (cls.max_words, cls.max_frames) == (32, 12)
        assert cls.downloads is None
        assert cls.download_note == "generated locally; nothing to download"
    assert (Synthetic.name, SyntheticShift.name) == ("synthetic", "synthetic-shift")


def test_config_round_trip_and_defaults():
    d = Synthetic()
    assert d.config() == {"seed": 0, "num_train": 1000, "num_val": 100, "num_test": 200,
                          "captions_per_video": 4, "frame_size": 64, "min_events": 2,
                          "max_events": 3, "seconds_per_event": 3, "group_size": 4}
    custom = SyntheticShift(seed=5, num_test=7, frame_size=32, max_events=2, group_size=5)
    again = type(custom)(**custom.config())
    assert again.config() == custom.config()
    assert again.load_split(None, "test") == custom.load_split(None, "test")


# --------------------------------------------------------------------- splits, ids
@pytest.mark.parametrize("cls", CLASSES)
def test_counts_ids_and_entries(cls):
    prefix = cls.id_prefix
    for split, n in (("train", 1000), ("val", 100), ("test", 200)):
        ann = _split(cls, split)
        assert (ann.dataset, ann.split, ann.protocol) == (cls.name, split, "multi")
        assert len(ann.videos) == n
        assert ann.num_captions == 4 * n
        assert ann.problems == []
        assert ann.videos[42].video_id == f"{prefix}-{split}-00042"
        assert len({v.video_id for v in ann.videos}) == n
        for v in ann.videos:
            assert re.fullmatch(rf"{prefix}-{split}-\d{{5}}", v.video_id)
            assert v.filename is None and v.start is None and v.end is None
            assert isinstance(v.captions, tuple) and len(set(v.captions)) == 4


def test_options_change_counts():
    d = Synthetic(num_train=3, num_val=0, num_test=5, captions_per_video=2)
    assert [len(d.load_split(None, s).videos) for s in d.splits] == [3, 0, 5]
    assert all(len(v.captions) == 2 for v in d.load_split(None, "test").videos)


def test_load_split_ignores_source(tmp_path):
    d = Synthetic(num_test=6)
    assert d.load_split(tmp_path / "does-not-exist", "test") == d.load_split(None, "test")
    assert d.annotation_files("test") == []
    assert d.locate_video(tmp_path, d.load_split(None, "test").videos[0]) is None


# -------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_frames_and_captions():
    for cls in CLASSES:
        a, b = cls(seed=3, num_train=20, num_test=20), cls(seed=3, num_train=20, num_test=20)
        for split in ("train", "test"):
            ea, eb = a.load_split(None, split), b.load_split(None, split)
            assert ea == eb
            for va, vb in zip(ea.videos[::3], eb.videos[::3]):
                fa, fb = a.generate(va), b.generate(vb)
                assert fa.tobytes() == fb.tobytes()


def test_different_seed_gives_different_videos():
    a, b = Synthetic(seed=0, num_test=20), Synthetic(seed=1, num_test=20)
    ca = [v.captions for v in a.load_split(None, "test").videos]
    cb = [v.captions for v in b.load_split(None, "test").videos]
    assert sum(x != y for x, y in zip(ca, cb)) >= 18
    frames_differ = [not np.array_equal(a.generate(x), b.generate(y)) for x, y in
                     zip(a.load_split(None, "test").videos, b.load_split(None, "test").videos)]
    assert sum(frames_differ) >= 18


def test_video_depends_only_on_seed_split_and_index():
    full = _split(Synthetic, "test")
    small = Synthetic(num_test=10, num_train=0, num_val=0)
    assert small.load_split(None, "test").videos == full.videos[:10]
    # generating one video alone (fresh instance, no load_split) gives the same frames
    d = Synthetic()
    fresh = Synthetic().generate(VideoEntry("syn-test-00137", ()))
    assert np.array_equal(fresh, d.render(d.scene("test", 137)))
    # splits are independent streams: index i of train and test differ
    assert _split(Synthetic, "train").videos[5].captions != full.videos[5].captions


# ------------------------------------------------------------------ shapes, dtype
def test_frame_shapes_and_dtype():
    d = Synthetic()
    lengths = Counter()
    for v in _split(Synthetic, "val").videos:
        f = d.generate(v)
        n = len(d.scene("val", int(v.video_id[-5:])).events)
        assert f.dtype == np.uint8 and f.ndim == 4
        assert f.shape == (3 * n, 64, 64, 3)
        assert f.flags.c_contiguous
        lengths[f.shape[0]] += 1
    assert set(lengths) == {6, 9} and min(lengths.values()) >= 20
    big = Synthetic(frame_size=96, seconds_per_event=4, min_events=3, max_events=3, num_test=2)
    f = big.generate(big.load_split(None, "test").videos[1])
    assert f.shape == (12, 96, 96, 3) and f.shape[0] <= Synthetic.max_frames


# ------------------------------------------------------------------------ captions
def test_captions_are_nonempty_lowercase_and_in_vocabulary():
    vocab = vocabulary()
    seen_words: Counter = Counter()
    for cls in CLASSES:
        for split in cls.splits:
            for v in _split(cls, split).videos:
                for c in v.captions:
                    assert isinstance(c, str) and c.strip() == c and len(c) > 10
                    assert c == c.lower()
                    words = [w for w in caption_tokens(c) if w.isalpha()]
                    assert set(words) <= vocab, set(words) - vocab
                    assert caption_length(c) <= MAX_CAPTION_TOKENS
                    seen_words.update(words)
    for table in (COLOUR_WORDS, SIZE_WORDS):
        for words in table.values():
            assert all(seen_words[w] > 50 for w in words)
    # every connective family is used
    for w in ("then", "followed", "before", "after", "first", "finally", "afterwards"):
        assert seen_words[w] > 50, w


def test_captions_fit_clip_tokenizer():
    """The length rule uses a table of words CLIP splits; check it against CLIP's BPE."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    for w in vocabulary():
        assert len(tok.encode(w)) == caption_length(w), w
    # CLIP tokenizes word by word, so per-word counts add up; check on whole sentences too
    lengths = [(len(tok.encode(c)), caption_length(c)) for cls in CLASSES
               for v in _split(cls, "test").videos for c in v.captions]
    assert all(a == b for a, b in lengths)
    longest = max(a for a, _ in lengths)
    assert longest <= Synthetic.max_words - 2  # start and end of text


_SIZE_OF = {w: k for k, ws in SIZE_WORDS.items() for w in ws}
_COLOUR_OF = {w: k for k, ws in COLOUR_WORDS.items() for w in ws}
_SHAPE_OF = {w: k for k, ws in SHAPE_WORDS.items() for w in ws}
_MOTION_OF = {p: k for k, ps in MOTION_WORDS.items() for pair in ps for p in pair}
_NP = re.compile(r"\ban? (\w+) (\w+) (plus sign|\w+) ("
                 + "|".join(sorted(map(re.escape, _MOTION_OF), key=len, reverse=True)) + r")\b")


def _parse(caption: str) -> tuple[tuple[str, str, str, str], ...]:
    """Events a caption describes, in time order (an independent reading of the text)."""
    mentions = [(_COLOUR_OF[c], _SHAPE_OF[s], _SIZE_OF[z], _MOTION_OF[m])
                for z, c, s, m in _NP.findall(caption)]
    if re.search(r" after an? ", caption):  # "B after A[, then C]"
        mentions[0], mentions[1] = mentions[1], mentions[0]
    return tuple(mentions)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_caption_describes_its_video_in_order(cls):
    d = cls()
    for split in ("train", "test"):
        for i, v in enumerate(_split(cls, split).videos):
            truth = d.scene(split, i).attributes
            for c in v.captions:
                assert _parse(c) == truth, (v.video_id, c)


def test_no_single_word_solves_retrieval():
    """Even an oracle that knows each word's video frequency, given the rarest word of a
    query, is left with many candidates: its expected R@1 stays low."""
    for cls in CLASSES:
        videos = _split(cls, "test").videos
        words = [{w for c in v.captions for w in caption_tokens(c)} for v in videos]
        df = Counter(w for ws in words for w in ws)
        r1 = np.mean([1.0 / min(df[w] for w in caption_tokens(c))
                      for v in videos for c in v.captions])
        assert r1 < 0.06, (cls.name, r1)
        assert min(df.values()) >= 5


# -------------------------------------------------------------------- hard negatives
def _one_change(a, b) -> str | None:
    """The single attribute by which event sequences ``a`` and ``b`` differ, if one."""
    if len(a) != len(b) or a == b:
        return None
    for i in range(len(a) - 1):
        if a[:i] + (a[i + 1], a[i]) + a[i + 2:] == b:
            return "order"
    diffs = [(i, f) for i in range(len(a)) for f in range(4) if a[i][f] != b[i][f]]
    if len(diffs) == 1:
        return ("colour", "shape", "size", "motion")[diffs[0][1]]
    return None


@pytest.mark.parametrize("cls", CLASSES)
def test_hard_negatives_differ_in_exactly_one_attribute(cls):
    d = cls()
    scenes = _scenes(d, "test")
    videos = _split(cls, "test").videos
    found: Counter = Counter()
    for i, a in enumerate(scenes):
        for j in range(i + 1, len(scenes)):
            kind = _one_change(a.attributes, scenes[j].attributes)
            if kind:
                found[kind] += 1
                assert not set(videos[i].captions) & set(videos[j].captions)
    assert set(found) == set(HARD_NEGATIVE_KINDS)
    assert min(found.values()) >= 15, found
    # the generator's own labels agree with the independent check
    for s in scenes:
        if s.member > 0 and s.change != "independent":
            base = scenes[s.group * d.group_size]
            assert _one_change(base.attributes, s.attributes) == s.change


def test_order_negatives_have_the_same_words_in_another_order():
    d = Synthetic()
    videos = _split(Synthetic, "test").videos
    pairs = [(s.group * d.group_size, s.index) for s in _scenes(d, "test") if s.change == "order"]
    assert len(pairs) >= 20
    for a, b in pairs:
        bag = lambda v: sorted(w for c in v.captions for w in caption_tokens(c))  # noqa: E731
        assert bag(videos[a]) == bag(videos[b])
        assert videos[a].captions != videos[b].captions


def test_eval_splits_have_no_duplicate_videos():
    for cls in CLASSES:
        for split in ("val", "test"):
            attrs = [s.attributes for s in _scenes(cls(), split)]
            assert len(set(attrs)) == len(attrs), (cls.name, split)


# ---------------------------------------------------------------- shift partition
def test_held_out_partition_is_a_latin_diagonal():
    assert len(HELD_OUT_PAIRS) == 6
    assert sorted(c for c, _ in HELD_OUT_PAIRS) == sorted(COLOURS)
    assert sorted(s for _, s in HELD_OUT_PAIRS) == sorted(SHAPES)


def test_synthetic_never_shows_held_out_pairs():
    for kw in ({}, {"seed": 7, "num_train": 300, "num_val": 50, "num_test": 50}):
        d = Synthetic(**kw)
        for split in d.splits:
            for s in _scenes(d, split):
                assert not {e.pair for e in s.events} & HELD_OUT_PAIRS, s.video_id
                assert s.background in render.PLAIN_BACKGROUNDS


def test_shift_eval_always_shows_a_held_out_pair_on_new_backgrounds():
    seen_backgrounds = Counter()
    for kw in ({}, {"seed": 7, "num_val": 50, "num_test": 50}):
        d = SyntheticShift(**kw)
        for split in ("val", "test"):
            for s in _scenes(d, split):
                assert {e.pair for e in s.events} & HELD_OUT_PAIRS, s.video_id
                assert s.domain == "shift"
                seen_backgrounds[s.background] += 1
    assert set(seen_backgrounds) == set(render.TEXTURED_BACKGROUNDS)
    assert not set(render.TEXTURED_BACKGROUNDS) & set(render.PLAIN_BACKGROUNDS)


def test_shift_train_is_synthetic_train():
    a, b = Synthetic(), SyntheticShift()
    ta, tb = _split(Synthetic, "train").videos, _split(SyntheticShift, "train").videos
    assert [v.captions for v in ta] == [v.captions for v in tb]
    assert [v.video_id.replace("syn-", "synshift-") for v in ta] == [v.video_id for v in tb]
    for i in (0, 17, 999):
        assert np.array_equal(a.generate(ta[i]), b.generate(tb[i]))


def test_shift_motion_is_slower():
    """The same left-moving event travels less far in the shift domain."""
    fast = render.trajectory("left", "small", 0.5, 0.5, 3, render.NORMAL)
    slow = render.trajectory("left", "small", 0.5, 0.5, 3, render.SLOW)
    assert fast[0].x - fast[-1].x == pytest.approx(0.40)
    assert slow[0].x - slow[-1].x == pytest.approx(0.25)


# ---------------------------------------------------------------------- rendering
def test_generate_all_default_splits():
    total_frames = 0
    t0 = time.perf_counter()
    for cls in CLASSES:
        d = cls()
        for split in cls.splits:
            for v in _split(cls, split).videos:
                f = d.generate(v)
                assert f.dtype == np.uint8 and f.shape[1:] == (64, 64, 3)
                total_frames += f.shape[0]
    print(f"generated {total_frames} frames of both datasets in {time.perf_counter() - t0:.2f} s")
    assert 2 * 1300 * 6 <= total_frames <= 2 * 1300 * 9


def test_consecutive_frames_always_differ():
    for cls in CLASSES:
        d = cls()
        for v in _split(cls, "test").videos:
            f = d.generate(v).astype(np.int16)
            changed = np.abs(np.diff(f, axis=0)).reshape(len(f) - 1, -1).max(axis=1)
            assert (changed > 0).all(), v.video_id


def _object_track(frames: np.ndarray, colour: str):
    """Centroid (x, y) in pixels and area of the pixels of exactly ``colour``."""
    out = []
    for fr in frames:
        ys, xs = np.nonzero((fr == render.COLOUR_RGB[colour]).all(axis=-1))
        assert len(xs) > 5
        out.append((xs.mean(), ys.mean(), len(xs)))
    return np.array(out)


@pytest.mark.parametrize("cls,split", [(Synthetic, "train"), (SyntheticShift, "test")])
def test_objects_move_as_captioned(cls, split):
    d = cls()
    spe = d.seconds_per_event
    checked = Counter()
    for i in range(120):
        s = d.scene(split, i)
        frames = d.render(s)
        for k, e in enumerate(s.events):
            if checked[e.motion] >= 3:
                continue
            x, y, area = _object_track(frames[k * spe:(k + 1) * spe], e.colour).T
            dx, dy, da = np.diff(x), np.diff(y), np.diff(area)
            if e.motion == "left":
                assert (dx < -3).all() and abs(y[-1] - y[0]) < 1
            elif e.motion == "right":
                assert (dx > 3).all() and abs(y[-1] - y[0]) < 1
            elif e.motion == "up":
                assert (dy < -3).all() and abs(x[-1] - x[0]) < 1
            elif e.motion == "down":
                assert (dy > 3).all() and abs(x[-1] - x[0]) < 1
            elif e.motion == "grows":
                assert (da > 0).all() and area[-1] > 1.5 * area[0]
            elif e.motion == "shrinks":
                assert (da < 0).all() and area[-1] < 0.6 * area[0]
            elif e.motion == "bounces":
                assert y[1] < y[0] - 3 and y[1] < y[-1] - 3 and abs(y[-1] - y[0]) < 1
            elif e.motion == "spins":
                assert abs(x[-1] - x[0]) < 1.5 and abs(y[-1] - y[0]) < 1.5
                assert not np.array_equal(frames[k * spe], frames[k * spe + spe - 1])
            checked[e.motion] += 1
    assert all(checked[m] == 3 for m in MOTION_WORDS), checked


def test_event_order_is_order_of_appearance():
    d = Synthetic()
    s = next(s for s in _scenes(d, "test") if s.change == "order")
    base = d.scene("test", s.group * d.group_size)
    first = lambda sc: render.COLOUR_RGB[sc.events[0].colour]  # noqa: E731
    for sc in (s, base):
        f0 = d.render(sc)[0]
        assert (f0 == first(sc)).all(axis=-1).sum() > 5
    assert not np.array_equal(d.render(s), d.render(base))


# ---------------------------------------------------------------------- bad input
def test_bad_split_and_ids_raise_annotation_errors():
    d = Synthetic(num_test=10)
    with pytest.raises(AnnotationError) as e:
        d.load_split(None, "dev")
    assert "dev" in str(e.value) and "train, val, test" in e.value.hint
    for bad in ("syn-test-00010", "synshift-test-00001", "syn-dev-00001", "video7"):
        with pytest.raises(AnnotationError, match=re.escape(repr(bad))):
            d.generate(VideoEntry(bad, ("x",)))
    with pytest.raises(AnnotationError, match="index 10 is outside split 'test'"):
        d.scene("test", 10)


@pytest.mark.parametrize("kw", [{"seed": -1}, {"num_test": 1.5}, {"frame_size": 8},
                                {"min_events": 3, "max_events": 2}, {"max_events": 4},
                                {"seconds_per_event": 1}, {"group_size": 7},
                                {"captions_per_video": True}])
def test_bad_options_raise_config_errors(kw):
    with pytest.raises(ConfigError) as e:
        Synthetic(**kw)
    assert next(iter(kw)) in str(e.value) and e.value.hint


def test_single_event_videos_fall_back_when_kinds_run_out():
    """With one event there is no "order" neighbour (and, in the shift domain, no colour
    or shape one that keeps a held-out pair): extra group members become independent."""
    for cls, kinds in ((Synthetic, {"colour", "shape", "size", "motion"}),
                       (SyntheticShift, {"size", "motion"})):
        d = cls(min_events=1, max_events=1, group_size=6, num_test=30)
        scenes = _scenes(d, "test")
        assert {s.change for s in scenes if s.member > 0} == kinds | {"independent"}
        for s in scenes:
            assert len(s.events) == 1 and d.render(s).shape == (3, 64, 64, 3)
            if s.change in kinds:
                assert _one_change(scenes[s.group * 6].attributes, s.attributes) == s.change
