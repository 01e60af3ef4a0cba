"""The bundled synthetic task: "name N things of a category", with hidden preferred items and an exact judge.

Why this task: a 0.26M-parameter model learns it in a minute or two on a CPU, and each RLHF stage has a
measurable, separate effect.

* **Prompts** ask for one to three items of a category, in one of six phrasings::

      "Name two fruits."   "List three colours, please."   "Can you give me one animal?"

  6 categories x 3 counts x 6 phrasings = 108 prompts. For each (category, count) exactly one phrasing is held
  out (which one depends on the seed): 18 held-out prompts, 90 training prompts, disjoint as strings.
* **A well-formed answer** repeats the count and the category, then lists that many distinct items of the
  category, comma separated, ending with a full stop: ``"Two fruits: mango, plum."``. The generated data lists
  items in alphabetical order (the judge accepts any order): a canonical order turns "no repeats" into a rule a
  two-layer model learns from the previous item alone, and makes an SFT model's greedy answer the alphabetically
  first items rather than a repeated one.
* **Preferred items**: each category has nine items, three of which are preferred (``PREFERRED`` below;
  e.g. fruits: grape, mango, plum), chosen away from the alphabetical start so that greedy SFT answers are mostly
  not preferred. Nothing in a prompt says so: only preference data reveals it.
* **SFT data** (``sft_dataset``) holds well-formed answers whose items are drawn uniformly, so about a third are
  preferred: supervised fine-tuning teaches the *format*.
* **Preference pairs** (``preference_dataset``): chosen and rejected are both well-formed; chosen lists more
  preferred items than rejected. Reward modelling, DPO and PPO teach *which* well-formed answer is preferred.

The judge (see :func:`score_response`) gives 0 to unparseable text, 0.5 to any well-formed answer and the other 0.5
for the share of preferred items: a random-init model scores ~0, a model that learned the format ~0.67, a model
that always picks preferred items 1.0.

Everything is deterministic from the seed: each method draws from its own generator seeded by ``(seed, purpose)``,
so calls do not disturb one another and repeated calls return the same rows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from typing import Any

from datasets import Dataset


@dataclass(frozen=True)
class Category:
    singular: str
    plural: str
    items: tuple[str, ...]
    preferred: frozenset[str]
    spellings: tuple[str, ...] = ()  # other accepted spellings of the noun (singular and plural)

    def nouns(self) -> set[str]:
        return {self.singular, self.plural, *self.spellings}


def _category(
    singular: str, plural: str, items: str, preferred: str, spellings: tuple[str, ...] = ()
) -> Category:
    return Category(singular, plural, tuple(items.split()), frozenset(preferred.split()), spellings)


CATEGORIES: tuple[Category, ...] = (
    _category("fruit", "fruits", "apple banana cherry grape lemon mango peach pear plum", "grape mango plum"),
    _category(
        "colour",
        "colours",
        "blue brown green orange pink purple red white yellow",
        "green purple white",
        spellings=("color", "colors"),
    ),
    _category("animal", "animals", "cat dog fox horse otter owl rabbit tiger zebra", "otter owl zebra"),
    _category(
        "vegetable",
        "vegetables",
        "cabbage carrot celery leek onion potato pumpkin radish spinach",
        "leek pumpkin radish",
    ),
    _category(
        "tool", "tools", "chisel drill hammer ladder pliers rake saw shovel wrench", "hammer rake wrench"
    ),
    _category(
        "sport",
        "sports",
        "boxing cricket cycling football golf hockey rowing rugby tennis",
        "cycling rowing tennis",
    ),
)
PREFERRED: dict[str, frozenset[str]] = {c.plural: c.preferred for c in CATEGORIES}
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
PHRASINGS: tuple[str, ...] = (
    "Name {n} {noun}.",
    "List {n} {noun}, please.",
    "Can you give me {n} {noun}?",
    "Tell me {n} {noun}.",
    "Please suggest {n} {noun}.",
    "Write down {n} {noun}.",
)
END_TOKEN = "<|end|>"

# Judge weights: five structural checks of 1/10 each, and 1/2 for the share of preferred items.
_CHECK_WEIGHT = Fraction(1, 10)
_PREFERRED_WEIGHT = Fraction(1, 2)
_ANSWER_RE = re.compile(
    r"^(?P<count>[a-z]+|\d+) (?P<noun>[a-z]+): (?P<items>[a-z][a-z -]*(?:, [a-z][a-z -]*)*)\.$"
)
_SPECIAL_RE = re.compile(r"<\|[a-z]+\|>")


@dataclass(frozen=True)
class PromptSpec:
    category: int
    count: int
    phrasing: int

    @property
    def text(self) -> str:
        cat = CATEGORIES[self.category]
        noun = cat.singular if self.count == 1 else cat.plural
        return PHRASINGS[self.phrasing].format(n=COUNT_WORDS[self.count - 1], noun=noun)


def _all_specs() -> list[PromptSpec]:
    return [
        PromptSpec(c, k, p)
        for c in range(len(CATEGORIES))
        for k in range(1, len(COUNT_WORDS) + 1)
        for p in range(len(PHRASINGS))
    ]


def format_answer(category: Category, items: Sequence[str]) -> str:
    """The well-formed answer listing ``items``: ``"Two fruits: mango, cherry."``."""
    noun = category.singular if len(items) == 1 else category.plural
    return f"{COUNT_WORDS[len(items) - 1].capitalize()} {noun}: {', '.join(items)}."


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


class SyntheticTask:
    """The bundled task (see the module docstring); every method is deterministic given ``seed``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        specs = _all_specs()
        held = [s for s in specs if (s.category + s.count - 1 + s.phrasing + seed) % len(PHRASINGS) == 0]
        self.heldout_specs: list[PromptSpec] = held
        self.train_specs: list[PromptSpec] = [s for s in specs if s not in held]

    def _rng(self, purpose: str) -> random.Random:
        return random.Random(f"rlhf-synthetic/{self.seed}/{purpose}")

    def _specs(self, split: str) -> list[PromptSpec]:
        if split == "train":
            return self.train_specs
        if split == "heldout":
            return self.heldout_specs
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")

    # ---- datasets -------------------------------------------------------------------------------------------
    def sft_dataset(self, n: int) -> Dataset:
        """``n`` rows, column ``messages`` = [user prompt, assistant answer]; items drawn uniformly, listed in
        alphabetical order."""
        rng = self._rng("sft")
        rows = []
        for _ in range(n):
            spec = rng.choice(self.train_specs)
            cat = CATEGORIES[spec.category]
            answer = format_answer(cat, sorted(rng.sample(cat.items, spec.count)))
            rows.append(_user(spec.text) + _assistant(answer))
        return Dataset.from_dict({"messages": rows})

    def preference_dataset(self, n: int) -> Dataset:
        """``n`` pairs: ``prompt`` = [user], ``chosen`` / ``rejected`` = [assistant], both well-formed.

        The chosen answer lists ``a`` preferred items and the rejected one ``b < a`` (``a`` uniform in
        1..count, ``b`` uniform in 0..a-1); the other items are drawn from the category's non-preferred items;
        items in alphabetical order.
        """
        rng = self._rng("preference")
        prompts, chosen, rejected = [], [], []
        for _ in range(n):
            spec = rng.choice(self.train_specs)
            cat = CATEGORIES[spec.category]
            n_good = rng.randint(1, spec.count)
            n_good_rejected = rng.randint(0, n_good - 1)
            prompts.append(_user(spec.text))
            chosen.append(_assistant(format_answer(cat, self._mixed_items(rng, cat, spec.count, n_good))))
            rejected.append(
                _assistant(format_answer(cat, self._mixed_items(rng, cat, spec.count, n_good_rejected)))
            )
        return Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})

    @staticmethod
    def _mixed_items(rng: random.Random, cat: Category, count: int, n_preferred: int) -> list[str]:
        good = sorted(cat.preferred)
        other = [item for item in cat.items if item not in cat.preferred]
        return sorted(rng.sample(good, n_preferred) + rng.sample(other, count - n_preferred))

    def prompt_dataset(self, n: int, split: str = "heldout") -> Dataset:
        """``n`` prompts (``prompt`` = [user]) of ``split``: all distinct prompts of the split (shuffled) first,
        then again in the same order while ``n`` exceeds their number (18 held-out, 90 training prompts)."""
        specs = list(self._specs(split))
        self._rng(f"prompts/{split}").shuffle(specs)
        return Dataset.from_dict({"prompt": [_user(specs[i % len(specs)].text) for i in range(n)]})

    def corpus(self) -> list[str]:
        """Text for training the tokenizer: general English plus every prompt and item of the task, rendered as
        answers. Independent of the seed, so every task instance shares one tokenizer."""
        general = resources.files("rlhf_core.data").joinpath("assets/general_english.txt").read_text("utf-8")
        lines = [line for line in general.splitlines() if line.strip()]
        lines += [spec.text for spec in _all_specs()]
        rng = random.Random("rlhf-synthetic/corpus")
        for cat in CATEGORIES:
            lines += [format_answer(cat, [item]) for item in cat.items]
            lines += [format_answer(cat, rng.sample(cat.items, k)) for k in (2, 3) for _ in range(6)]
        return lines

    # ---- judge ----------------------------------------------------------------------------------------------
    def judge(self, prompt: str | Sequence[Mapping[str, Any]], response: str) -> float:
        """Ground-truth score in [0, 1] of ``response`` to ``prompt`` (see :func:`score_response`)."""
        return float(sum(score_response(prompt, response).values(), Fraction(0)))

    def judge_batch(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """``judge`` over pairs; the signature of a PPO ``reward_fn(prompts, responses)``."""
        if len(prompts) != len(responses):
            raise ValueError(f"judge_batch: {len(prompts)} prompts but {len(responses)} responses")
        return [self.judge(p, r) for p, r in zip(prompts, responses)]


def judge_responses(prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    """``SyntheticTask().judge_batch``: usable directly as a PPO ``reward_fn``."""
    return SyntheticTask().judge_batch(prompts, responses)


# ---- scoring ------------------------------------------------------------------------------------------------
def parse_prompt(prompt: str | Sequence[Mapping[str, Any]]) -> tuple[Category, int]:
    """The (category, count) a task prompt asks for.

    ``prompt`` is the user text, a message list (its last user message is used) or a chat-template rendering
    (the text after the last ``<|user|>``). Raises ``ValueError`` for a prompt that is not from this task.
    """
    text = _prompt_text(prompt)
    words = re.findall(r"[a-z]+|\d+", text.lower())
    cats = [c for c in CATEGORIES if c.nouns() & set(words)]
    counts = {_count_value(w) for w in words} - {None}
    if len(cats) != 1 or len(counts) != 1:
        raise ValueError(
            f"judge: prompt {text!r} does not name exactly one category ({', '.join(c.plural for c in CATEGORIES)}) "
            "and one count (one to three); the judge scores prompts of the synthetic task only"
        )
    return cats[0], counts.pop()


def _prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(prompt, str):
        if "<|user|>" in prompt:
            prompt = prompt.rsplit("<|user|>", 1)[1].split(END_TOKEN, 1)[0]
        return _SPECIAL_RE.sub(" ", prompt).strip()
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError(f"judge: prompt message list {list(prompt)!r} has no user message with text content")
    return users[-1]


def _count_value(word: str) -> int | None:
    if word in COUNT_WORDS:
        return COUNT_WORDS.index(word) + 1
    if word.isdigit() and 1 <= int(word) <= len(COUNT_WORDS):
        return int(word)
    return None


def clean_response(response: str) -> str:
    """The answer text the judge reads: cut at the first ``<|end|>``, other special tokens removed, whitespace
    collapsed and stripped, lower-cased."""
    text = response.split(END_TOKEN, 1)[0]
    text = _SPECIAL_RE.sub(" ", text)
    return " ".join(text.split()).lower()


def score_response(prompt: str | Sequence[Mapping[str, Any]], response: str) -> dict[str, Fraction]:
    """The judge's score of ``response`` to ``prompt``, as exact parts that sum to the score in [0, 1].

    The response is cleaned (:func:`clean_response`: cut at ``<|end|>``, whitespace collapsed,
    case-insensitive). If it does not match ``<count> <noun>: <item>, <item>, ... .`` (items are words, comma +
    space separated, a final full stop) the score is 0 (all parts 0). Otherwise, with ``k`` the count asked for
    and ``items`` the listed items:

    ==============  ======  ===================================================================================
    part            weight  earned when
    ==============  ======  ===================================================================================
    ``format``      0.1     the response parses (always, past the gate above)
    ``header``      0.1     ``<count>`` is ``k`` (word or digit) and ``<noun>`` names the asked category
                            (singular or plural; "color" accepted for "colour")
    ``count``       0.1     ``len(items) == k``
    ``category``    0.1     every item belongs to the category
    ``distinct``    0.1     no item is repeated
    ``preferred``   0.5     times ``|distinct preferred items listed| / max(k, len(items))``
    ==============  ======  ===================================================================================

    Examples for "Name two fruits." (preferred fruits: grape, mango, plum): "Two fruits: mango, plum." 1.0;
    "Two fruits: apple, mango." 0.75; "Two fruits: apple, pear." 0.5; "Two fruits: mango, mango." 0.65;
    "Three fruits: grape, mango, plum." 0.8 (header and count wrong, preferred 3/3); "mango and plum" 0.0.
    """
    cat, k = parse_prompt(prompt)
    parts = dict.fromkeys(("format", "header", "count", "category", "distinct", "preferred"), Fraction(0))
    match = _ANSWER_RE.match(clean_response(response))
    if match is None:
        return parts
    items = [item.strip() for item in match["items"].split(",")]
    parts["format"] = _CHECK_WEIGHT
    if _count_value(match["count"]) == k and match["noun"] in cat.nouns():
        parts["header"] = _CHECK_WEIGHT
    if len(items) == k:
        parts["count"] = _CHECK_WEIGHT
    if all(item in cat.items for item in items):
        parts["category"] = _CHECK_WEIGHT
    if len(set(items)) == len(items):
        parts["distinct"] = _CHECK_WEIGHT
    parts["preferred"] = _PREFERRED_WEIGHT * Fraction(len(set(items) & cat.preferred), max(k, len(items)))
    return parts
