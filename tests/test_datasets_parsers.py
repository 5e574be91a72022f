"""The five benchmark parsers on the real annotation files (tests/data/annotations).

Counts are the published split sizes; exact first/last captions make sure a parsing
slip (a shifted column, a lost join) cannot hide behind a correct count.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from diffret_cli.data.types import SplitAnnotations
from diffret_cli.errors import ConfigError
from diffret_cli.data.plugin import DatasetPlugin
from diffret_cli.registry import registry
from diffret_plugins.datasets.activitynet import ActivityNet
from diffret_plugins.datasets.didemo import DiDeMo
from diffret_plugins.datasets.lsmdc import LSMDC
from diffret_plugins.datasets.msrvtt import MSRVTT
from diffret_plugins.datasets.msvd import MSVD

ANN = Path(__file__).parent / "data" / "annotations"

SHA256 = {  # from the provenance manifest: the copies are byte-exact
    "msrvtt/MSRVTT_JSFUSION_test.csv": "e61144b312c8a2fc2126f96504c981f8c23c05b3ba9655a56e2af50ac8a4b16a",
    "msrvtt/MSRVTT_train.9k.csv": "0a7ece2418e1f7ac5680555a04ddfef8950293ac3c4bdd6584fb0fa6cc0ff7d3",
    "msrvtt/MSRVTT_train.7k.csv": "ca0d04c34310168b620c90c67eaec702b37398943965f5e1f9f44af8f193da7d",
    "msrvtt/MSRVTT_val.full.csv": "0a6be33e09bacaca199b87fd1f68170bfc10aa55036518d54e113bdde4bb0044",
    "msvd/captions_msvd.json": "11bc68e8441438121c1c7321526ef1d1fc6553d3b801baef1cca1d3429e306b1",
    "msvd/train_list.txt": "223a750f33fcec3c5fcb1894123564e67286edd1e9f9473be97930340027d659",
    "msvd/val_list.txt": "0e6b31c93757d25115f04e1974bcdc7962b3fce17832b397f6e83e9ff096881b",
    "msvd/test_list.txt": "95eacd1fddb1d88cd7144267913ef02d0ecb8cc94a88bc484035433a2d8f9c7a",
    "lsmdc/LSMDC16_challenge_1000_publictect.csv": "9c15f8350956a1974ee42abab9ad2bc26c2146580c29c0bea19410a63e289fad",
    "activitynet/val_1.json": "466aaccb9ebe45c6db4c98488a4ddbeb5b22faffe62e1bbce81222c14fc29e1c",
    "activitynet/train_ids.json": "396fa202a9886021c58318ed309bcdf110718db3ada75d479ab8150e1e169d26",
    "activitynet/val_ids.json": "9b9b693f7a47dc561480b3f3c5969208bff6d57dac80596610c953ca1cf600e6",
    "didemo/val_data.json": "b0364cc256553332feb19d46bcc4cd2b09774949fe6c0b25e7ed0ff3c6aefebb",
    "didemo/test_data.json": "1891c04ec48b3d364c739594b2b6413806b74bd9027c092d896e7ebb930ff1cd",
    "didemo/train_list.txt": "ed8fb2e66ef4ff73caec80167836dc7965d5b1dc8982990952f47bb28f68e507",
    "didemo/val_list.txt": "992923d0c9d0fcea8eb9b3ed5ba16a2f41b8c422872c92be824f1cd0a371b93e",
    "didemo/test_list.txt": "371f608f2c4984caa794ccfa40276069e209c2a0ea26a78acdad0613f4f61a2c",
}

_CACHE: dict[tuple, SplitAnnotations] = {}


def load(plugin: DatasetPlugin, source: Path, split: str) -> SplitAnnotations:
    key = (type(plugin).__name__, tuple(sorted(plugin.config().items())), str(source), split)
    if key not in _CACHE:
        _CACHE[key] = plugin.load_split(source, split)
    return _CACHE[key]


def reasons(ann: SplitAnnotations) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in ann.problems:
        out[p.reason] = out.get(p.reason, 0) + 1
    return out


def test_real_files_are_byte_exact():
    for rel, digest in SHA256.items():
        assert hashlib.sha256((ANN / rel).read_bytes()).hexdigest() == digest, rel


# ------------------------------------------------------------------------------ plugins
PLUGINS = {"msrvtt": MSRVTT, "msvd": MSVD, "lsmdc": LSMDC, "activitynet": ActivityNet,
           "didemo": DiDeMo}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_registered_and_config_round_trip(name):
    cls = registry().get("datasets", name)
    assert cls is PLUGINS[name]
    assert issubclass(cls, DatasetPlugin)
    plugin = cls()
    rebuilt = cls(**plugin.config())
    assert rebuilt.config() == plugin.config()
    assert cls.name == name and cls.splits == ("train", "val", "test")
    long_videos = name in ("activitynet", "didemo")
    assert (cls.max_words, cls.max_frames) == ((64, 64) if long_videos else (32, 12))
    with pytest.raises(ConfigError, match="available: train, val, test"):
        plugin.annotation_files("dev")


def test_class_attributes_and_downloads():
    assert MSRVTT.protocol == "single" and MSVD.protocol == "multi" and LSMDC.protocol == "single"
    assert ActivityNet.protocol == DiDeMo.protocol == "paragraph"
    assert MSRVTT.hf_repo == "friedrichor/MSR-VTT" and MSVD.hf_repo == "friedrichor/MSVD"
    assert DiDeMo.hf_repo == "friedrichor/DiDeMo"
    assert ActivityNet.hf_repo == "friedrichor/ActivityNet_Captions" and LSMDC.hf_repo is None

    urls = {d.name: d.urls[0] for d in MSRVTT.downloads}
    assert sorted(urls) == ["annotations", "videos"]  # msrvtt_data.zip is all the annotations needed
    assert urls["annotations"] == (
        "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip")
    assert urls["videos"] == "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
    urls = {d.name: d.urls[0] for d in MSVD.downloads}
    assert urls["videos"] == "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar"
    assert urls["annotations"] == "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip"
    assert [d.urls[0] for d in ActivityNet.downloads] == [
        "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip"]
    assert "request" in ActivityNet.download_note
    didemo = {d.filename: d.urls[0] for d in DiDeMo.downloads}
    assert didemo["test_data.json"] == (
        "https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data/test_data.json")
    assert len(didemo) == 6 and all(not d.extract for d in DiDeMo.downloads)
    assert LSMDC.downloads is None
    assert "MPII" in LSMDC.download_note and "--source" in LSMDC.download_note


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="train_list='8k'"):
        MSRVTT(train_list="8k")
    with pytest.raises(ConfigError, match="paper_splits='yes'; allowed: true, false"):
        MSRVTT(paper_splits="yes")
    with pytest.raises(ConfigError, match="paper_splits=1; allowed: true, false"):
        ActivityNet(paper_splits=1)
    with pytest.raises(ConfigError, match="captions='raw.pkl'"):
        MSVD(captions="raw.pkl")
    with pytest.raises(TypeError):
        MSRVTT("7k")  # keyword-only


# ------------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_test_1k_a():
    ann = load(MSRVTT(), ANN / "msrvtt", "test")
    assert (ann.dataset, ann.split, ann.protocol) == ("msrvtt", "test", "single")
    assert len(ann.videos) == 1000 and ann.num_captions == 1000 and ann.problems == []
    assert len({v.video_id for v in ann.videos}) == 1000
    first, last = ann.videos[0], ann.videos[-1]
    assert (first.video_id, first.captions) == ("video9770", ("a person is connecting something to system",))
    assert (last.video_id, last.captions) == (
        "video9871", ("bearded guy in grey tshirt talking to the camera",))
    assert first.filename is None  # located by id: video9770.mp4 (or .webm)
    assert ann.caption_pairs()[1] == (1, "a little girl does gymnastics")


@pytest.fixture(scope="module")
def msrvtt_source(tmp_path_factory) -> Path:
    """msrvtt_data.zip's contents: the real csv files plus a written MSRVTT_data.json in
    the real schema (the real json is over 4 MiB): 10,000 videos x 20 captions, each
    video's official split (train video0-6512, validate video6513-7009, test the rest)."""
    root = tmp_path_factory.mktemp("msrvtt")
    folder = root / "msrvtt_data"
    folder.mkdir()
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv"):
        shutil.copy(ANN / "msrvtt" / name, folder / name)
    videos = [{"category": i % 20, "url": f"https://www.youtube.com/watch?v=x{i}",
               "video_id": f"video{i}", "start time": 1.0, "end time": 11.0,
               "split": "train" if i < 6513 else "validate" if i < 7010 else "test", "id": i}
              for i in range(10000)]
    sentences = [{"caption": f"caption {k} of video {i}", "video_id": f"video{i}",
                  "sen_id": i * 20 + k} for k in range(20) for i in range(10000)]
    random.Random(0).shuffle(sentences)  # captions of a video are not contiguous
    (folder / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos,
                                                         "sentences": sentences}))
    return root


