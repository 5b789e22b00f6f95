"""Tests for semiseg_lit.data.splits (specs/data.md §2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiseg_lit.data.splits import (
    Sample,
    SplitError,
    check_disjoint,
    check_files_exist,
    partition,
    read_split_records,
)

SHARED_SPLITS = Path(__file__).resolve().parents[2].parent / "shared" / "splits"


def _write(tmp_path: Path, text: str, name: str = "list.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def _samples(ids) -> list[Sample]:
    return [Sample(i, Path(f"/img/{i}.jpg"), Path(f"/gt/{i}.png")) for i in ids]


# ------------------------------------------------------------------ read_split_records


def test_unimatch_pairs_without_final_newline(tmp_path):
    p = _write(
        tmp_path,
        "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png "
        "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png\n"
        "JPEGImages/2007_000733.jpg SegmentationClass/2007_000733.png",
    )
    assert read_split_records(p) == [
        (
            "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png",
            "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png",
        ),
        ("JPEGImages/2007_000733.jpg", "SegmentationClass/2007_000733.png"),
    ]


def test_cps_tab_pairs(tmp_path):
    p = _write(
        tmp_path,
        "/images/train/jena_000078_000019.png\t/segmentation/train/jena_000078_000019_gtFine.png\n"
        "/images/val/lindau_000023_000019.png\t/segmentation/val/lindau_000023_000019_gtFine.png\n",
    )
    recs = read_split_records(p)
    assert recs[0] == (
        "/images/train/jena_000078_000019.png",
        "/segmentation/train/jena_000078_000019_gtFine.png",
    )
    assert len(recs) == 2


def test_bare_ids_crlf_no_trailing_newline_blank_lines_and_bom(tmp_path):
    p = _write(tmp_path, "\ufeff2008_006748\r\n\r\n2011_000453\r\n  \r\n2009_001036")
    assert read_split_records(p) == [("2008_006748",), ("2011_000453",), ("2009_001036",)]


def test_image_path_only(tmp_path):
    p = _write(tmp_path, "leftImg8bit/train/hamburg/hamburg_000000_080169_leftImg8bit.png\n")
    assert read_split_records(p) == [("leftImg8bit/train/hamburg/hamburg_000000_080169_leftImg8bit.png",)]


def test_read_split_records_errors(tmp_path):
    with pytest.raises(SplitError, match=r"not found: .*missing\.txt"):
        read_split_records(tmp_path / "missing.txt")
    with pytest.raises(SplitError, match=r"empty\.txt is empty \(0 records\)"):
        read_split_records(_write(tmp_path, "", "empty.txt"))
    with pytest.raises(SplitError, match=r"blank\.txt is empty"):
        read_split_records(_write(tmp_path, "\n \r\n\n", "blank.txt"))
    with pytest.raises(SplitError, match=r"three\.txt, line 3: 3 fields"):
        read_split_records(_write(tmp_path, "a b\n\nx y z\n", "three.txt"))
    with pytest.raises(SplitError, match=r"dup\.txt has 2 duplicated record\(s\): a, b"):
        read_split_records(_write(tmp_path, "a\nb\nc\na\nb\n", "dup.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SplitError, match=r"bin\.txt is not UTF-8"):
        read_split_records(tmp_path / "bin.txt")


# ------------------------------------------------------------------ partition


def test_partition_hand_example_and_order_independence():
    ids = ["e", "b", "d", "a", "c"]
    lab, unl = partition(_samples(ids), 2, seed=0)
    # sorted ids a..e; default_rng(0).choice(5, 2, replace=False) gives the labeled positions
    pos = sorted(np.random.default_rng(0).choice(5, size=2, replace=False).tolist())
    expected = [sorted(ids)[k] for k in pos]
    assert [s.id for s in lab] == expected
    assert [s.id for s in unl] == sorted(set(ids) - set(expected))
    lab2, unl2 = partition(_samples(reversed(ids)), 2, seed=0)
    assert [s.id for s in lab2] == [s.id for s in lab] and [s.id for s in unl2] == [s.id for s in unl]


def test_partition_seeds_sizes_and_edges():
    pool = _samples(f"{i:04d}" for i in range(200))
    lab0, unl0 = partition(pool, 20, seed=0)
    lab1, _ = partition(pool, 20, seed=1)
    assert len(lab0) == 20 and len(unl0) == 180
    assert {s.id for s in lab0}.isdisjoint(s.id for s in unl0)
    assert {s.id for s in lab0} != {s.id for s in lab1}
    assert [s.id for s in lab0] == sorted(s.id for s in lab0)
    lab, unl = partition(pool, 200, seed=0)
    assert len(lab) == 200 and unl == []


def test_partition_errors():
    pool = _samples("abc")
    with pytest.raises(SplitError, match="n_labeled=0 but there are 3 samples"):
        partition(pool, 0, 0)
    with pytest.raises(SplitError, match="n_labeled=4 but there are 3 samples"):
        partition(pool, 4, 0)
    with pytest.raises(SplitError, match="must be an int"):
        partition(pool, True, 0)  # type: ignore[arg-type]
    with pytest.raises(SplitError, match="occur twice: a"):
        partition(_samples("aab"), 1, 0)


# ------------------------------------------------------------------ checks


def test_check_disjoint():
    check_disjoint(_samples("ab"), _samples("cd"), "lab.txt", "unl.txt")
    with pytest.raises(SplitError, match=r"lab\.txt and unlabeled list unl\.txt share 2 id\(s\): b, c"):
        check_disjoint(_samples("abc"), _samples("cdb"), "lab.txt", "unl.txt")


def test_check_files_exist(tmp_path):
    (tmp_path / "ok.jpg").touch()
    (tmp_path / "ok.png").touch()
    good = [Sample("ok", tmp_path / "ok.jpg", tmp_path / "ok.png"), Sample("u", tmp_path / "ok.jpg", None)]
    check_files_exist(good, "list.txt")
    bad = good + [Sample(f"m{i}", tmp_path / f"m{i}.jpg", tmp_path / "ok.png") for i in range(7)]
    with pytest.raises(SplitError) as e:
        check_files_exist(bad, "list.txt")
    msg = str(e.value)
    assert msg.startswith("7 file(s) named by split list list.txt do not exist")
    assert "m4.jpg" in msg and "m5.jpg" not in msg and msg.endswith(", ...")


# ------------------------------------------------------------------ the published lists (development checkout only)

# (relative path, records) from specs/data.md §2.2 (UniMatch) plus the U2PL / CPS lists present
PUBLISHED_COUNTS = {
    "unimatch/cityscapes/val.txt": 500,
    "unimatch/cityscapes/1_2/labeled.txt": 1488,
    "unimatch/cityscapes/1_2/unlabeled.txt": 1487,
    "unimatch/cityscapes/1_4/labeled.txt": 744,
    "unimatch/cityscapes/1_4/unlabeled.txt": 2231,
    "unimatch/cityscapes/1_8/labeled.txt": 372,
    "unimatch/cityscapes/1_8/unlabeled.txt": 2603,
    "unimatch/cityscapes/1_16/labeled.txt": 186,
    "unimatch/cityscapes/1_16/unlabeled.txt": 2789,
    "unimatch/cityscapes/1_30/labeled.txt": 100,
    "unimatch/cityscapes/1_30/unlabeled.txt": 2875,
    "unimatch/pascal/train_aug.txt": 10582,
    "unimatch/pascal/val.txt": 1449,
    "unimatch/pascal/92/labeled.txt": 92,
    "unimatch/pascal/92/unlabeled.txt": 10490,
    "unimatch/pascal/183/labeled.txt": 183,
    "unimatch/pascal/183/unlabeled.txt": 10399,
    "unimatch/pascal/366/labeled.txt": 366,
    "unimatch/pascal/366/unlabeled.txt": 10216,
    "unimatch/pascal/732/labeled.txt": 732,
    "unimatch/pascal/732/unlabeled.txt": 9850,
    "unimatch/pascal/1464/labeled.txt": 1464,
    "unimatch/pascal/1464/unlabeled.txt": 9118,
    "unimatch/pascal/1_16/labeled.txt": 662,
    "unimatch/pascal/1_16/unlabeled.txt": 9920,
    "unimatch/pascal/1_8/labeled.txt": 1323,
    "unimatch/pascal/1_8/unlabeled.txt": 9259,
    "unimatch/pascal/1_4/labeled.txt": 2646,
    "unimatch/pascal/1_4/unlabeled.txt": 7936,
    "unimatch/pascal/u2pl_1_16/labeled.txt": 662,
    "unimatch/pascal/u2pl_1_16/unlabeled.txt": 9920,
    "unimatch/pascal/u2pl_1_8/labeled.txt": 1323,
    "unimatch/pascal/u2pl_1_8/unlabeled.txt": 9259,
    "unimatch/pascal/u2pl_1_4/labeled.txt": 2646,
    "unimatch/pascal/u2pl_1_4/unlabeled.txt": 7936,
    "u2pl/cityscapes/372/labeled.txt": 372,
    "u2pl/pascal/92/labeled.txt": 92,
    "u2pl/pascal/val.txt": 1449,
    "torchsemiseg_cps/city/config_new/subset_train/train_aug_labeled_1-8.txt": 372,
    "torchsemiseg_cps/city/config_new/val.txt": 500,
    "torchsemiseg_cps/pascal_voc/subset_train_aug/pseudoseg_labeled_1-8.txt": 183,
    "torchsemiseg_cps/pascal_voc/subset_train_aug/pseudoseg_unlabeled_1-8.txt": 1282,
}


def _shared(rel: str) -> Path:
    if not SHARED_SPLITS.is_dir():
        pytest.skip("../shared/splits not found (only present in the development checkout)")
    p = SHARED_SPLITS / rel
    if not p.is_file():
        pytest.skip(f"{rel} not in ../shared/splits")
    return p


@pytest.mark.parametrize("rel,count", sorted(PUBLISHED_COUNTS.items()))
def test_published_record_counts(rel, count):
    assert len(read_split_records(_shared(rel))) == count


def test_published_unimatch_cityscapes_1_8_pairs_disjoint():
    lab = read_split_records(_shared("unimatch/cityscapes/1_8/labeled.txt"))
    unl = read_split_records(_shared("unimatch/cityscapes/1_8/unlabeled.txt"))
    assert all(len(r) == 2 and r[0].startswith("leftImg8bit/train/") for r in lab)
    lab_ids = {Path(r[0]).name.replace("_leftImg8bit.png", "") for r in lab}
    unl_ids = {Path(r[0]).name.replace("_leftImg8bit.png", "") for r in unl}
    assert lab_ids.isdisjoint(unl_ids) and len(lab_ids | unl_ids) == 2975


def test_published_u2pl_pascal_bare_ids_and_cps_formats():
    assert all(
        len(r) == 1 and len(r[0]) == 11 for r in read_split_records(_shared("u2pl/pascal/92/labeled.txt"))
    )
    cps_city = read_split_records(
        _shared("torchsemiseg_cps/city/config_new/subset_train/train_aug_labeled_1-8.txt")
    )
    assert cps_city[0] == (
        "/images/train/jena_000078_000019.png",
        "/segmentation/train/jena_000078_000019_gtFine.png",
    )
    # CRLF, no final newline; labeled/unlabeled share exactly one id (§2.3 quirks)
    raw = _shared("torchsemiseg_cps/pascal_voc/subset_train_aug/pseudoseg_labeled_1-8.txt").read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")
    lab = read_split_records(
        _shared("torchsemiseg_cps/pascal_voc/subset_train_aug/pseudoseg_labeled_1-8.txt")
    )
    unl = read_split_records(
        _shared("torchsemiseg_cps/pascal_voc/subset_train_aug/pseudoseg_unlabeled_1-8.txt")
    )
    assert all("\r" not in r[0] for r in lab)
    with pytest.raises(SplitError, match="share 1 id.*2009_001036"):
        check_disjoint(
            _samples(r[0] for r in lab),
            _samples(r[0] for r in unl),
            "pseudoseg_labeled_1-8",
            "pseudoseg_unlabeled_1-8",
        )
