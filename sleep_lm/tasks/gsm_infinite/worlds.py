"""World templates: our own vocabularies for the GSM-Infinite-style generator.

A template names a hierarchy of three levels: locations (level 1), item types (level 2) and a
child word (level 3, "hard" problems only). Quantities of one world:

- count (instance):  "the number of adult owls in Pine Ridge Zoo"
- average (instance, hard):  "the average number of newborn children per adult owl in Pine
  Ridge Zoo"
- item total (implicit): "the total number of adult animals in Pine Ridge Zoo" = the sum of
  the counts mentioned for that location
- child total (implicit, hard): "the total number of newborn children in Pine Ridge Zoo" = the
  sum over the location's items of count x average

Every template also has a disjoint *filler* vocabulary (invented locations and items of the
same schema): filler statements look like the problem's own statements but never name one of
its quantities. Every item's plural is its singular + "s" (a reader pairs "adult owls" with
"per adult owl" without a dictionary). No name contains " and ", " plus ", " times ",
" equals ", ", " or " is "; only averages contain " per "; the only " in " / " at " is the
one before the location, so statements parse unambiguously.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Template:
    """One world vocabulary.

    name: the template's key in ``WORLDS``.
    category: plural word of the item totals ("adult animals").
    child: plural word of the level-3 quantities ("newborn children").
    preposition: joins a quantity to its location ("in", "at").
    locations, items: real level-1 names and level-2 singulars.
    filler_locations, filler_items: the invented filler vocabulary of the same schema.
    """

    name: str
    category: str
    child: str
    preposition: str
    locations: tuple[str, ...]
    items: tuple[str, ...]
    filler_locations: tuple[str, ...]
    filler_items: tuple[str, ...]


_PLACES = (
    "Pine Ridge",
    "Cedar Hollow",
    "Maple Creek",
    "Silver Lake",
    "Oak Valley",
    "Birch Bay",
    "Willow Park",
    "Stone Harbor",
    "Red Cliff",
    "Fox Meadow",
    "Elm Grove",
    "Copper Hill",
)
_FILLER_PLACES = (
    "Quillmoor",
    "Brackenfold",
    "Dunmarrow",
    "Vellicott",
    "Ashcombe",
    "Yarrowby",
    "Thistlegate",
    "Corvane",
    "Wendle Rise",
    "Gallowmere",
    "Hobb Crossing",
    "Pellridge",
    "Sorrowfen",
    "Tamsin Reach",
    "Orlow Flats",
    "Kestwick",
)


def _with(prefix: str, words: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{w}" for w in words.split(","))


ZOO = Template(
    name="zoo",
    category="adult animals",
    child="newborn children",
    preposition="in",
    locations=tuple(f"{p} Zoo" for p in _PLACES),
    items=_with("adult ", "owl,lion,zebra,penguin,otter,giraffe,flamingo,lemur,crane,koala"),
    filler_locations=tuple(f"{p} Zoo" for p in _FILLER_PLACES),
    filler_items=_with(
        "adult ", "heron,badger,tapir,gecko,ibis,marmot,jackal,okapi,condor,gibbon,weasel,egret"
    ),
)

SCHOOL = Template(
    name="school",
    category="schools",
    child="teachers",
    preposition="in",
    locations=tuple(f"{p} City" for p in _PLACES),
    items=_with(
        "",
        "elementary school,middle school,public high school,charter school,boarding school,"
        "art school,music school,trade school,language school,science school",
    ),
    filler_locations=tuple(f"{p} City" for p in _FILLER_PLACES),
    filler_items=_with(
        "",
        "riding school,sailing school,chess school,cooking school,circus school,drama school,"
        "flight school,pottery school,nursing school,dance school,glassblowing school,law school",
    ),
)

FESTIVAL = Template(
    name="festival",
    category="films",
    child="nominations",
    preposition="at",
    locations=tuple(f"{p} Film Festival" for p in _PLACES),
    items=_with(
        "",
        "comedy film,drama film,horror film,documentary film,animated film,thriller film,"
        "romance film,western film,musical film,mystery film",
    ),
    filler_locations=tuple(f"{p} Film Festival" for p in _FILLER_PLACES),
    filler_items=_with(
        "",
        "silent film,noir film,heist film,disaster film,sports film,war film,spy film,"
        "fantasy film,biopic film,satire film,puppet film,road film",
    ),
)

WORLDS: dict[str, Template] = {t.name: t for t in (ZOO, SCHOOL, FESTIVAL)}


def count_name(template: Template, location: str, item: str) -> str:
    """'the number of <item>s in|at <location>' (lower case; sentences capitalise it)."""
    return f"the number of {item}s {template.preposition} {location}"


def average_name(template: Template, location: str, item: str) -> str:
    """'the average number of <child> per <item> in|at <location>'."""
    return f"the average number of {template.child} per {item} {template.preposition} {location}"


def total_name(template: Template, location: str, child: bool) -> str:
    """'the total number of <category|child> in|at <location>'."""
    what = template.child if child else template.category
    return f"the total number of {what} {template.preposition} {location}"
