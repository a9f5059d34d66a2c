"""World templates: our own vocabularies for the GSM-Infinite-style generator.

A template names a three-level hierarchy: locations (level 1), item types (level 2) and, in
"hard" problems only, qualifiers of an item type (level 3). An *instance* quantity is the
count of one leaf ("the number of owls in Pine Ridge Zoo", hard: "the number of adult owls in
Pine Ridge Zoo"); an *implicit total* sums the instances under one node ("the total number of
animals in Pine Ridge Zoo"; hard also "the total number of owls in Pine Ridge Zoo").

The vocabularies of different templates are disjoint (every location ends in its template's
own suffix), so statements from another template are pure noise: they never name a quantity
of the problem's world. No name contains " and the ", " minus ", " more than ", " times ",
" equals ", " is ", " in " or " at " inside it, so statements parse unambiguously.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Template:
    """One world vocabulary.

    name: the template's key in ``TEMPLATES``.
    category: plural noun for every item of the template ("animals"): the word of the
      location totals.
    preposition: joins an item to its location ("in", "at").
    locations: full location names (level 1).
    items: plural item types (level 2).
    qualifiers: level-3 adjectives for "hard" problems.
    """

    name: str
    category: str
    preposition: str
    locations: tuple[str, ...]
    items: tuple[str, ...]
    qualifiers: tuple[str, ...]


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
    "Blue Heron",
    "North Point",
    "Sunset Bluff",
    "Granite Falls",
)

ZOO = Template(
    name="zoo",
    category="animals",
    preposition="in",
    locations=tuple(f"{p} Zoo" for p in _PLACES),
    items=(
        "owls",
        "lions",
        "zebras",
        "penguins",
        "otters",
        "giraffes",
        "wolves",
        "flamingos",
        "tortoises",
        "lemurs",
        "bison",
        "cranes",
        "koalas",
        "seals",
        "camels",
        "parrots",
    ),
    qualifiers=("adult", "young", "newborn"),
)

SCHOOL = Template(
    name="school",
    category="teachers",
    preposition="in",
    locations=tuple(f"{p} High School" for p in _PLACES),
    items=(
        "math teachers",
        "history teachers",
        "art teachers",
        "music teachers",
        "chemistry teachers",
        "biology teachers",
        "physics teachers",
        "geography teachers",
        "drama teachers",
        "language teachers",
        "sports teachers",
        "computing teachers",
    ),
    qualifiers=("full-time", "part-time", "visiting"),
)

FESTIVAL = Template(
    name="festival",
    category="films",
    preposition="at",
    locations=tuple(f"{p} Film Festival" for p in _PLACES),
    items=(
        "comedy films",
        "drama films",
        "horror films",
        "documentary films",
        "animated films",
        "thriller films",
        "romance films",
        "western films",
        "musical films",
        "mystery films",
        "fantasy films",
        "war films",
    ),
    qualifiers=("award-winning", "debut", "restored"),
)

WORLDS: dict[str, Template] = {t.name: t for t in (ZOO, SCHOOL, FESTIVAL)}


def instance_name(template: Template, location: str, item: str, qualifier: str | None) -> str:
    """'the number of [qualifier ]item in location' (lower case; sentences capitalise it)."""
    what = f"{qualifier} {item}" if qualifier else item
    return f"the number of {what} {template.preposition} {location}"


def total_name(template: Template, location: str, item: str | None) -> str:
    """'the total number of item|category in location'."""
    return f"the total number of {item or template.category} {template.preposition} {location}"
