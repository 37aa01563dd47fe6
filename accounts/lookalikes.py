"""Which usernames would look the same on the screen: Unicode's confusables (UTS #39, section 4,
"skeleton"), read from the data confusable_homoglyphs ships, which models.py already uses for
names that mix alphabets. No library on PyPI fits: `confusables` has no skeleton and no release
since 2021, the others computing one are alphas or young betas; the algorithm is a few lines."""

import functools
import hashlib
import unicodedata

from confusable_homoglyphs import confusables

# The data file's comments wrap right-to-left letters in LEFT-TO-RIGHT MARKs; they are no part of them.
_LRM = "\u200e"


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each confusable character, mapped to the one its look-alikes share. The data lists every
    line of Unicode's confusables.txt ("source → prototype") in both directions: a source is one
    character and lists only its prototype; a prototype lists all its sources (more than one, or
    it is a string of several characters). Where a character and its one prototype list only each
    other, the data cannot tell which is which: both then map to the lower code point, which
    keeps two names apart exactly when their prototypes differ."""
    linked: dict[str, set[str]] = {}
    for char, entries in confusables.confusables_data.items():
        linked.setdefault(char.replace(_LRM, ""), set()).update(e["c"].replace(_LRM, "") for e in entries)
    mapping = {}
    for char, others in linked.items():
        if len(char) != 1 or len(others) != 1:
            continue  # a prototype
        (other,) = others
        if len(other) > 1 or len(linked.get(other, ())) > 1:
            mapping[char] = other
        elif other < char:
            mapping[char] = other
    return mapping


def _skeleton(value: str) -> str:
    # A prototype's own letters may have prototypes in this data (a few dozen of six thousand):
    # mapped again until nothing changes, as UTS #39 means skeleton(skeleton(x)) == skeleton(x).
    prototypes = _prototypes()
    for _ in range(4):
        mapped = unicodedata.normalize("NFD", "".join(prototypes.get(c, c) for c in unicodedata.normalize("NFD", value)))
        if mapped == value:
            break
        value = mapped
    return value


def username_lookalike_key(username: str) -> str:
    """Equal for two names that would look the same in a list of users: "paypal" and an
    all-Cyrillic "раура1", "admin" and "adrnin". Letter case is compared as username uniqueness
    does (in any case): "ΑΝΝΑ" in Greek capitals looks like "ANNA", which is anna's name. The
    skeleton comes first so a capital I among small letters still reads as an l, then again after
    lower-casing, which can make a letter with a look-alike of its own ("M" → "m" → "rn"). Stored
    as a digest: a skeleton can be many times longer than the name."""
    key = _skeleton(_skeleton(username).lower())
    return hashlib.sha256(key.encode()).hexdigest()
