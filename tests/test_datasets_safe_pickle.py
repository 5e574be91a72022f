"""diffret_cli.data.safe_pickle: annotation pickles are data, never code."""

from __future__ import annotations

import os
import pickle

import pytest

from diffret_cli.data.safe_pickle import safe_load, safe_loads
from diffret_cli.errors import AnnotationError
from diffret_plugins.datasets.msvd import MSVD


class _RunsShell:
    """Pickles to a call of os.system: what a hostile annotation file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_would_call_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"vid": _RunsShell(marker)}))
    with pytest.raises(AnnotationError) as err:
        safe_load(path)
    assert str(path) in err.value.message
    assert f"{os.system.__module__}.system" in err.value.message  # posix.system
    assert not marker.exists()  # nothing ran


@pytest.mark.parametrize("payload, refused", [
    (b"cos\nsystem\n(S'touch /tmp/diffret_pwned_p0'\ntR.", "os.system"),  # protocol 0
    (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
    (b"(S'true'\nios\nsystem\n.", "os.system"),  # INST opcode
])
def test_refuses_every_global_opcode(payload, refused):
    with pytest.raises(AnnotationError, match=f"refusing to load global {refused}"):
        safe_loads(payload, source="evil.pkl")
    assert not os.path.exists("/tmp/diffret_pwned_p0")


def test_legitimate_captions_pickle_round_trips(tmp_path):
    captions = {"-4wsuPCjDBc_5_15": [["a", "squirrel", "is", "eating"], ["a", "chipmunk"]],
                "zzit5b_-ukg_5_20": [["the", "boy", "is", "exercising"]]}
    for protocol in (2, 4, 5):
        assert safe_loads(pickle.dumps(captions, protocol=protocol)) == captions
    scalars = {"t": (1, 2.5, True, None), "b": b"\x00\xff", "n": -(2 ** 70), "s": "\u00e9"}
    assert safe_loads(pickle.dumps(scalars, protocol=4)) == scalars


def test_msvd_reads_raw_captions_pkl(tmp_path):
    captions = {"a_1_2": [["a", "man", "is", "singing"], ["  ", " "], ["a", "man", " sings "]],
                "b_3_4": [[]], "c_5_6": [["someone", "cooks"]]}
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (tmp_path / "test_list.txt").write_text("a_1_2\nb_3_4\nmissing_7_8\nc_5_6")
    ann = MSVD().load_split(tmp_path, "test")
    assert [(v.video_id, v.captions) for v in ann.videos] == [
        ("a_1_2", ("a man is singing", "a man sings")), ("c_5_6", ("someone cooks",))]
    got = sorted((p.item, p.reason) for p in ann.problems)
    assert got == [("a_1_2", "empty-caption"), ("b_3_4", "empty-caption"),
                   ("b_3_4", "no-captions"), ("missing_7_8", "missing-annotation")]
    assert MSVD(captions="raw-captions.pkl").load_split(tmp_path, "test").videos == ann.videos


def test_msvd_python2_pickle_with_a_bad_byte(tmp_path):
    # Python 2 protocol-2 pickle {'vid': [['a', 'b'], ['\xffab', 'ok'], []]}: its str
    # objects arrive as bytes; the undecodable caption is a problem, not a crash
    py2 = (b"\x80\x02}q\x00(U\x03vidq\x01]q\x02(]q\x03(U\x01aU\x01be]q\x04(U\x03\xffabU\x02oke"
           b"]q\x05eu.")
    (tmp_path / "raw-captions.pkl").write_bytes(py2)
    (tmp_path / "val_list.txt").write_text("vid")
    ann = MSVD().load_split(tmp_path, "val")
    assert [(v.video_id, v.captions) for v in ann.videos] == [("vid", ("a b",))]
    got = sorted((p.item, p.reason) for p in ann.problems)
    assert got == [("vid", "empty-caption"), ("vid", "invalid-utf8")]
    bad = next(p for p in ann.problems if p.reason == "invalid-utf8")
    assert "\\xffab" in bad.detail and bad.file.endswith("raw-captions.pkl")


def test_malicious_pickle_stops_msvd_before_any_work(tmp_path):
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"v": _RunsShell(tmp_path / "x")}))
    (tmp_path / "test_list.txt").write_text("v\n")
    with pytest.raises(AnnotationError, match="raw-captions.pkl: refusing to load global"):
        MSVD().load_split(tmp_path, "test")
    assert not (tmp_path / "x").exists()


def test_truncated_and_empty_pickles(tmp_path):
    data = pickle.dumps({"v": [["a", "b"]]})
    with pytest.raises(AnnotationError, match="cut.pkl: not a readable pickle"):
        safe_loads(data[:-5], source="cut.pkl")
    with pytest.raises(AnnotationError, match="empty.pkl: file is empty"):
        safe_loads(b"", source="empty.pkl")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(["not", "a", "dict"]))
    (tmp_path / "test_list.txt").write_text("v\n")
    with pytest.raises(AnnotationError, match="top level is a list, expected a dict"):
        MSVD().load_split(tmp_path, "test")