def test_msrvtt_train_9k_and_7k(msrvtt_source):
    val_csv = {line.strip() for line in (ANN / "msrvtt" / "MSRVTT_val.full.csv").read_text().split()[1:]}
    listed = (ANN / "msrvtt" / "MSRVTT_train.9k.csv").read_text().split()[1:]
    assert len(listed) == 9000 and val_csv <= set(listed)  # the 9k list holds every val video
    default = load(MSRVTT(), msrvtt_source, "train")
    assert [v.video_id for v in default.videos] == [i for i in listed if i not in val_csv]
    assert len(default.videos) == 8503 and default.num_captions == 8503 * 20
    nine = load(MSRVTT(paper_splits=True), msrvtt_source, "train")  # the paper's setting
    assert nine.protocol == "multi" and nine.problems == []
    assert len(nine.videos) == 9000 and nine.num_captions == 180_000
    assert nine.videos[0].video_id == "video0" and nine.videos[-1].video_id == "video9999"
    assert all(len(v.captions) == 20 for v in nine.videos)
    # captions keep their order in the file, whatever it is
    data = json.loads((msrvtt_source / "msrvtt_data" / "MSRVTT_data.json").read_text())
    expected = tuple(s["caption"] for s in data["sentences"] if s["video_id"] == "video0")
    assert nine.videos[0].captions == expected
    seven = load(MSRVTT(train_list="7k", paper_splits=True), msrvtt_source, "train")
    assert len(seven.videos) == 7010 and seven.num_captions == 140_200
    assert [v.video_id for v in seven.videos[:3]] == ["video0", "video1000", "video1001"]
    assert {v.video_id for v in seven.videos} <= {v.video_id for v in nine.videos}
    # 7k without the val videos is exactly the official train split, video0 to video6512
    seven_held = load(MSRVTT(train_list="7k"), msrvtt_source, "train")
    assert sorted(v.video_id for v in seven_held.videos) == sorted(f"video{i}" for i in range(6513))
    test_ids = {v.video_id for v in load(MSRVTT(), ANN / "msrvtt", "test").videos}
    assert not test_ids & {v.video_id for v in nine.videos}


def test_msrvtt_val_is_the_official_497_videos(msrvtt_source, tmp_path):
    # from msrvtt_data.zip alone: videos[].split == "validate" in MSRVTT_data.json
    assert not list(msrvtt_source.rglob("MSRVTT_val.full.csv"))
    val = load(MSRVTT(), msrvtt_source, "val")
    assert val.protocol == "multi" and val.problems == []
    assert [v.video_id for v in val.videos] == [f"video{i}" for i in range(6513, 7010)]
    assert val.num_captions == 497 * 20
    # the separately distributed val list names the same 497 videos
    listed = (ANN / "msrvtt" / "MSRVTT_val.full.csv").read_text().split()[1:]
    assert listed == [v.video_id for v in val.videos]
    assert MSRVTT().annotation_files("val") == ["MSRVTT_data.json"]


# ---------------------------------------------------------------------------------- MSVD
def test_msvd_splits_from_captions_json():
    msvd = MSVD()
    expected = {"train": (1200, 48774), "val": (100, 4290), "test": (670, 27763)}
    captions = json.loads((ANN / "msvd" / "captions_msvd.json").read_text())
    for split, (videos, caps) in expected.items():
        ann = load(msvd, ANN / "msvd", split)
        assert ann.protocol == "multi" and ann.problems == []
        assert (len(ann.videos), ann.num_captions) == (videos, caps)
        # the count is each listed video's captions, computed independently
        listed = (ANN / "msvd" / f"{split}_list.txt").read_text().split()
        assert sum(len(captions[v]) for v in listed) == caps
    test = load(msvd, ANN / "msvd", "test")
    assert test.videos[0].video_id == "eyhzdC936uk_15_27" and len(test.videos[0].captions) == 37
    assert test.videos[0].captions[:2] == ("a boy playing with dog",
                                           "a man plays high five with his small dog")
    assert test.videos[-1].video_id == "zzit5b_-ukg_5_20" and len(test.videos[-1].captions) == 41
    assert test.videos[-1].captions[-1] == "the boy is exercising"
    # train and val lists have no trailing newline: the last id must survive whole
    assert load(msvd, ANN / "msvd", "train").videos[-1].video_id == (
        (ANN / "msvd" / "train_list.txt").read_text().rsplit("\n", 1)[-1])
    assert load(msvd, ANN / "msvd", "val").videos[-1].video_id == "eyMYc-37Sk4_0_10"


