"""LabelSet: the official index,mid,display_name CSVs, quoting, validation, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from cavmae.errors import ConfigError
from cavmae.labels import LabelSet


def test_audioset_csv(shared_labels: Path) -> None:
    labels = LabelSet.from_csv(shared_labels / "class_labels_indices_as.csv")
    assert len(labels) == 527
    assert labels[0] == "Speech"
    assert labels[1] == "Male speech, man speaking"  # quoted, with a comma
    assert labels.mids[0] == "/m/09x0r"
    assert labels.index("/m/05zppz") == 1
    assert labels.name_of("/m/09x0r") == "Speech"


def test_vggsound_csv(shared_labels: Path) -> None:
    labels = LabelSet.from_csv(shared_labels / "class_labels_indices_vgg.csv")
    assert len(labels) == 309
    assert labels[2] == "bird chirping_ tweeting"
    assert labels.index("vgg_308") == 308


@pytest.mark.parametrize("name", ["class_labels_indices_as.csv", "class_labels_indices_vgg.csv"])
def test_shared_csv_round_trip(shared_labels: Path, tmp_path: Path, name: str) -> None:
    labels = LabelSet.from_csv(shared_labels / name)
    again = LabelSet.from_csv(labels.to_csv(tmp_path / name))
    assert again == labels


def test_quoted_commas_and_out_of_order_rows(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(
        "index,mid,display_name\n"
        '2,/m/c,"Dog, bark, ""woof"""\n'
        '0,/m/a,"Speech"\n'
        "1,/m/b,plain name\n",
        encoding="utf-8",
    )
    labels = LabelSet.from_csv(p)
    assert labels.names == ("Speech", "plain name", 'Dog, bark, "woof"')
    assert labels.mids == ("/m/a", "/m/b", "/m/c")
    out = labels.to_csv(tmp_path / "out.csv")
    assert '"Dog, bark, ""woof"""' in out.read_text(encoding="utf-8")
    assert LabelSet.from_csv(out) == labels


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    p = tmp_path / "bom.csv"
    p.write_bytes('\ufeffindex,mid,display_name\r\n0,x,A\r\n1,y,"B, c"\r\n'.encode())
    assert LabelSet.from_csv(p).names == ("A", "B, c")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("idx,mid,name\n0,a,A\n", "header"),
        ("index,mid,display_name\n0,a,A\n2,b,B\n", "0..1"),
        ("index,mid,display_name\n0,a,A\n0,b,B\n", "twice"),
        ("index,mid,display_name\nzero,a,A\n", "not an integer"),
        ("index,mid,display_name\n0,a,Dog, bark\n", "3 fields"),
        ("index,mid,display_name\n0,a,A\n1,a,B\n", "duplicate mid"),
        ("index,mid,display_name\n", "no classes"),
        ("", "header"),
    ],
)
def test_invalid_csv(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        LabelSet.from_csv(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LabelSet.from_csv(tmp_path / "nope.csv")


def test_generic_and_lookup() -> None:
    labels = LabelSet.generic(3)
    assert labels.names == ("class 0", "class 1", "class 2")
    assert list(labels) == list(labels.names)
    assert labels.index("class_2") == 2
    with pytest.raises(KeyError, match="not one of the 3"):
        labels.index("nope")
    with pytest.raises(ConfigError):
        LabelSet.generic(0)


def test_dict_round_trip_and_validation() -> None:
    labels = LabelSet(("a", "b"), ("m1", "m2"))
    assert LabelSet.from_dict(labels.to_dict()) == labels
    with pytest.raises(ConfigError, match="one mid per name"):
        LabelSet(("a", "b"), ("m1",))
    with pytest.raises(ConfigError):
        LabelSet.from_dict({"names": ["a"]})
