"""The built-in offline zero-shot tasks, generated from the evaluation documents.

No registry package ships HellaSwag, ARC or BoolQ data, so offline the ``zeroshot`` evaluator runs two
four-way multiple-choice tasks built from the evaluation text (by default the Austen evaluation books,
which calibration never sees):

``lsaf_next_sentence``
    Context: 2–3 consecutive sentences. Choices: the sentence that really follows (in the same
    paragraph) and three sentences from elsewhere in the same document, picked for a length close to
    the true one's so that neither the summed nor the length-normalised log-likelihood favours it.
``lsaf_last_word``
    LAMBADA-like: a passage of 2–3 sentences without its last word. Choices: that word and three other
    words of the same document with about the same frequency (nearby frequency ranks) and the same
    capitalisation.

Chance is 25% on both. Generation is deterministic in (documents, ``n_examples``, ``seed``); the files
go into ``cache_dir()/tasks/<hash of those and of the generator version>/`` as lm-eval YAML + JSONL and
are written atomically (a temporary folder renamed into place). Examples are stored in a random order,
so lm-eval's ``limit`` (which takes the first N) still samples the whole text.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lsa_framework.data import cache_dir
from lsa_framework.errors import BadInputError
from lsa_framework.storage.atomic import make_folder, staged_folder

#: Bump when the generated examples change, so that old caches are not reused.
GENERATOR_VERSION = 1

NEXT_SENTENCE = "lsaf_next_sentence"
LAST_WORD = "lsaf_last_word"
#: The tasks :func:`offline_task_dir` writes, in order.
OFFLINE_TASKS: tuple[str, ...] = (NEXT_SENTENCE, LAST_WORD)
N_CHOICES = 4

# A sentence ends at . ! or ?, optionally followed by closing quotes or brackets, then whitespace.
_END = re.compile(r"[.!?][\"'”’)\]]*\s+")
_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)\]]*$")
_CLOSING = tuple("\"'”’)]")
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "dr.", "st.", "esq.", "messrs.", "col.", "capt.", "rev.", "lt.", "gen.", "no.", "vol.", "ch."}
)
# A word: a letter, then letters or digits (apostrophes and hyphens split words).
_WORD = re.compile(r"[^\W\d_][^\W_]*")
# The last word of a passage: after whitespace, before the final punctuation (which may be a
# separate token, as in pre-tokenised text).
_LAST_WORD = re.compile(r"\s([^\W\d_][^\W_]*) ?[.!?][\"'”’)\]]*$")

SENTENCE_WORDS = (5, 40)  # length range of an answer or distractor sentence, in words
CONTEXT_MAX_WORDS = 100  # longest context of a next-sentence example
PASSAGE_WORDS = (15, 100)  # length range of a last-word passage
DISTANCE = 10  # a distractor sentence is at least this many sentences away from the answer
LENGTH_POOL = 30  # distractor sentences: the 3 closest in length out of this many random ones
RANK_WINDOW = 20  # distractor words: within this many frequency ranks of the true word


@dataclass(frozen=True)
class Sentence:
    text: str
    paragraph: int
    words: int


def split_sentences(document: str) -> list[Sentence]:
    """Sentences of a document, in order; paragraphs are separated by blank lines.

    A sentence ends at ``. ! ?`` (plus closing quotes) followed by whitespace, except after a title
    such as ``Mr.``, or when the next piece starts in lower case after ``!``, ``?`` or a closing quote
    (``"Oh!" cried Anne``).
    """
    sentences: list[Sentence] = []
    for index, paragraph in enumerate(re.split(r"\n\s*\n", document)):
        text = " ".join(paragraph.split())
        if not text:
            continue
        pieces: list[str] = []
        start = 0
        for match in _END.finditer(text):
            pieces.append(text[start : match.end()].strip())
            start = match.end()
        if start < len(text):
            pieces.append(text[start:].strip())
        merged: list[str] = []
        for piece in pieces:
            if merged and _continues(merged[-1], piece):
                merged[-1] = f"{merged[-1]} {piece}"
            else:
                merged.append(piece)
        sentences.extend(Sentence(s, index, len(s.split())) for s in merged)
    return sentences


def _continues(previous: str, piece: str) -> bool:
    if previous.split()[-1].lower() in _ABBREVIATIONS:
        return True
    return piece[:1].islower() and (previous.endswith(_CLOSING) or previous[-1] in "!?")


def _is_full_sentence(sentence: Sentence) -> bool:
    low, high = SENTENCE_WORDS
    return low <= sentence.words <= high and bool(_ENDS_SENTENCE.search(sentence.text))


def _shuffled_choices(answer: str, distractors: list[str], rng: random.Random) -> dict[str, Any]:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"choices": choices, "label": choices.index(answer)}


def next_sentence_examples(documents: list[str], n_examples: int, seed: int) -> list[dict[str, Any]]:
    """Pick the true next sentence among four; see the module docstring."""
    rng = random.Random(f"{NEXT_SENTENCE}:{seed}")
    texts = [split_sentences(document) for document in documents]
    usable = [[i for i, s in enumerate(sentences) if _is_full_sentence(s)] for sentences in texts]
    positions = [
        (d, i)
        for d, sentences in enumerate(texts)
        for i in usable[d]
        if i >= 3 and sentences[i - 1].paragraph == sentences[i].paragraph
    ]
    rng.shuffle(positions)
    examples: list[dict[str, Any]] = []
    for d, i in positions:
        if len(examples) >= n_examples:
            break
        sentences = texts[d]
        k = rng.choice((2, 3))
        context = " ".join(s.text for s in sentences[i - k : i])
        if len(context.split()) > CONTEXT_MAX_WORDS:
            continue
        answer = sentences[i].text
        far = [j for j in usable[d] if abs(j - i) > DISTANCE]
        pool = rng.sample(far, min(LENGTH_POOL, len(far)))
        pool.sort(key=lambda j: (abs(len(sentences[j].text) - len(answer)), j))
        distractors: list[str] = []
        for j in pool:
            text = sentences[j].text
            if text != answer and text not in distractors and text not in context:
                distractors.append(text)
            if len(distractors) == N_CHOICES - 1:
                break
        if len(distractors) < N_CHOICES - 1:
            continue
        examples.append({"context": context, **_shuffled_choices(answer, distractors, rng)})
    return examples


def _ranked_vocabulary(document: str, rng: random.Random) -> tuple[dict[bool, list[str]], dict[str, int]]:
    """Words of 2+ characters by falling frequency, split by capitalisation; ties in a seeded random order."""
    counts = Counter(_WORD.findall(document))
    words = sorted(w for w in counts if len(w) >= 2)
    tie = {w: rng.random() for w in words}
    ranked: dict[bool, list[str]] = {True: [], False: []}
    for word in sorted(words, key=lambda w: (-counts[w], tie[w])):
        ranked[word[0].isupper()].append(word)
    rank = {w: r for group in ranked.values() for r, w in enumerate(group)}
    return ranked, rank


def last_word_examples(documents: list[str], n_examples: int, seed: int) -> list[dict[str, Any]]:
    """Pick a passage's true last word among four; see the module docstring."""
    rng = random.Random(f"{LAST_WORD}:{seed}")
    texts = [split_sentences(document) for document in documents]
    vocabularies = [_ranked_vocabulary(document, rng) for document in documents]
    positions = [
        (d, i) for d, sentences in enumerate(texts) for i, s in enumerate(sentences) if _LAST_WORD.search(s.text)
    ]
    rng.shuffle(positions)
    low, high = PASSAGE_WORDS
    examples: list[dict[str, Any]] = []
    for d, i in positions:
        if len(examples) >= n_examples:
            break
        sentences = texts[d]
        k = rng.choice((1, 2))  # sentences before the one whose last word is asked for
        if i < k or sentences[i - k].paragraph != sentences[i].paragraph:
            continue
        passage = " ".join(s.text for s in sentences[i - k : i + 1])
        match = _LAST_WORD.search(passage)
        if match is None or not low <= len(passage.split()) <= high:
            continue
        word = match.group(1)
        ranked, rank = vocabularies[d]
        group = ranked[word[0].isupper()]
        if len(word) < 2 or word not in rank:
            continue
        r = rank[word]
        window = [w for w in group[max(0, r - RANK_WINDOW) : r + RANK_WINDOW + 1] if w.lower() != word.lower()]
        unique = list({w.lower(): w for w in window}.values())
        if len(unique) < N_CHOICES - 1:
            continue
        distractors = rng.sample(unique, N_CHOICES - 1)
        context = passage[: match.start(1)].rstrip()
        examples.append({"context": context, **_shuffled_choices(word, distractors, rng)})
    return examples


