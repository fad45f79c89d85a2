"""Tiny labelled data of every task type, in the real files' formats (GLUE TSVs, CoNLL, GoEmotions), written by
tests: learnable in a few steps (the label follows from the words), small enough for seconds."""

from __future__ import annotations

from pathlib import Path

PEOPLE = ["John", "Mary", "Peter", "Anna"]
PLACES = ["Paris", "Berlin", "London", "Rome"]


def write_mrpc(folder: Path, rows: int = 40) -> Path:
    """GLUE MRPC layout (BOM, ``Quality``, ``#1 String``, ``#2 String``): pairs are paraphrases when both say
    the same thing."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        a = f"the {'cat' if i % 2 else 'dog'} sat on the mat number {i}"
        same = i % 3 != 0
        b = a.replace("sat", "was sitting") if same else f"a \"storm\" hit the coast on day {i}"
        lines.append(f"{int(same)}\t{i}\t{i + 1000}\t{a}\t{b}")
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    (folder / "train.tsv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join([header, *lines[::2]]) + "\n", encoding="utf-8")
    return folder


def write_stsb(folder: Path, rows: int = 40) -> Path:
    """GLUE STS-B layout: sentence pairs scored 0-5 (more shared words, higher score); quotes unbalanced."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    words = ["red", "blue", "green", "small", "large", "old"]
    lines = []
    for i in range(rows):
        shared = i % 6
        a = " ".join(words)
        b = " ".join(words[:shared] + ["\"x"] * (6 - shared))
        lines.append(f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{shared * 5 / 5:.3f}")
    (folder / "train.tsv").write_text("\n".join([header, *lines]) + "\n")
    (folder / "dev.tsv").write_text("\n".join([header, *lines[::2]]) + "\n")
    return folder


def conll_sentences(count: int) -> list[list[tuple[str, str]]]:
    """(word, IOB1 tag) sentences: names are people, capital cities are places."""
    sentences = []
    for i in range(count):
        person, place = PEOPLE[i % 4], PLACES[(i // 2) % 4]
        sentences.append([(person, "I-PER"), ("Smith", "I-PER"), ("went", "O"), ("to", "O"), (place, "I-LOC"),
                          ("yesterday", "O"), (".", "O")])
    return sentences


def write_conll(folder: Path, train: int = 40, test: int = 12) -> Path:
    """CoNLL-2003 layout (word POS chunk tag, IOB1, -DOCSTART- lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("eng.train", train), ("eng.testa", test)):
        lines = ["-DOCSTART- -X- O O", ""]
        for sentence in conll_sentences(count):
            lines += [f"{word} NNP I-NP {tag}" for word, tag in sentence] + [""]
        (folder / name).write_text("\n".join(lines))
    return folder


def write_goemotions(folder: Path, rows: int = 60) -> Path:
    """GoEmotions layout (no header; text, comma-separated label ids, id; emotions.txt): words name the labels."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["joy", "anger", "neutral"]
    (folder / "emotions.txt").write_text("\n".join(names))
    lines = []
    for i in range(rows):
        labels = [j for j in range(3) if (i >> j) & 1] or [2]
        text = " ".join(["so happy"] * (0 in labels) + ["furious"] * (1 in labels) + ["the report"] * (2 in labels))
        quoted = f"\"{text} \"\"really\"\"\"" if i % 5 == 0 else text
        lines.append(f"{quoted}\t{','.join(map(str, labels))}\tid{i}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    (folder / "dev.tsv").write_text("\n".join(lines[::2]) + "\n")
    return folder


# GLUE's other layouts: (header or None, row builder (i, text_a, text_b, label index) -> fields, label names).
GLUE_LAYOUTS = {
    "cola": (None, lambda i, a, b, y: [f"src{i}", str(y), "*" if y == 0 else "", a], None),
    "sst2": (["sentence", "label"], lambda i, a, b, y: [a, str(y)], None),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            lambda i, a, b, y: [str(i), str(2 * i), str(2 * i + 1), a, b, str(y)], None),
    "qnli": (["index", "question", "sentence", "label"], lambda i, a, b, y: [str(i), a, b, None],
             ["entailment", "not_entailment"]),
    "rte": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y: [str(i), a, b, None],
            ["entailment", "not_entailment"]),
    "wnli": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y: [str(i), a, b, str(y)], None),
    "mnli": (["index", "sentence1", "sentence2", "gold_label"], lambda i, a, b, y: [str(i), a, b, None],
             ["entailment", "neutral", "contradiction"]),
}


def write_glue(folder: Path, task: str, rows: int = 30) -> Path:
    """A GLUE task folder in that task's own layout (MRPC and STS-B: :func:`write_mrpc`, :func:`write_stsb`):
    the label follows from the first sentence's wording, so a few steps learn it."""
    if task == "mrpc":
        return write_mrpc(folder, rows)
    if task == "stsb":
        return write_stsb(folder, rows)
    header, build, names = GLUE_LAYOUTS[task]
    classes = len(names) if names else 2
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        y = i % classes
        a = f"{['good', 'bad', 'odd'][y]} sentence number {i} with a \"quote"
        fields = build(i, a, f"another sentence {i}", y)
        lines.append("\t".join(names[y] if f is None else f for f in fields))
    head = ["\t".join(header)] if header else []
    (folder / "train.tsv").write_text("\n".join(head + lines) + "\n")
    devs = ("dev_matched", "dev_mismatched") if task == "mnli" else ("dev",)
    for dev in devs:
        (folder / f"{dev}.tsv").write_text("\n".join(head + lines[::2]) + "\n")
    return folder

