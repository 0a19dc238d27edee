"""The ``zeroshot`` evaluator against a direct log-likelihood computation, and the offline task generator."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lsa_framework import registry
from lsa_framework.data.tasks import LAST_WORD, NEXT_SENTENCE, OFFLINE_TASKS, offline_task_dir, split_sentences
from lsa_framework.errors import BadInputError
from lsa_framework.evaluators.zeroshot import PAPER_TASKS, ZeroShotEvaluator, ZeroShotOptions, expand_tasks
from lsa_framework.types import EvalContext
from tests.conftest import WORDS, make_text, make_tiny_llama, make_tokenizer


class Documents:
    """A stand-in for a dataset plugin."""

    def __init__(self, documents: list[str]) -> None:
        self._documents = documents

    def documents(self, split: str) -> list[str]:
        assert split == "evaluation"
        return self._documents


def sentence_documents(seed: int = 3) -> list[str]:
    """conftest's Markov text cut into sentences (ending in the "." word) and paragraphs."""
    rng = random.Random(seed)
    documents = []
    for text in make_text(3, 1200, seed=seed):
        words = [w for w in text.split() if w != "."]
        sentences, start = [], 0
        while start < len(words) - 8:
            end = start + rng.randint(6, 14)
            sentences.append(" ".join(words[start:end]) + " .")
            start = end
        paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
        documents.append("\n\n".join(paragraphs))
    return documents


def write_task(folder: Path, name: str, examples: list[dict[str, Any]]) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "hf")},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def word_examples(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "context": " ".join(rng.choices(WORDS, k=rng.randint(3, 8))),
            "choices": [" ".join(rng.choices(WORDS, k=rng.randint(1, 3))) for _ in range(4)],
            "label": rng.randrange(4),
        }
        for _ in range(n)
    ]


def direct_scores(model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> tuple[float, float]:
    """acc and acc_norm the way lm-eval defines them, computed here with plain torch.

    lm-eval scores the continuation " " + choice (target_delimiter " ") after the context: it
    tokenizes context + " " + choice and takes the tokens past those of the context alone.
    acc_norm divides each choice's log-likelihood by the choice's length in characters.
    """
    correct = correct_norm = 0
    for example in examples:
        context_ids = tokenizer(example["context"])["input_ids"]
        scores = []
        for choice in example["choices"]:
            ids = tokenizer(example["context"] + " " + choice)["input_ids"]
            assert ids[: len(context_ids)] == context_ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            targets = torch.tensor(ids[len(context_ids) :])
            scores.append(float(logprobs[len(context_ids) - 1 :].gather(1, targets[:, None]).sum()))
        normed = [s / len(c) for s, c in zip(scores, example["choices"], strict=True)]
        for values in (scores, normed):  # no near-ties, so the comparison below is not fragile
            top = sorted(values, reverse=True)
            assert top[0] - top[1] > 1e-4
        correct += int(max(range(4), key=lambda i: scores[i]) == example["label"])
        correct_norm += int(max(range(4), key=lambda i: normed[i]) == example["label"])
    return correct / len(examples), correct_norm / len(examples)


def test_registered_and_aliases() -> None:
    assert registry.lookup("evaluators", "zeroshot").cls is ZeroShotEvaluator
    assert ZeroShotOptions().tasks == list(OFFLINE_TASKS)
    assert expand_tasks(["paper", "boolq", "offline"]) == [*PAPER_TASKS, *OFFLINE_TASKS]
    assert ZeroShotOptions(tasks="a, b").tasks == ["a", "b"]  # as --eval-opt gives it


def test_accuracy_matches_direct_computation(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_llama(), make_tokenizer()
    first, second = word_examples(10, seed=1), word_examples(10, seed=2)
    write_task(tmp_path, "tiny_mc_a", first)
    write_task(tmp_path, "tiny_mc_b", second)

    evaluator = ZeroShotEvaluator(ZeroShotOptions(tasks=["tiny_mc_a", "tiny_mc_b"], include_path=[tmp_path]))
    metrics = evaluator.evaluate(model, tokenizer, EvalContext(config=None, dataset=None))

    acc_a, norm_a = direct_scores(model, tokenizer, first)
    acc_b, norm_b = direct_scores(model, tokenizer, second)
    assert metrics["zeroshot.tiny_mc_a.acc"] == pytest.approx(acc_a)
    assert metrics["zeroshot.tiny_mc_a.acc_norm"] == pytest.approx(norm_a)
    assert metrics["zeroshot.tiny_mc_b.acc"] == pytest.approx(acc_b)
    assert metrics["zeroshot.tiny_mc_b.acc_norm"] == pytest.approx(norm_b)
    assert metrics["zeroshot.mean"] == pytest.approx((acc_a + acc_b) / 2)
    assert acc_a != norm_a or acc_b != norm_b  # choices of different lengths: the two metrics differ somewhere


def test_split_sentences_keeps_titles_and_dialogue_tags() -> None:
    text = 'Mr. Elliot came in. "Oh!" cried Anne, "you are here?" She smiled.\n\nA new paragraph!'
    assert [(s.text, s.paragraph) for s in split_sentences(text)] == [
        ("Mr. Elliot came in.", 0),
        ('"Oh!" cried Anne, "you are here?"', 0),
        ("She smiled.", 0),
        ("A new paragraph!", 1),
    ]


def read_examples(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


def test_offline_tasks_are_deterministic_and_well_formed(tmp_path: Path) -> None:
    documents = sentence_documents()
    first = offline_task_dir(documents, n_examples=40, seed=0, root=tmp_path / "a")
    second = offline_task_dir(documents, n_examples=40, seed=0, root=tmp_path / "b")
    other_seed = offline_task_dir(documents, n_examples=40, seed=1, root=tmp_path / "a")
    assert first.name == second.name != other_seed.name
    assert offline_task_dir(documents, n_examples=40, seed=0, root=tmp_path / "a") == first  # cached
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")]

    flat = [" ".join(d.split()) for d in documents]
    for name in OFFLINE_TASKS:
        examples = read_examples(first, name)
        assert examples == read_examples(second, name)
        assert examples != read_examples(other_seed, name)
        assert len(examples) == 40
        assert json.loads((first / "manifest.json").read_text())["tasks"][name] == 40
        labels = set()
        for example in examples:
            choices, label = example["choices"], example["label"]
            assert len(choices) == 4 and 0 <= label < 4
            assert choices.count(choices[label]) == 1  # the true answer exactly once
            labels.add(label)
            # the labelled choice really continues the context in the source text
            assert any(f"{example['context']} {choices[label]}" in d for d in flat)
            if name == LAST_WORD:
                assert len({c.lower() for c in choices}) == 4 and all(" " not in c for c in choices)
        assert labels == {0, 1, 2, 3}  # positions are shuffled
    spec = yaml.safe_load((first / f"{NEXT_SENTENCE}.yaml").read_text())
    assert spec["task"] == NEXT_SENTENCE and spec["output_type"] == "multiple_choice"


def test_offline_tasks_run_in_lm_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSAF_CACHE", str(tmp_path))
    model, tokenizer = make_tiny_llama(), make_tokenizer()
    evaluator = ZeroShotEvaluator(ZeroShotOptions(limit=3, task_examples=20))
    metrics = evaluator.evaluate(model, tokenizer, EvalContext(config=None, dataset=Documents(sentence_documents())))
    assert set(metrics) == {f"zeroshot.{t}.{m}" for t in OFFLINE_TASKS for m in ("acc", "acc_norm")} | {"zeroshot.mean"}
    for task in OFFLINE_TASKS:  # 3 examples each
        for metric in ("acc", "acc_norm"):
            value = metrics[f"zeroshot.{task}.{metric}"]
            assert 0.0 <= value <= 1.0 and value * 3 == pytest.approx(round(value * 3))
    accs = [metrics[f"zeroshot.{t}.acc"] for t in OFFLINE_TASKS]
    assert metrics["zeroshot.mean"] == pytest.approx(sum(accs) / 2)
    assert (tmp_path / "tasks").is_dir()


def test_unknown_task_is_a_one_sentence_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as caught:
        ZeroShotEvaluator(ZeroShotOptions(tasks=["lsaf_next_sentense"]))
    message = str(caught.value)
    assert "did you mean 'lsaf_next_sentence'" in message and "network" in message
    assert message.count(". ") == 0 and message.endswith(".")
    with pytest.raises(BadInputError, match="not a folder"):
        ZeroShotEvaluator(ZeroShotOptions(tasks=["x"], include_path=[tmp_path / "missing"]))


def test_an_incomplete_task_folder_is_replaced_only_when_lsaf_wrote_everything_in_it(tmp_path: Path) -> None:
    documents = sentence_documents()
    folder = offline_task_dir(documents, n_examples=40, seed=0, root=tmp_path)
    (folder / "manifest.json").unlink()  # an interrupted writer: lsaf's own files, incomplete
    assert offline_task_dir(documents, n_examples=40, seed=0, root=tmp_path) == folder
    assert (folder / "manifest.json").is_file()
    (folder / "manifest.json").unlink()
    (folder / "my-notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="lsaf did not write"):
        offline_task_dir(documents, n_examples=40, seed=0, root=tmp_path)
    assert (folder / "my-notes.txt").read_text() == "mine"
