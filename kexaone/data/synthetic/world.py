"""A generated world (countries, cities, people, companies, inventions) and the facts that relate them.

The world is a pure function of (seed, size). Each fact can be stated in the six corpus languages; a reserved
quarter of the facts whose answer is a name (birth city, employer, headquarters, inventor, country) is *held out in
one language*: the training corpus states it only in the other five, and the cross-lingual recall task asks about
it in that one (kexaone.data.synthetic.tasks). `Fact.allowed(lang)` is the single gate every generator goes through.

This module does not write documents; kexaone.data.synthetic.knowledge does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

from kexaone.data.synthetic.languages import LANGS, OCCUPATIONS, TEMPLATES, occupation_form, qa_text, year_form
from kexaone.data.synthetic.names import NameFactory

RECALL_RELATIONS = ("birth_city", "employer", "company_hq", "inventor", "city_country")
"""Relations whose answer is a proper name (the same string in every language): the cross-lingual recall task."""
HELDOUT_FRACTION = 0.25


@dataclass(frozen=True)
class WorldSize:
    countries: int
    cities: int
    people: int
    companies: int
    inventions: int


WORLD_SIZES = {
    "tiny": WorldSize(countries=4, cities=10, people=24, companies=8, inventions=10),
    "default": WorldSize(countries=8, cities=40, people=150, companies=40, inventions=60),
    "large": WorldSize(countries=16, cities=120, people=800, companies=160, inventions=300),
}


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    female: bool
    birth_city: int
    birth_year: int
    occupation: int
    employer: int


@dataclass(frozen=True)
class Company:
    id: int
    name: str
    hq_city: int
    founded: int


@dataclass(frozen=True)
class Invention:
    id: int
    name: str
    inventor: int


@dataclass(frozen=True)
class City:
    id: int
    name: str
    country: int


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) statement. `objects` holds the object text per language for statements and
    answers; `heldout_lang` is the language it is never stated in during training (None: stated in all six)."""

    relation: str
    subject: str
    statement_objects: tuple[tuple[str, str], ...]  # (lang, text)
    answer_objects: tuple[tuple[str, str], ...]
    kind: str  # the type of the object: city, company, person, country, year, occupation
    heldout_lang: str | None = None

    def allowed(self, lang: str) -> bool:
        return lang != self.heldout_lang

    def _obj(self, lang: str, answer: bool) -> str:
        return dict(self.answer_objects if answer else self.statement_objects)[lang]

    def answer(self, lang: str) -> str:
        return self._obj(lang, True)

    def statement(self, lang: str, variant: int) -> str:
        """Phrasing `variant` (mod the number of phrasings) of the fact in `lang`."""
        templates = TEMPLATES[self.relation][lang][0]
        return templates[variant % len(templates)].format(s=self.subject, o=self._obj(lang, False))

    def question(self, lang: str) -> str:
        return TEMPLATES[self.relation][lang][1].format(s=self.subject)

    def qa(self, lang: str, with_answer: bool = True) -> str:
        return qa_text(self.question(lang), self.answer(lang) if with_answer else None, lang)


def _same(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((lang, text) for lang in LANGS)


class World:
    """Entities and facts of one synthetic world."""

    def __init__(self, seed: int = 0, size: str | WorldSize = "default"):
        if isinstance(size, str):
            if size not in WORLD_SIZES:
                raise ValueError(f"unknown world size {size!r}; choose one of {sorted(WORLD_SIZES)}")
            size = WORLD_SIZES[size]
        self.seed, self.size = seed, size
        rng = random.Random(f"kexaone-world|{seed}")
        names = NameFactory(rng)
        self.countries = [names.word(2, 3) for _ in range(size.countries)]
        self.cities = [City(i, names.word(2, 3), rng.randrange(size.countries)) for i in range(size.cities)]
        self.companies = [
            Company(i, names.word(2, 3), rng.randrange(size.cities), rng.randint(1820, 1995))
            for i in range(size.companies)
        ]
        self.people = [
            Person(i, names.person(), rng.random() < 0.5, rng.randrange(size.cities), rng.randint(1850, 1990),
                   rng.randrange(len(OCCUPATIONS)), rng.randrange(size.companies))
            for i in range(size.people)
        ]
        self.inventions = [Invention(i, names.word(2, 3), rng.randrange(size.people)) for i in range(size.inventions)]

    @cached_property
    def facts(self) -> list[Fact]:
        """Every fact, in a fixed order; the held-out ones carry their held-out language."""
        facts: list[Fact] = []
        for p in self.people:
            facts.append(Fact("birth_city", p.name, _same(self.cities[p.birth_city].name),
                              _same(self.cities[p.birth_city].name), "city"))
            years = tuple((lang, year_form(p.birth_year, lang)) for lang in LANGS)
            facts.append(Fact("birth_year", p.name, years, years, "year"))
            facts.append(Fact(
                "occupation", p.name,
                tuple((lang, occupation_form(p.occupation, lang, p.female, False)) for lang in LANGS),
                tuple((lang, occupation_form(p.occupation, lang, p.female, True)) for lang in LANGS),
                "occupation",
            ))
            facts.append(Fact("employer", p.name, _same(self.companies[p.employer].name),
                              _same(self.companies[p.employer].name), "company"))
        for c in self.companies:
            facts.append(Fact("company_hq", c.name, _same(self.cities[c.hq_city].name),
                              _same(self.cities[c.hq_city].name), "city"))
            years = tuple((lang, year_form(c.founded, lang)) for lang in LANGS)
            facts.append(Fact("founded", c.name, years, years, "year"))
        for inv in self.inventions:
            who = self.people[inv.inventor].name
            facts.append(Fact("inventor", inv.name, _same(who), _same(who), "person"))
        for city in self.cities:
            country = self.countries[city.country]
            facts.append(Fact("city_country", city.name, _same(country), _same(country), "country"))
        return self._hold_out(facts)

    def _hold_out(self, facts: list[Fact]) -> list[Fact]:
        rng = random.Random(f"kexaone-world-heldout|{self.seed}")
        candidates = [i for i, f in enumerate(facts) if f.relation in RECALL_RELATIONS]
        rng.shuffle(candidates)
        chosen = sorted(candidates[: round(HELDOUT_FRACTION * len(candidates))])
        out = list(facts)
        for k, i in enumerate(chosen):  # round-robin so every language is the held-out one equally often
            f = facts[i]
            out[i] = Fact(f.relation, f.subject, f.statement_objects, f.answer_objects, f.kind, LANGS[k % len(LANGS)])
        return out

    @cached_property
    def heldout_facts(self) -> list[Fact]:
        return [f for f in self.facts if f.heldout_lang is not None]

    def object_pool(self, kind: str) -> list[str]:
        """Every name of one object kind (the distractors of a multiple-choice question)."""
        pools = {
            "city": [c.name for c in self.cities],
            "company": [c.name for c in self.companies],
            "person": [p.name for p in self.people],
            "country": list(self.countries),
        }
        if kind not in pools:
            raise ValueError(f"no name pool for object kind {kind!r}; choose one of {sorted(pools)}")
        return pools[kind]

    @cached_property
    def facts_by_subject(self) -> dict[str, list[Fact]]:
        """Facts grouped by subject, subjects in first-seen order (people, companies, inventions, cities)."""
        out: dict[str, list[Fact]] = {}
        for f in self.facts:
            out.setdefault(f.subject, []).append(f)
        return out
