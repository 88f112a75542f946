"""Sentence stimuli: a small template grammar over real English vocabulary.

No sentence corpus of quality ships in a wheel, so the study writes its own:
short declarative sentences ("The old farmer carried a basket to the market.")
built from templates whose slots respect selectional restrictions (people eat
food, dogs chase things that move), so every sentence is grammatical and
sensible. The same sentences are shown as text and spoken as audio.

Every content word belongs to one semantic category (people, animals, food,
...). ``word_embeddings`` uses these categories to give words that mean similar
things similar vectors, which is what the simulated language voxels respond
to (a sentence's features are the mean of its content words' vectors).
"""

from __future__ import annotations

import zlib

import numpy as np

# Content words by semantic category. Verbs carry the object categories they accept.
PEOPLE = ["farmer", "doctor", "teacher", "child", "sailor", "baker", "pilot", "girl", "boy",
          "woman", "man", "artist", "nurse", "student", "soldier", "singer"]
ANIMALS = ["dog", "cat", "horse", "bird", "fox", "cow", "rabbit", "goat", "mouse", "duck"]
FOOD = ["apple", "bread", "soup", "cake", "cheese", "orange", "egg", "fish"]
TOOLS = ["hammer", "knife", "rope", "ladder", "bucket", "basket", "lamp", "key"]
VEHICLES = ["car", "boat", "train", "bike", "truck", "wagon"]
NATURE = ["river", "forest", "field", "hill", "beach", "lake", "garden", "meadow"]
TOWN = ["market", "station", "kitchen", "school", "library", "street", "bridge", "church"]
ADJ_SIZE = ["old", "young", "small", "big", "tall"]
ADJ_QUALITY = ["red", "heavy", "clean", "broken", "bright", "warm"]

TRANSITIVE = {  # past tense verb -> object categories it takes
    "ate": ("FOOD",),
    "cooked": ("FOOD",),
    "carried": ("FOOD", "TOOLS"),
    "dropped": ("FOOD", "TOOLS"),
    "found": ("FOOD", "TOOLS", "ANIMALS"),
    "fixed": ("TOOLS", "VEHICLES"),
    "painted": ("VEHICLES", "TOOLS"),
    "washed": ("VEHICLES", "ANIMALS", "TOOLS"),
    "chased": ("ANIMALS", "VEHICLES"),
    "watched": ("ANIMALS", "VEHICLES", "PEOPLE"),
    "pushed": ("VEHICLES", "TOOLS"),
}
INTRANSITIVE = ["walked", "ran", "slept", "sang", "waited", "played", "rested"]
PREPOSITIONS = ["in", "near", "across", "by", "behind"]
HUMAN_ONLY_VERBS = {"cooked", "fixed", "painted", "washed", "pushed", "carried"}

CATEGORIES = {
    "PEOPLE": PEOPLE, "ANIMALS": ANIMALS, "FOOD": FOOD, "TOOLS": TOOLS, "VEHICLES": VEHICLES,
    "NATURE": NATURE, "TOWN": TOWN, "ADJ_SIZE": ADJ_SIZE, "ADJ_QUALITY": ADJ_QUALITY,
    "ACTION_TRANSITIVE": list(TRANSITIVE), "ACTION_INTRANSITIVE": INTRANSITIVE,
}
FUNCTION_WORDS = {"the", "a", "an"} | set(PREPOSITIONS)


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _article(word: str, definite: bool) -> str:
    if definite:
        return "the"
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng: np.random.Generator, noun: str, adjectives: list[str] | None) -> str:
    definite = bool(rng.random() < 0.6)
    if adjectives and rng.random() < 0.5:
        adj = _pick(rng, adjectives)
        return f"{_article(adj, definite)} {adj} {noun}"
    return f"{_article(noun, definite)} {noun}"


def _one_sentence(rng: np.random.Generator) -> str:
    agent_category = "PEOPLE" if rng.random() < 0.65 else "ANIMALS"
    agent = _noun_phrase(rng, _pick(rng, CATEGORIES[agent_category]), ADJ_SIZE)
    if rng.random() < 0.6:  # agent verb object
        verbs = [v for v in TRANSITIVE if agent_category == "PEOPLE" or v not in HUMAN_ONLY_VERBS]
        verb = _pick(rng, verbs)
        obj_category = _pick(rng, list(TRANSITIVE[verb]))
        obj = _noun_phrase(rng, _pick(rng, CATEGORIES[obj_category]), ADJ_QUALITY)
        sentence = f"{agent} {verb} {obj}"
    else:  # agent verb preposition place
        verb = _pick(rng, INTRANSITIVE)
        place = _pick(rng, NATURE if rng.random() < 0.5 else TOWN)
        sentence = f"{agent} {verb} {_pick(rng, PREPOSITIONS)} the {place}"
    return sentence[0].upper() + sentence[1:] + "."


def generate_sentences(n: int, rng: np.random.Generator, max_words: int = 7) -> list[str]:
    """``n`` distinct sentences of at most ``max_words`` words, drawn from the grammar."""
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError(f"the grammar could not produce {n} distinct sentences of <= {max_words} words")
        s = _one_sentence(rng)
        if s in seen or len(s.split()) > max_words:
            continue
        seen.add(s)
        sentences.append(s)
    return sentences


def content_words(sentence: str) -> list[str]:
    """Lower-case content words of a sentence (articles and prepositions dropped)."""
    words = [w.strip(".,;!?").lower() for w in sentence.split()]
    return [w for w in words if w and w not in FUNCTION_WORDS]


def word_category(word: str) -> str | None:
    for name, words in CATEGORIES.items():
        if word in words:
            return name
    return None


def word_embeddings(dim: int, seed: int, category_weight: float = 0.8) -> dict[str, np.ndarray]:
    """Fixed random vectors for every content word, clustered by semantic category.

    A word's vector is its category's prototype plus a word-specific part
    (``category_weight`` sets their balance), both unit-variance Gaussians seeded
    from the study seed and a CRC of the name, so the same word always gets the
    same vector within a study. This is a stand-in for the co-occurrence
    embeddings Huth et al. (2016) used: similar words, similar vectors.
    """
    out: dict[str, np.ndarray] = {}
    for name, words in CATEGORIES.items():
        proto = np.random.default_rng([seed, zlib.crc32(name.encode())]).standard_normal(dim)
        for w in words:
            own = np.random.default_rng([seed, zlib.crc32(w.encode()), 1]).standard_normal(dim)
            out[w] = (np.sqrt(category_weight) * proto + np.sqrt(1 - category_weight) * own).astype(np.float64)
    return out


def sentence_features(sentences: list[str], embeddings: dict[str, np.ndarray]) -> np.ndarray:
    """(n_sentences, dim): the mean embedding of each sentence's content words."""
    dim = len(next(iter(embeddings.values())))
    feats = np.zeros((len(sentences), dim))
    for i, s in enumerate(sentences):
        vecs = [embeddings[w] for w in content_words(s) if w in embeddings]
        if not vecs:
            raise ValueError(f"sentence has no known content word: {s!r}")
        feats[i] = np.mean(vecs, axis=0)
    return feats