# --------------------------------------------------------------------------------- LSMDC
def test_lsmdc_public_test_1000():
    ann = load(LSMDC(), ANN / "lsmdc", "test")
    assert ann.protocol == "single" and ann.problems == []
    assert len(ann.videos) == 1000 and ann.num_captions == 1000
    first, last = ann.videos[0], ann.videos[-1]
    assert first.video_id == "3086_UGLY_TRUTH_00.23.23.000-00.23.28.886"
    assert first.captions == ("SOMEONE stands below, hands on her hips.",)
    assert first.filename == "3086_UGLY_TRUTH/3086_UGLY_TRUTH_00.23.23.000-00.23.28.886.avi"
    assert last.filename == "1034_Super_8/1034_Super_8_00.47.36.947-00.47.39.171.avi"
    assert last.captions == ("People are in his bedroom.",)
    movies = {v.filename.split("/")[0] for v in ann.videos}
    assert "1054_Harry_Potter_and_the_prisoner_of_azkaban" in movies
    assert sum(v.filename.startswith("3071_THE_DESCENDANTS/") for v in ann.videos) == 108


# --------------------------------------------------------------------------- ActivityNet
def test_activitynet_test_is_val_1_and_paper_val_is_the_test_set():
    val = load(ActivityNet(paper_splits=True), ANN / "activitynet", "val")
    test = load(ActivityNet(), ANN / "activitynet", "test")
    assert val.videos == test.videos and val.protocol == "paragraph"  # what paper_splits gives up
    assert ActivityNet().annotation_files("val") == ["train.json", "train_ids.json"]
    val_ids = json.loads((ANN / "activitynet" / "val_ids.json").read_text())
    val_1 = json.loads((ANN / "activitynet" / "val_1.json").read_text())
    assert len(val_ids) == 4926 and len(val_1) == 4917
    assert set(val_1) <= set(val_ids)  # every val_1 video is in val_ids
    assert len(test.videos) == 4917 and test.num_captions == 4917
    missing = [p.item for p in test.problems]
    assert reasons(test) == {"missing-annotation": 9}
    assert missing == ["v_UBQfURrVB_Y", "v_5F4jcV8dHVs", "v_jqYzz6YoMEY", "v__tRAypMWUdc",
                       "v_f-Cf16fQTB4", "v_b8pCuIPzb3o", "v_G_US7iMc6Y4", "v_Vre3tO7xV98",
                       "v_4G2jW3hbiO4"]
    first = test.videos[0]
    assert first.video_id == "JDg--pjY5gg"  # "v_" dropped, as the video files are named
    assert first.captions == (
        "A man in a red shirt talks to a camera before the camera cuts away to a room full of "
        "people playing professional beer pong and competitive social event. The man is seen "
        "talking again interspersed with people playing beer pong, winning beer pong trophies "
        "and posing with him for still shots. Several people hold up award cards, hug and cheer "
        "before one last interview with the man and a fade out to marketing material.",)
    assert test.videos[-1].video_id == "t0ZuC58UIOM"
    assert test.videos[-1].captions == ("People are chasing a brown bull. The bull collides and "
                                       "locks horns with black bull. The bulls fight, while people look on.",)
    # every paragraph: its sentences in file order, whitespace collapsed, one space between
    by_id = {v.video_id: v.captions[0] for v in test.videos}
    for key, video in val_1.items():
        assert by_id[key[2:]] == " ".join(" ".join(s.split()) for s in video["sentences"])
    assert by_id["BtrGC6PUPJk"].startswith("The group is performing martial arts")
    assert "\n" not in by_id["BtrGC6PUPJk"] and "  " not in by_id["BtrGC6PUPJk"]


def test_activitynet_train_ids_and_small_train_json(tmp_path):
    train_ids = json.loads((ANN / "activitynet" / "train_ids.json").read_text())
    assert len(train_ids) == 10024 and len(set(train_ids)) == 10024
    shutil.copy(ANN / "activitynet" / "train_ids.json", tmp_path / "train_ids.json")
    covered = train_ids[:3]
    (tmp_path / "train.json").write_text(json.dumps({
        covered[0]: {"duration": 10.0, "timestamps": [[0, 4], [4, 10]],
                     "sentences": ["A man walks in.", "  He sits down. "]},
        covered[1]: {"duration": 5.0, "timestamps": [[0, 5]], "sentences": [" One event."]},
        covered[2]: {"duration": 5.0, "timestamps": [[0, 5]], "sentences": ["   "]},
        "v_notlisted": {"duration": 5.0, "timestamps": [[0, 5]], "sentences": ["Ignored."]},
    }))
    ann = ActivityNet(paper_splits=True).load_split(tmp_path, "train")
    assert [v.video_id for v in ann.videos] == [covered[0][2:], covered[1][2:]]
    assert ann.videos[0].captions == ("A man walks in. He sits down.",)
    assert reasons(ann) == {"missing-annotation": 10021, "empty-caption": 1, "no-captions": 1}


# -------------------------------------------------------------------------------- DiDeMo
def test_didemo_test_and_val_by_full_file_name():
    test = load(DiDeMo(), ANN / "didemo", "test")
    val = load(DiDeMo(), ANN / "didemo", "val")
    for ann, json_videos, listed in ((test, 1037, 1004), (val, 1094, 1065)):
        data = json.loads((ANN / "didemo" / f"{ann.split}_data.json").read_text())
        names = (ANN / "didemo" / f"{ann.split}_list.txt").read_text().split()
        assert len({d["video"] for d in data}) == json_videos and len(names) == listed
        found = sum(name in {d["video"] for d in data} for name in names)
        assert found == listed  # every listed name has annotations
        assert len(ann.videos) == found and ann.problems == []
        assert ann.protocol == "paragraph" and ann.num_captions == found
        assert all(v.filename == v.video_id for v in ann.videos)
        assert [v.video_id for v in ann.videos] == names
    assert sum(v.video_id.endswith(".") for v in test.videos) == 27
    assert sum(v.video_id.endswith(".") for v in val.videos) == 12
    by_id = {v.video_id: v for v in test.videos}
    bare = by_id["10052357@N03_7585070382_5762149bfc."]
    assert bare.filename == "10052357@N03_7585070382_5762149bfc."
    assert bare.captions == ("swimmers dive into the water.",)
    # descriptions sorted by annotation_id (10029, 10907, 47089, 47429, 48218)
    assert test.videos[0].video_id == "10015567@N08_3655084291_d8b58466fa.mov"
    assert test.videos[0].captions == (
        "the lighter chick runs quickly left off frame. camera zooms out the white bird runs off "
        "camera. chick in the back races out of the frame white chicken leaves screen",)
    assert val.videos[-1].video_id == "98498050@N00_3568952835_817654f7fd.avi"
    assert val.videos[-1].captions == (
        "the arm goes off camera. when green gear first stops for one second. the gears begin "
        "spinning the person starts the rotation.",)


def test_didemo_train_list_with_small_train_json(tmp_path):
    names = (ANN / "didemo" / "train_list.txt").read_text().split()
    assert len(names) == 8392
    shutil.copy(ANN / "didemo" / "train_list.txt", tmp_path / "train_list.txt")
    (tmp_path / "train_data.json").write_text(json.dumps([
        {"annotation_id": 7, "description": "second.", "video": names[0], "times": [[1, 1]],
         "dl_link": "", "num_segments": 6},
        {"annotation_id": 3, "description": "first.", "video": names[0], "times": [[0, 0]],
         "dl_link": "", "num_segments": 6},
        {"annotation_id": 5, "description": "only.", "video": names[-1], "times": [[0, 0]],
         "dl_link": "", "num_segments": 6},
    ]))
    ann = DiDeMo().load_split(tmp_path, "train")
    assert [(v.video_id, v.captions) for v in ann.videos] == [
        (names[0], ("first. second.",)), (names[-1], ("only.",))]
    assert reasons(ann) == {"missing-annotation": 8390}


# ------------------------------------------------------------------------------- layout
def test_files_found_in_sub_folders_and_resolved(tmp_path):
    (tmp_path / "msvd_data").mkdir()
    for name in ("captions_msvd.json", "test_list.txt"):
        shutil.copy(ANN / "msvd" / name, tmp_path / "msvd_data" / name)
    msvd = MSVD()
    assert msvd.annotation_files("test") == ["raw-captions.pkl", "test_list.txt"]
    assert msvd.resolve_annotation_files(tmp_path, "test") == [
        tmp_path / "msvd_data" / "captions_msvd.json", tmp_path / "msvd_data" / "test_list.txt"]
    assert len(msvd.load_split(tmp_path, "test").videos) == 670
    (tmp_path / "anns").mkdir()
    shutil.copy(ANN / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv", tmp_path / "anns")
    assert len(LSMDC().load_split(tmp_path, "test").videos) == 1000
    assert MSRVTT().annotation_files("val") == ["MSRVTT_data.json"]
    assert DiDeMo().annotation_files("test") == ["test_data.json", "test_list.txt"]
    assert ActivityNet().annotation_files("test") == ["val_1.json", "val_ids.json"]
