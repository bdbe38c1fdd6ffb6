"""Behaviour of the tasks package against the offline mirror (row counts are the mirror README's)."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import tasks
from tasks import TaskError, check_task, list_tasks, load_split, resolve_data_dir
from tasks.registry import TASKS

MMLU_GROUPS = {  # the papers' OOD groups, written out here so the registry is checked against them
    "mmlu_chem": {"college_chemistry"}, "mmlu_phys": {"college_physics"},
    "mmlu_eng": {"electrical_engineering"},
    "mmlu_cs": {"college_computer_science", "high_school_computer_science", "computer_security", "machine_learning"},
    "mmlu_law": {"international_law", "jurisprudence", "professional_law"},
    "mmlu_health": {"anatomy", "clinical_knowledge", "college_medicine", "human_aging", "nutrition",
                    "professional_medicine", "virology"},
}



def ids(examples):
    return [e.id for e in examples]


def mirror_rows(data_dir, rel):
    return [json.loads(line) for line in Path(data_dir, rel).read_text(encoding="utf-8").split("\n") if line]


def write(tmp_path, text):
    (tmp_path / "mine.jsonl").write_text(text, encoding="utf-8")
    return tmp_path / "mine.jsonl"


def test_task_names_and_suggestions(data_dir):
    listed = dict(list_tasks())
    assert set(listed) == {"arc_easy", "arc_challenge", "obqa", "winogrande_s", "winogrande_m", "boolq", *MMLU_GROUPS}
    for name, desc in listed.items():
        assert "\n" not in desc
        assert ("OOD" in desc) == name.startswith("mmlu_") and ("ID" in desc) != ("OOD" in desc)
    with pytest.raises(TaskError, match=r"did you mean arc_easy\?.*python benchmark.py list tasks"):
        load_split("arc-easy", "test", data_dir=data_dir)
    with pytest.raises(TaskError, match="unknown split 'dev'"):
        check_task("arc_easy", ("dev",), data_dir=data_dir)


def test_resolve_data_dir_precedence(monkeypatch, tmp_path, data_dir):
    monkeypatch.delenv("BAYESPEFT_DATA_DIR", raising=False)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("BAYESPEFT_DATA_DIR", data_dir)
    assert resolve_data_dir(None) == data_dir
    assert resolve_data_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(TaskError, match="not a directory"):
        resolve_data_dir(str(tmp_path / "nope"))


def test_arc_easy_split_sizes_and_seeded_held_out_rule(data_dir):
    test = load_split("arc_easy", "test", data_dir=data_dir)
    train = load_split("arc_easy", "train", data_dir=data_dir)
    val = load_split("arc_easy", "validation", data_dir=data_dir)
    assert len(test) == 570 and len(val) == 225 and len(train) + len(val) == 2251
    # validation = the first round(0.1 * n) rows of a default_rng(split_seed) permutation, train = the rest
    hub_ids = [r["id"] for r in mirror_rows(data_dir, "allenai/ai2_arc/ARC-Easy/train.jsonl")]
    perm = np.random.default_rng(0).permutation(2251)
    assert ids(val) == [hub_ids[i] for i in perm[:225]] and ids(train) == [hub_ids[i] for i in perm[225:]]
    assert ids(test) == [r["id"] for r in mirror_rows(data_dir, "allenai/ai2_arc/ARC-Easy/validation.jsonl")]
    assert val == load_split("arc_easy", "validation", data_dir=data_dir, split_seed=0)  # deterministic
    other = load_split("arc_easy", "validation", data_dir=data_dir, split_seed=1)
    assert set(ids(other)) != set(ids(val)) and len(other) == 225
    assert len(load_split("arc_easy", "validation", data_dir=data_dir, val_fraction=0.2)) == 450
    with pytest.raises(TaskError, match="val_fraction"):
        load_split("arc_easy", "train", data_dir=data_dir, val_fraction=1.0)


def test_obqa_limit_keeps_prefix(data_dir):
    full = load_split("obqa", "train", data_dir=data_dir)
    ex = load_split("obqa", "test", data_dir=data_dir)[0]
    row = mirror_rows(data_dir, "allenai/openbookqa/main/validation.jsonl")[0]  # hub validation = our test
    assert ex.id == row["id"] and ex.label_prompt.startswith(f"Question: {row['question_stem']}\n")
    assert load_split("obqa", "train", data_dir=data_dir, limit=7) == full[:7]
    assert len(full) + len(load_split("obqa", "validation", data_dir=data_dir)) == 4957
    for bad in (0, -1, 2.5):
        with pytest.raises(TaskError, match="limit"):
            load_split("obqa", "test", data_dir=data_dir, limit=bad)


def test_arc_numeric_answer_key_odd_choice_counts_and_missing_ids(data_dir):
    easy = {e.id: e for e in load_split("arc_easy", "test", data_dir=data_dir)}
    ex = easy["NYSEDREGENTS_2014_8_42"]
    q = ("The force of gravitational attraction between two objects depends on the distance between the objects"
         " and their")
    assert ex.label == 2 and ex.choices[ex.label] == "masses"  # answerKey "3" with labels "1".."4"
    assert ex.label_words == ("A", "B", "C", "D")
    assert ex.label_prompt == f"Question: {q}\nChoices:\nA. buoyancies\nB. temperatures\nC. masses\nD. shapes" \
        "\nAnswer:"
    assert ex.contexts == (f"Question: {q}\nAnswer:",) * 4
    assert ex.continuations == (" buoyancies", " temperatures", " masses", " shapes")
    five = easy["TIMSS_1995_8_J5"]
    assert five.n_choices == 5 and five.label_words[-1] == "E" and "\nE. Radio waves\n" in five.label_prompt
    assert five.choices[five.label] == "Ultraviolet"
    three = {e.id: e for e in load_split("arc_challenge", "test", data_dir=data_dir)}["NYSEDREGENTS_2014_4_4"]
    assert three.choices == ("gas", "liquid", "solid") and three.label == 0 and len(three.continuations) == 3
    rows = mirror_rows(data_dir, "allenai/ai2_arc/ARC-Challenge/train.jsonl")
    no_id = [i for i, r in enumerate(rows) if not r["id"]]  # the mirror lost 63 ids
    assert len(no_id) == 63
    pool = ids(load_split("arc_challenge", "train", data_dir=data_dir, split_seed=3)) + \
        ids(load_split("arc_challenge", "validation", data_dir=data_dir, split_seed=3))
    assert {f"arc_challenge-train-{i}" for i in no_id} <= set(pool)


def test_boolq_label_order(data_dir):
    test = load_split("boolq", "test", data_dir=data_dir)
    assert len(test) == 3270 and sum(e.label for e in test) == 2033  # 2033 rows answer true
    ex = test[1]  # "is house tax and property tax are same", answer true
    assert ex.label == 1 and ex.choices == ex.label_words == ("False", "True") and ex.continuations == (" no", " yes")
    assert ex.label_prompt.endswith("\nQuestion: is house tax and property tax are same?\nAnswer:")
    assert ex.contexts == (ex.label_prompt, ex.label_prompt) and test[0].label == 0


def test_winogrande_partial_evaluation(data_dir):
    ex = load_split("winogrande_s", "test", data_dir=data_dir)[0]
    assert ex.id == "winogrande_s-validation-0" and ex.label == 1  # answer "2"
    assert ex.contexts == ("Sarah was a much better surgeon than Maria so Sarah",
                           "Sarah was a much better surgeon than Maria so Maria")
    assert ex.continuations == (" always got the easier cases.",) * 2
    assert ex.label_prompt == ("Sentence: Sarah was a much better surgeon than Maria so _ always got the "
                               "easier cases.\nChoices:\nA. Sarah\nB. Maria\nAnswer:")
    assert sum(len(load_split("winogrande_s", s, data_dir=data_dir)) for s in ("train", "validation")) == 640


@pytest.mark.parametrize("name,subjects", MMLU_GROUPS.items())
def test_mmlu_groups(data_dir, name, subjects):
    rows = mirror_rows(data_dir, "cais/mmlu/all/test.jsonl")
    test = load_split(name, "test", data_dir=data_dir)
    assert len(test) == sum(r["subject"] in subjects for r in rows)
    i = int(test[0].id.rsplit("-", 1)[1])  # fallback id = index in the hub split
    assert rows[i]["subject"] in subjects and test[0].choices == tuple(rows[i]["choices"])
    assert test[0].label == rows[i]["answer"]
    for split in ("train", "validation"):
        with pytest.raises(TaskError, match=f"{name} is an evaluation-only \\(OOD\\) task"):
            load_split(name, split, data_dir=data_dir)


def test_invariants_of_every_available_split(data_dir):
    for name in TASKS:
        for split in TASKS[name].splits:
            try:
                check_task(name, (split,), data_dir=data_dir)
            except TaskError:
                continue  # not in the mirror
            exs = load_split(name, split, data_dir=data_dir)
            assert exs and len(set(ids(exs))) >= len(exs) - 1  # ARC-Challenge train repeats one row
            for e in exs:
                k = e.n_choices
                assert 0 <= e.label < k and len(e.label_words) == len(e.contexts) == len(e.continuations) == k


@pytest.mark.parametrize("name,split,missing,available", [
    ("boolq", "train", "google/boolq/default/train.jsonl", "available: validation"),
    ("winogrande_m", "train", "allenai/winogrande/winogrande_m/train.jsonl", "available: none"),
    ("winogrande_m", "test", "allenai/winogrande/winogrande_m/validation.jsonl", "available: none"),
])
def test_missing_mirror_split(data_dir, name, split, missing, available):
    for call in (lambda: check_task(name, (split,), data_dir=data_dir),
                 lambda: load_split(name, split, data_dir=data_dir)):
        with pytest.raises(TaskError) as err:
            call()
        msg = str(err.value)
        assert missing in msg and available in msg and "Hugging Face hub" in msg and "\n" not in msg


def test_check_task_reads_no_rows(data_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("BAYESPEFT_DATA_DIR", raising=False)
    def boom(*a, **k):
        raise AssertionError("check_task read rows")
    monkeypatch.setattr(tasks.source, "read_rows", boom)
    monkeypatch.setattr(tasks.source, "read_jsonl", boom)
    for name in TASKS:
        check_task(name, TASKS[name].splits, data_dir=None)  # hub: only names and splits are checked
    check_task("arc_easy", data_dir=data_dir)
    check_task("mmlu_law", "test", data_dir=data_dir)
    with pytest.raises(TaskError, match=":1:"):  # a user's file is validated up front, line by line
        check_task(f"custom:{write(tmp_path, 'not json')}", "test")
    with pytest.raises(TaskError, match="no such file"):
        check_task(f"custom:{tmp_path / 'absent.jsonl'}")


def test_hub_path_matches_mirror(data_dir, monkeypatch):
    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return mirror_rows(data_dir, f"{hub_id}/{config}/{split}.jsonl")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    monkeypatch.delenv("BAYESPEFT_DATA_DIR", raising=False)  # no mirror: the hub path
    assert load_split("arc_challenge", "validation") == load_split("arc_challenge", "validation", data_dir=data_dir)
    assert load_split("mmlu_chem", "test") == load_split("mmlu_chem", "test", data_dir=data_dir)
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "train"), ("cais/mmlu", "all", "test")]


def test_malformed_mirror_line(tmp_path):
    d = tmp_path / "allenai/openbookqa/main"
    d.mkdir(parents=True)
    good = {"id": "1", "question_stem": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
            "answerKey": "B"}
    (d / "validation.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(TaskError, match=r"validation.jsonl:2: invalid JSON"):
        load_split("obqa", "test", data_dir=str(tmp_path))
    (d / "validation.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "answerKey": "Z"}))
    with pytest.raises(TaskError, match=r"validation.jsonl:2: bad row \(answerKey 'Z'"):
        load_split("obqa", "test", data_dir=str(tmp_path))


OK = '{"question": "2+2?", "choices": ["3", "4"], "answer": 1}'


@pytest.mark.parametrize("text,error", [
    (OK + "\n{bad json", "mine.jsonl:2: invalid JSON"),
    (OK + '\n{"question": "q", "choices": ["a", "b"]}', "mine.jsonl:2: missing field 'answer'"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "1"}', "mine.jsonl:1: answer must be an integer"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}', "mine.jsonl:1: answer must be an integer"),
    (OK + '\n\n{"question": "q", "choices": ["a", "b"], "answer": 2}', "mine.jsonl:3: answer 2 is out of range"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "mine.jsonl:1: choices must have 2 to 26 entries"),
    ('["q", ["a", "b"], 0]', "mine.jsonl:1: expected a JSON object"),
    ('{"id": "x", ' + OK[1:] + '\n{"id": "x", ' + OK[1:], "mine.jsonl:2: duplicate id 'x'"),
    ("\n", "mine.jsonl is empty"),
])
def test_custom_file_errors(tmp_path, text, error):
    with pytest.raises(TaskError) as err:
        load_split(f"custom:{write(tmp_path, text)}", "test")
    assert error in str(err.value) and "\n" not in str(err.value)


def mc_rows(n, prefix="q", ids=None):
    rows = [{"question": f"{prefix}{i}", "choices": ["a", "b", "c"], "answer": i % 3} for i in range(n)]
    for i, x in (ids or {}).items():
        rows[i]["id"] = x
    return rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    return path


def custom_dir(tmp_path, n_train=20, n_test=8, n_val=None, train_ids=None, test_ids=None, val_ids=None):
    d = tmp_path / "mydata"
    d.mkdir(exist_ok=True)
    write_rows(d / "train.jsonl", mc_rows(n_train, "train q", train_ids))
    write_rows(d / "test.jsonl", mc_rows(n_test, "test q", test_ids))
    if n_val is not None:
        write_rows(d / "validation.jsonl", mc_rows(n_val, "val q", val_ids))
    return d


def test_custom_file_is_evaluation_only(tmp_path):
    rows = mc_rows(20, ids={0: "first"})
    name = f"custom:{write_rows(tmp_path / 'mine.jsonl', rows)}"
    test = load_split(name, "test")
    assert ids(test) == ["first"] + [f"mine-{i}" for i in range(1, 20)]  # the whole file, in file order
    assert [e.label for e in test] == [i % 3 for i in range(20)]
    assert test[1].label_prompt == "Question: q1\nChoices:\nA. a\nB. b\nC. c\nAnswer:"
    assert load_split(name, "test", limit=3) == test[:3]
    check_task(name, "test")
    expected = (f"{name} is an evaluation-only file: it has only a test split, not {{}}; to train on your data "
                "give a directory custom:<dir> holding train.jsonl and test.jsonl (validation.jsonl optional)")
    for split in ("train", "validation"):
        for call in (lambda: load_split(name, split), lambda: check_task(name, (split,)), lambda: check_task(name)):
            with pytest.raises(TaskError) as err:
                call()
            assert str(err.value) in (expected.format("train"), expected.format(split))


def test_custom_dir_test_is_its_own_file(tmp_path):
    d = custom_dir(tmp_path, n_train=20, n_test=8, train_ids={0: "t0"}, test_ids={2: "x2"})
    name = f"custom:{d}"
    check_task(name)
    test = load_split(name, "test")
    # test = test.jsonl exactly, ids "<split file stem>-<index>" unless the row has one
    assert ids(test) == ["test-0", "test-1", "x2"] + [f"test-{i}" for i in range(3, 8)]
    assert [e.label_prompt.split("\n")[0] for e in test] == [f"Question: test q{i}" for i in range(8)]
    for seed in (0, 1, 5):
        train = load_split(name, "train", split_seed=seed)
        val = load_split(name, "validation", split_seed=seed)
        assert not (set(ids(train)) | set(ids(val))) & set(ids(test))  # no training/tuning row is scored
        assert all(e.label_prompt.startswith("Question: train q") for e in train + val)


def test_custom_dir_validation_held_out_when_absent(tmp_path):
    name = f"custom:{custom_dir(tmp_path, n_train=20, train_ids={0: 'first'})}"
    file_ids = ["first"] + [f"train-{i}" for i in range(1, 20)]
    train, val = load_split(name, "train", split_seed=5), load_split(name, "validation", split_seed=5)
    perm = np.random.default_rng(5).permutation(20)  # the same seeded rule as the hub tasks
    assert ids(val) == [file_ids[i] for i in perm[:2]] and ids(train) == [file_ids[i] for i in perm[2:]]
    assert not set(ids(train)) & set(ids(val)) and sorted(ids(train) + ids(val)) == sorted(file_ids)
    assert load_split(name, "validation", split_seed=5) == val  # deterministic
    assert set(ids(load_split(name, "validation", split_seed=6))) != set(ids(val))
    assert len(load_split(name, "validation", split_seed=5, val_fraction=0.25)) == 5
    assert load_split(name, "train", split_seed=5, limit=3) == train[:3]
    with pytest.raises(TaskError, match="the validation split would be empty"):
        load_split(name, "validation", val_fraction=0.01)


def test_custom_dir_uses_validation_file_when_present(tmp_path):
    name = f"custom:{custom_dir(tmp_path, n_train=20, n_val=6)}"
    check_task(name)
    for seed in (0, 3):  # split_seed/val_fraction do not apply: both files are used whole, in file order
        assert ids(load_split(name, "train", split_seed=seed, val_fraction=0.5)) == [f"train-{i}" for i in range(20)]
        assert ids(load_split(name, "validation", split_seed=seed)) == [f"validation-{i}" for i in range(6)]
    assert ids(load_split(name, "test")) == [f"test-{i}" for i in range(8)]


@pytest.mark.parametrize("missing", ["train.jsonl", "test.jsonl"])
def test_custom_dir_missing_file(tmp_path, missing):
    d = custom_dir(tmp_path, n_val=3)
    (d / missing).unlink()
    for call in (lambda: check_task(f"custom:{d}"), lambda: check_task(f"custom:{d}", "test"),
                 lambda: load_split(f"custom:{d}", "train"), lambda: load_split(f"custom:{d}", "test")):
        with pytest.raises(TaskError) as err:
            call()
        msg = str(err.value)
        assert f"has no {missing}" in msg and "train.jsonl and test.jsonl" in msg and "\n" not in msg


@pytest.mark.parametrize("where", ["train", "validation"])
def test_custom_dir_id_shared_with_test_is_refused(tmp_path, where):
    kw = {"train_ids": {4: "dup"}} if where == "train" else {"n_val": 3, "val_ids": {1: 7}}
    test_ids = {2: "dup"} if where == "train" else {5: "7"}  # ids compare as strings: 7 == "7"
    name = f"custom:{custom_dir(tmp_path, test_ids=test_ids, **kw)}"
    for call in (lambda: check_task(name), lambda: check_task(name, "train"),
                 lambda: load_split(name, "train"), lambda: load_split(name, "validation")):
        with pytest.raises(TaskError) as err:
            call()
        msg = str(err.value)
        assert f"is in both {where}.jsonl and test.jsonl" in msg and "remove those rows" in msg and "\n" not in msg
    assert len(load_split(name, "test")) == 8  # the test file alone is fine (e.g. as an OOD set)
    check_task(name, "test")


def test_custom_dir_bad_row_names_its_file(tmp_path):
    d = custom_dir(tmp_path, n_val=3)
    (d / "validation.jsonl").write_text(OK + '\n{"question": "q", "choices": ["a", "b"]}\n')
    with pytest.raises(TaskError, match=r"validation.jsonl:2: missing field 'answer'"):
        check_task(f"custom:{d}")
    check_task(f"custom:{d}", "test")  # only the files the requested splits need are read
    (d / "train.jsonl").write_text("")
    with pytest.raises(TaskError, match=r"train.jsonl is empty"):
        load_split(f"custom:{d}", "train")
