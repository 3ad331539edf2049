"""The ground truth: which subsets each corpus has, the query naming each subset's property,
and the keywords a label must contain to count as describing it.

The keyword lists were written from general knowledge of each property before looking at
any label, and are deliberately generous (a crude, reproducible stand-in for a human or LLM
judge). A word of a label or a peak token matches a keyword when it equals it or, for
keywords of 4+ letters, starts with it (``program`` matches ``programmers``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subset:
    name: str
    """Dataset name in the store."""
    query: str
    """A text query naming the subset's property (retrieval and targeted clustering)."""
    keywords: tuple[str, ...] = ()
    """Words that say the property (diffing's keyword check); empty for subsets not scored."""


def _kw(text: str) -> tuple[str, ...]:
    return tuple(text.split())


CORPORA: dict[str, tuple[Subset, ...]] = {
    "spam": (
        Subset(
            "spam",
            "spam: unsolicited advertising email offering money, products or deals",
            _kw(
                "money free offer order buy price save credit cash income business market "
                "product click remove unsubscribe invest dollar win guarantee sale discount "
                "mortgage loan insurance opportunity profit limited cheap deal bonus million "
                "earn customer marketing sell wealth rich debt pay home online website visit "
                "receive call toll special now today"
            ),
        ),
        Subset(
            "ham",
            "email discussion between colleagues on a mailing list about software",
            _kw(
                "list linux perl python code software bug patch version kernel package install "
                "server file mailing thread wrote reply message user rpm redhat debian "
                "spamassassin razor exmh cvs sourceforge unix script config error test "
                "discussion think problem work use using irish ilug fix build run date "
                "folder sequence mailman"
            ),
        ),
    ),
    "fortunes": (
        Subset(
            "computers",
            "computers, programming and software",
            _kw(
                "computer program software code system data bug machine unix hardware byte "
                "bit file memory network programmer language user disk operating windows "
                "version keyboard internet debug compile fortran cobol lisp pascal basic "
                "algorithm microsoft ibm digital electronic technology engineer hacker "
                "terminal screen"
            ),
        ),
        Subset(
            "people",
            "people, their character and human nature",
            _kw(
                "people person man men woman women friend human life he she his her him they "
                "them someone everybody nobody everyone character who wise fool mind heart "
                "love happy good bad enemy mother father child wife husband humanity society "
                "crowd individual personality himself herself"
            ),
        ),
        Subset("science", "science, physics and mathematics"),
        Subset("politics", "politics, government and elections"),
        Subset("food", "food, eating and cooking"),
        Subset("love", "love, romance and relationships"),
    ),
    "wordnet": (
        Subset(
            "noun.food",
            "food and drink: dishes, ingredients and beverages",
            _kw(
                "food eat edible dish cook meat fruit vegetable sauce bread cake drink wine "
                "beverage flavor flavour sweet cheese soup salad fried baked bake flour sugar "
                "milk butter served taste seasoned cream pie apple chocolate liquor juice "
                "alcohol beer spice pastry rice dough cocktail roast stew candy dessert pork "
                "beef chicken fish broth boiled grilled whiskey"
            ),
        ),
        Subset(
            "noun.animal",
            "animals: mammals, birds, fish and insects",
            _kw(
                "animal bird fish mammal insect genus family species wing feather fur tail "
                "dog cat horse breed snake reptile frog bee beetle larva shark whale monkey "
                "rodent cattle deer wild tropical marine order hunting prey predator feed "
                "feeding nest egg eggs body legs head mollusk crustacean amphibian lizard "
                "turtle sheep goat duck hawk owl"
            ),
        ),
        Subset("noun.plant", "plants: trees, shrubs, flowers and herbs"),
        Subset("noun.person", "a kind of person: an occupation, role or character"),
    ),
}

PAIRS: tuple[tuple[str, str, str], ...] = (
    ("spam", "spam", "ham"),
    ("fortunes", "computers", "people"),
    ("wordnet", "noun.food", "noun.animal"),
)
"""(corpus, a, b): the pairs of the diffing study."""


def subset(corpus: str, name: str) -> Subset:
    for s in CORPORA[corpus]:
        if s.name == name:
            return s
    raise KeyError(f"no subset {name!r} in corpus {corpus!r}")
