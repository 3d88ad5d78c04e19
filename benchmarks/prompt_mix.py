"""A realistic mix of chat prompts whose answers differ in length for reasons of meaning: one-word
answers, yes/no, arithmetic, one-line facts, short lists, explanations and stories.

Nothing in a prompt states its answer's length in tokens, and every prompt gets the same generous
`max_tokens`: a predictor has to learn from history that "write a story about" runs long and
"what is the capital of" runs short. Each kind has several phrasings and many fillers, so the
held-out half of a trace holds prompts the predictor has never seen.

    from benchmarks.prompt_mix import prompt_mix
    prompts = prompt_mix(200, seed=0, long_share=0.2)   # [(kind, text), ...]
"""

from __future__ import annotations

import random

COUNTRIES = [
    "France",
    "Germany",
    "Italy",
    "Spain",
    "Portugal",
    "Japan",
    "China",
    "India",
    "Brazil",
    "Canada",
    "Mexico",
    "Egypt",
    "Kenya",
    "Norway",
    "Sweden",
    "Finland",
    "Poland",
    "Greece",
    "Turkey",
    "Peru",
    "Chile",
    "Argentina",
    "Australia",
    "Ireland",
    "Austria",
]
ANIMALS = [
    "dog",
    "cat",
    "horse",
    "whale",
    "shark",
    "eagle",
    "frog",
    "snake",
    "cow",
    "bat",
    "dolphin",
    "penguin",
    "lion",
    "tiger",
    "owl",
    "bee",
    "spider",
    "crocodile",
    "rabbit",
    "goat",
    "elephant",
    "giraffe",
    "salmon",
    "octopus",
]
ADJECTIVES = [
    "happy",
    "sad",
    "fast",
    "big",
    "small",
    "bright",
    "cold",
    "angry",
    "quiet",
    "brave",
    "clever",
    "old",
]
WORDS = [
    "house",
    "apple",
    "water",
    "book",
    "friend",
    "tree",
    "sun",
    "night",
    "bread",
    "cat",
    "dog",
    "car",
]
COLORS = ["the sky", "grass", "snow", "a ripe banana", "coal", "a tomato", "the sea", "an orange"]
THINGS = [
    "fruits",
    "vegetables",
    "European capitals",
    "programming languages",
    "musical instruments",
    "board games",
    "planets",
    "rivers in Africa",
    "breakfast foods",
    "kinds of trees",
    "sports played with a ball",
]
TOPICS = [
    "the water cycle",
    "photosynthesis",
    "how vaccines work",
    "the French Revolution",
    "black holes",
    "how a computer compiles a program",
    "why the seasons change",
    "the history of the internet",
    "how bees make honey",
    "the causes of the First World War",
    "how airplanes fly",
    "plate tectonics",
]
HEROES = [
    "a young dragon",
    "a lost robot",
    "a brave little mouse",
    "an old lighthouse keeper",
    "a curious girl",
    "a wizard who forgot his spells",
    "a cat who wanted to fly",
    "two friends on a pirate ship",
    "a knight afraid of the dark",
    "a talking tree",
]
PLACES = [
    "a snowy mountain",
    "the bottom of the sea",
    "a busy city",
    "an enchanted forest",
    "a space station",
    "a small village",
    "a desert island",
    "a haunted castle",
]

# (kind, is_long, phrasings). Short kinds answer in a word or a sentence; long kinds in
# paragraphs. The fillers are drawn per prompt.
SHORT_KINDS: list[tuple[str, tuple[str, ...]]] = [
    (
        "one_word",
        (
            "What is the capital of {country}?",
            "Answer with one word: what is the capital of {country}?",
            "Name the capital city of {country}. Just the name.",
        ),
    ),
    (
        "yes_no",
        (
            "Is a {animal} a mammal? Answer yes or no.",
            "Can a {animal} fly? Yes or no.",
            "Yes or no: does a {animal} lay eggs?",
        ),
    ),
    (
        "arithmetic",
        ("What is {a} plus {b}?", "Compute {a} + {b}. Reply with the number only."),
    ),
    (
        "synonym",
        (
            "Give me one synonym for '{adj}'.",
            "What is the opposite of '{adj}'? One word.",
            "Translate '{word}' into French. Just the word.",
        ),
    ),
    (
        "fact",
        (
            "What color is {color}?",
            "In one short sentence, what does a {animal} eat?",
            "Where does a {animal} live? Answer in one sentence.",
        ),
    ),
]
LONG_KINDS: list[tuple[str, tuple[str, ...]]] = [
    (
        "story",
        (
            "Write a long story about {hero} in {place}.",
            "Tell me a bedtime story about {hero}. Make it long, with a beginning, a middle "
            "and an end.",
            "Write a detailed adventure story where {hero} travels to {place}.",
        ),
    ),
    (
        "essay",
        (
            "Write a detailed essay explaining {topic}.",
            "Explain {topic} in depth, step by step, with examples.",
            "I am studying for an exam. Give me a thorough explanation of {topic}, covering "
            "every important point.",
        ),
    ),
    (
        "long_list",
        (
            "List twenty {things} and describe each one in two sentences.",
            "Make a long list of {things}, with a short paragraph about each.",
        ),
    ),
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        country=rng.choice(COUNTRIES),
        animal=rng.choice(ANIMALS),
        adj=rng.choice(ADJECTIVES),
        word=rng.choice(WORDS),
        color=rng.choice(COLORS),
        things=rng.choice(THINGS),
        topic=rng.choice(TOPICS),
        hero=rng.choice(HEROES),
        place=rng.choice(PLACES),
        a=rng.randint(2, 99),
        b=rng.randint(2, 99),
    )


def prompt_mix(
    n: int, *, seed: int = 0, long_share: float = 0.2, unique: bool = True
) -> list[tuple[str, str]]:
    """`n` (kind, user message) pairs, about `long_share` of them asking for a long answer, in a
    random order; with `unique`, no message repeats (the mix holds a few hundred of each)."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(out) == n:
            return out
        kinds = LONG_KINDS if rng.random() < long_share else SHORT_KINDS
        kind, phrasings = rng.choice(kinds)
        text = _fill(rng.choice(phrasings), rng)
        if not unique or text not in seen:
            seen.add(text)
            out.append((kind, text))
    raise ValueError(f"the mix holds fewer than {n} distinct prompts of that kind")


def is_long_kind(kind: str) -> bool:
    return any(kind == k for k, _ in LONG_KINDS)