GENERATORS = {NEXT_SENTENCE: next_sentence_examples, LAST_WORD: last_word_examples}


def _task_yaml(name: str, data_file: Path, hf_cache: Path, count: int) -> dict[str, Any]:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(hf_cache)},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": float(GENERATOR_VERSION), "examples": count},
    }


def _version_hash(documents: list[str], n_examples: int, seed: int) -> str:
    digest = hashlib.sha256(f"lsaf-tasks:{GENERATOR_VERSION}:{n_examples}:{seed}:{len(documents)}".encode())
    for document in documents:
        digest.update(hashlib.sha256(document.encode("utf-8")).digest())
    return digest.hexdigest()[:16]


def _complete(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() and all((folder / f"{n}.yaml").is_file() for n in OFFLINE_TASKS)


def offline_task_dir(documents: list[str], n_examples: int = 500, seed: int = 0, root: Path | None = None) -> Path:
    """Generate (once) the offline tasks from ``documents``; return the folder to pass as lm-eval's include_path.

    ``root`` defaults to ``cache_dir() / "tasks"``. Each task has up to ``n_examples`` examples (fewer
    when the text is short); a task the text yields no example for is a :class:`BadInputError`.
    """
    if n_examples < 1:
        raise ValueError("n_examples must be positive")
    root = root if root is not None else cache_dir() / "tasks"
    folder = root / _version_hash(documents, n_examples, seed)
    if _complete(folder):
        return folder
    make_folder(root)

    def replace(existing: Path) -> None:
        """An incomplete task folder may be replaced only if everything in it is what lsaf writes there."""
        ours = {"manifest.json", "hf_datasets", *(f"{n}.{ext}" for n in OFFLINE_TASKS for ext in ("yaml", "jsonl"))}
        if not existing.is_dir() or existing.is_symlink():
            raise BadInputError(f"{existing} is not a folder lsaf wrote; move it away to make the offline tasks.")
        foreign = sorted(e.name for e in existing.iterdir() if e.name not in ours)
        if foreign:
            raise BadInputError(
                f"{existing} holds files lsaf did not write ({', '.join(foreign[:3])}); move it away so the offline "
                "tasks can be generated there."
            )
        # lsaf's own, left incomplete by an interrupted writer: staged_folder moves it aside and removes it

    with staged_folder(folder, lambda _tmp: None, replace) as temporary:
        counts: dict[str, int] = {}
        for name, generate in GENERATORS.items():
            examples = generate(documents, n_examples, seed)
            if not examples:
                raise BadInputError(
                    f"The evaluation text is too short to build the offline zero-shot task {name} "
                    f"({sum(len(d) for d in documents)} characters); evaluate on more text or name other "
                    "tasks with --eval-opt zeroshot.tasks=..."
                )
            counts[name] = len(examples)
            with open(temporary / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for example in examples:
                    handle.write(json.dumps(example, ensure_ascii=False) + "\n")
            spec = _task_yaml(name, folder / f"{name}.jsonl", folder / "hf_datasets", len(examples))
            (temporary / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        manifest = {"generator_version": GENERATOR_VERSION, "n_examples": n_examples, "seed": seed, "tasks": counts}
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder
