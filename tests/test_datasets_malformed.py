"""Malformed files stop before any work with an error naming the file, the line or key,
and what was expected; bad items are recorded as problems and never stop a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from diffret_cli.errors import AnnotationError
from diffret_cli.data.readers import clean_caption, read_id_list
from diffret_plugins.datasets.activitynet import ActivityNet
from diffret_plugins.datasets.didemo import DiDeMo
from diffret_plugins.datasets.lsmdc import LSMDC
from diffret_plugins.datasets.msrvtt import ANNOTATIONS_URL, MSRVTT
from diffret_plugins.datasets.msvd import MSVD

ANN = Path(__file__).parent / "data" / "annotations"
LSMDC_TEST = "LSMDC16_challenge_1000_publictect.csv"


def copy(dataset: str, name: str, dest: Path) -> Path:
    shutil.copy(ANN / dataset / name, dest / name)
    return dest / name


def problems(ann) -> list[tuple[str, str]]:
    return sorted((p.item, p.reason) for p in ann.problems)


# ------------------------------------------------------------------------ malformed files
def test_truncated_json(tmp_path):
    copy("activitynet", "val_ids.json", tmp_path)
    real = (ANN / "activitynet" / "val_1.json").read_bytes()
    (tmp_path / "val_1.json").write_bytes(real[:5000])
    with pytest.raises(AnnotationError) as err:
        ActivityNet().load_split(tmp_path, "test")
    msg = err.value.message
    assert str(tmp_path / "val_1.json") in msg and "line 1, column" in msg
    assert "the file ends early" in msg and '{"v_<id>": {duration, timestamps, sentences}}' in msg
    assert "download the file again" in err.value.hint


def test_truncated_indented_json_names_the_line(tmp_path):
    copy("activitynet", "val_1.json", tmp_path)
    text = (ANN / "activitynet" / "val_ids.json").read_text()
    (tmp_path / "val_ids.json").write_text(text[: text.index('"v_0n3VRoYYYGU"') + 8])
    with pytest.raises(AnnotationError, match=r"val_ids\.json, line 5, column 3: invalid JSON"):
        ActivityNet().load_split(tmp_path, "test")


def test_lsmdc_line_with_five_fields(tmp_path):
    lines = (ANN / "lsmdc" / LSMDC_TEST).read_text().split("\n")
    lines[16] = "\t".join(lines[16].split("\t")[:5])  # line 17 loses its sentence
    (tmp_path / LSMDC_TEST).write_text("\n".join(lines))
    with pytest.raises(AnnotationError) as err:
        LSMDC().load_split(tmp_path, "test")
    assert err.value.message == (
        f"{tmp_path / LSMDC_TEST}, line 17: 5 tab-separated field(s), expected 6 (clip_id, "
        "start_aligned, end_aligned, start_extracted, end_extracted, sentence)")


def test_lsmdc_with_commas_instead_of_tabs(tmp_path):
    (tmp_path / LSMDC_TEST).write_text((ANN / "lsmdc" / LSMDC_TEST).read_text().replace("\t", ","))
    with pytest.raises(AnnotationError, match=r"line 1: 1 tab-separated field\(s\), expected 6") as err:
        LSMDC().load_split(tmp_path, "test")
    assert "comma-separated" in err.value.hint


def test_lsmdc_error_on_the_last_line_means_no_result(tmp_path):
    text = (ANN / "lsmdc" / LSMDC_TEST).read_text()
    (tmp_path / LSMDC_TEST).write_text(text + "extra\tline\n")
    with pytest.raises(AnnotationError, match="line 1001: 2 tab-separated"):
        LSMDC().load_split(tmp_path, "test")


def test_msrvtt_test_csv_with_tabs(tmp_path):
    csv_text = (ANN / "msrvtt" / "MSRVTT_JSFUSION_test.csv").read_text()
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(csv_text.replace(",", "\t"))
    with pytest.raises(AnnotationError) as err:
        MSRVTT().load_split(tmp_path, "test")
    header = "'key\\tvid_key\\tvideo_id\\tsentence'"
    assert f"MSRVTT_JSFUSION_test.csv, line 1: header is {header}" in err.value.message
    assert "expected 'key,vid_key,video_id,sentence'" in err.value.message
    assert "tab-separated" in err.value.hint


def test_msrvtt_test_csv_row_with_extra_field(tmp_path):
    lines = (ANN / "msrvtt" / "MSRVTT_JSFUSION_test.csv").read_text().split("\n")
    lines[500] += ",and more"
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"line 501: 5 comma-separated field\(s\), expected 4"):
        MSRVTT().load_split(tmp_path, "test")


@pytest.mark.parametrize("plugin, split, files, empty", [
    (MSVD(), "test", [("msvd", "captions_msvd.json")], "test_list.txt"),
    (MSVD(), "test", [("msvd", "test_list.txt")], "captions_msvd.json"),
    (LSMDC(), "test", [], LSMDC_TEST),
    (MSRVTT(), "test", [], "MSRVTT_JSFUSION_test.csv"),
    (DiDeMo(), "val", [("didemo", "val_list.txt")], "val_data.json"),
])
def test_empty_file(tmp_path, plugin, split, files, empty):
    for dataset, name in files:
        copy(dataset, name, tmp_path)
    (tmp_path / empty).write_bytes(b"\n")
    with pytest.raises(AnnotationError, match=f"{empty}: file is empty"):
        plugin.load_split(tmp_path, split)


def test_msrvtt_json_without_sentences(tmp_path):
    copy("msrvtt", "MSRVTT_train.9k.csv", tmp_path)
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": [{"video_id": "video0", "split": "train"}]}))
    with pytest.raises(AnnotationError) as err:
        MSRVTT().load_split(tmp_path, "train")
    assert err.value.message == (
        f"{tmp_path / 'MSRVTT_data.json'}: the top level has no key 'sentences'; expected "
        'an object {"videos": [...], "sentences": [...]}')


def test_msrvtt_sentence_without_caption(tmp_path):
    sentences = [{"sen_id": 0, "video_id": "video6513", "caption": "fine"},
                 {"sen_id": 1, "video_id": "video6513"}]
    videos = [{"id": 6513, "video_id": "video6513", "split": "validate"}]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    with pytest.raises(AnnotationError, match=r"sentences\[1\] has no key 'caption'; expected an "
                       r"object \{sen_id, video_id, caption\}"):
        MSRVTT().load_split(tmp_path, "val")


def test_didemo_entry_without_video_and_bad_types(tmp_path):
    copy("didemo", "test_list.txt", tmp_path)
    entries = json.loads((ANN / "didemo" / "test_data.json").read_text())
    del entries[3]["video"]
    (tmp_path / "test_data.json").write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"test_data\.json: \[3\] has no key 'video'"):
        DiDeMo().load_split(tmp_path, "test")
    (tmp_path / "test_data.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(AnnotationError, match="top level is a JSON dict, expected a list of"):
        DiDeMo().load_split(tmp_path, "test")


def test_activitynet_sentences_not_a_list(tmp_path):
    copy("activitynet", "val_ids.json", tmp_path)
    (tmp_path / "val_1.json").write_text(json.dumps({"v_a": {"sentences": "one string"}}))
    with pytest.raises(AnnotationError, match=r"\['v_a'\]\.sentences is a JSON str, expected a list"):
        ActivityNet().load_split(tmp_path, "test")


# -------------------------------------------------------------------------- missing files
def test_missing_file_lists_where_it_looked_and_where_to_get_it(tmp_path):
    with pytest.raises(AnnotationError) as err:
        MSRVTT().load_split(tmp_path, "test")
    msg = err.value.message
    assert msg.startswith("msrvtt: annotation file MSRVTT_JSFUSION_test.csv not found; looked for:")
    for where in ("", "msrvtt_data/", "anns/", "annotations/", "data/"):
        assert f"{tmp_path}/{where}MSRVTT_JSFUSION_test.csv" in msg
    assert "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip" in err.value.hint


def test_msrvtt_val_needs_the_json_split_or_the_val_list(tmp_path):
    # a json without "videos" (each video's official split) and no val csv: say both
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": []}))
    with pytest.raises(AnnotationError) as err:
        MSRVTT().load_split(tmp_path, "val")
    assert err.value.message.startswith(f"{tmp_path / 'MSRVTT_data.json'}: no \"videos\" list")
    assert "MSRVTT_val.full.csv" in err.value.message
    assert ANNOTATIONS_URL in err.value.hint and "video6513 to video7009" in err.value.hint
    # the val csv, when present, stands in for the missing list
    copy("msrvtt", "MSRVTT_val.full.csv", tmp_path)
    val = MSRVTT().load_split(tmp_path, "val")
    assert len(val.videos) == 0 and len(val.problems) == 497  # listed, but this json has no captions
    # a video entry without its split is a malformed file, named with the entry
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": [{"video_id": "video1"}], "sentences": []}))
    with pytest.raises(AnnotationError, match=r"videos\[0\] has no key 'split'"):
        MSRVTT().load_split(tmp_path, "val")


def test_missing_lsmdc_and_msvd_captions(tmp_path):
    with pytest.raises(AnnotationError, match="LSMDC16_annos_val.csv not found") as err:
        LSMDC().load_split(tmp_path, "val")
    assert "MPII" in err.value.hint and "--source" in err.value.hint
    (tmp_path / "test_list.txt").write_text("a\n")
    with pytest.raises(AnnotationError, match="raw-captions.pkl not found") as err:
        MSVD().load_split(tmp_path, "test")
    assert "nor captions_msvd.json" in err.value.message
    with pytest.raises(AnnotationError, match="does not exist"):
        MSVD().load_split(tmp_path / "nope", "test")


# ---------------------------------------------------------------------- per-item problems
def test_lsmdc_item_problems(tmp_path):
    rows = (ANN / "lsmdc" / LSMDC_TEST).read_bytes().split(b"\n")[:5]
    f = [r.split(b"\t") for r in rows]
    f[1][5] = b"   "  # empty after stripping
    f[2][5] = b"SOMEONE \xff\xfe looks."  # not UTF-8
    f[3][0] = f[0][0]  # repeats line 1
    bad_id = [b"noclipid", b"0", b"1", b"0", b"1", b"A sentence."]
    data = b"\n".join(b"\t".join(x) for x in f + [bad_id]) + b"\n"
    (tmp_path / LSMDC_TEST).write_bytes(data)
    ann = LSMDC().load_split(tmp_path, "test")
    assert [v.video_id for v in ann.videos] == [rows[0].split(b"\t")[0].decode(),
                                                rows[4].split(b"\t")[0].decode()]
    ids = [r.split(b"\t")[0].decode() for r in rows]
    assert problems(ann) == sorted([
        (ids[0], "duplicate-id"), (ids[1], "empty-caption"), (ids[1], "no-captions"),
        (ids[2], "invalid-utf8"), (ids[2], "no-captions"), ("noclipid", "bad-clip-id")])
    bad = next(p for p in ann.problems if p.reason == "invalid-utf8")
    assert bad.detail.startswith("line 3: caption is not valid UTF-8: b'SOMEONE \\xff\\xfe looks.'")
    dup = next(p for p in ann.problems if p.reason == "duplicate-id")
    assert dup.detail == "line 4 repeats line 1; dropped"


def test_invalid_utf8_inside_json_is_per_item(tmp_path):
    (tmp_path / "val_ids.json").write_text(json.dumps(["v_a", "v_b", "v_c"]))
    raw = (b'{"v_a": {"sentences": ["Good one.", " caf\xe9 bad "]}, '
           b'"v_b": {"sentences": ["\xff\xff"]}, "v_c": {"sentences": ["  Fine  too. "]}}')
    (tmp_path / "val_1.json").write_bytes(raw)
    ann = ActivityNet().load_split(tmp_path, "test")
    assert [(v.video_id, v.captions) for v in ann.videos] == [("a", ("Good one.",)), ("c", ("Fine too.",))]
    assert problems(ann) == [("v_a", "invalid-utf8"), ("v_b", "invalid-utf8"), ("v_b", "no-captions")]
    assert "['v_a'].sentences[1]" in ann.problems[0].detail


def test_msvd_json_problems_and_list_edge_cases(tmp_path):
    (tmp_path / "captions_msvd.json").write_text(json.dumps(
        {"v1": ["a dog runs", "", "  a\tdog\n sits "], "v2": ["   "], "v3": ["ok"]}))
    (tmp_path / "train_list.txt").write_bytes(b"v1\r\nv2\r\n\r\nv1\r\nnope\r\nv3")
    ann = MSVD().load_split(tmp_path, "train")
    assert [(v.video_id, v.captions) for v in ann.videos] == [
        ("v1", ("a dog runs", "a dog sits")), ("v3", ("ok",))]
    assert problems(ann) == [("nope", "missing-annotation"), ("v1", "duplicate-id"),
                             ("v1", "empty-caption"), ("v2", "empty-caption"), ("v2", "no-captions")]


def test_msrvtt_test_duplicate_video_keeps_matrix_square(tmp_path):
    text = "key,vid_key,video_id,sentence\nret0,msr1,video1,\"a, quoted\"\nret1,msr1,video1,again\n"
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(text)
    ann = MSRVTT().load_split(tmp_path, "test")
    assert [(v.video_id, v.captions) for v in ann.videos] == [("video1", ("a, quoted",))]
    assert problems(ann) == [("video1", "duplicate-id")]


def test_helpers():
    assert clean_caption("  a\u00a0b\n\tc  ") == "a b c"
    assert clean_caption(" \n ") == ""


def test_read_id_list_bad_bytes(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"\xef\xbb\xbfa\nb\xff\n")
    ids, probs = read_id_list(tmp_path / "l.txt")
    assert ids == ["a"] and [p.reason for p in probs] == ["invalid-utf8"]
