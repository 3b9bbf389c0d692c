"""The K-AUT taxonomy (Korea-Augmented Universal Taxonomy) as data: 4 domains, 226 risk areas.

The K-EXAONE report publishes only the domain names and area counts (SPEC.md section 7); the area names and
descriptions in data/kaut.json were written for this project in Korean and English. This module loads them,
checks them (counts, ids, non-empty fields) and looks areas up. It does not hold suite instances (see suite.py).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
TAXONOMY_PATH = DATA_DIR / "kaut.json"

# Domain id -> number of risk areas, as the report gives them.
EXPECTED_COUNTS: dict[str, int] = {"UHV": 55, "SS": 75, "KS": 60, "FR": 36}
LANGS_TEXT = ("ko", "en")


@dataclass(frozen=True)
class RiskArea:
    id: str  # "UHV-01"
    domain: str  # "UHV"
    name_ko: str
    name_en: str
    description_ko: str
    description_en: str


@dataclass(frozen=True)
class Domain:
    id: str
    name_ko: str
    name_en: str
    description_ko: str
    description_en: str
    areas: tuple[RiskArea, ...]


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: str
    domains: tuple[Domain, ...]

    @functools.cached_property
    def areas(self) -> dict[str, RiskArea]:
        return {a.id: a for d in self.domains for a in d.areas}

    def domain(self, domain_id: str) -> Domain:
        for d in self.domains:
            if d.id == domain_id:
                return d
        raise ValueError(f"unknown K-AUT domain {domain_id!r}; valid: {', '.join(x.id for x in self.domains)}")

    def area(self, area_id: str) -> RiskArea:
        try:
            return self.areas[area_id]
        except KeyError:
            raise ValueError(f"unknown K-AUT risk area {area_id!r}; ids look like 'UHV-01' .. 'FR-36'") from None

    def counts(self) -> dict[str, int]:
        return {d.id: len(d.areas) for d in self.domains}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "counts": self.counts(),
            "total": len(self.areas),
            "domains": [
                {
                    "id": d.id,
                    "name": {"ko": d.name_ko, "en": d.name_en},
                    "description": {"ko": d.description_ko, "en": d.description_en},
                    "areas": [
                        {
                            "id": a.id,
                            "name": {"ko": a.name_ko, "en": a.name_en},
                            "description": {"ko": a.description_ko, "en": a.description_en},
                        }
                        for a in d.areas
                    ],
                }
                for d in self.domains
            ],
        }


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"K-AUT {where}: expected a non-empty string, got {value!r}")
    return value.strip()


def parse_taxonomy(raw: dict) -> Taxonomy:
    """Build a Taxonomy from the JSON layout of data/kaut.json, raising ValueError on any malformed field."""
    domains = []
    for d in raw.get("domains", []):
        did = _text(d.get("id"), "domain id")
        areas = []
        for a in d.get("areas", []):
            aid = _text(a.get("id"), f"area id in domain {did}")
            fields = {}
            for lang in LANGS_TEXT:
                pair = a.get(lang)
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError(f"K-AUT area {aid}: field {lang!r} must be [name, description], got {pair!r}")
                fields[f"name_{lang}"] = _text(pair[0], f"area {aid} {lang} name")
                fields[f"description_{lang}"] = _text(pair[1], f"area {aid} {lang} description")
            areas.append(RiskArea(id=aid, domain=did, **fields))
        desc = d.get("description", {})
        domains.append(
            Domain(
                id=did,
                name_ko=_text(d.get("ko"), f"domain {did} ko name"),
                name_en=_text(d.get("en"), f"domain {did} en name"),
                description_ko=_text(desc.get("ko"), f"domain {did} ko description"),
                description_en=_text(desc.get("en"), f"domain {did} en description"),
                areas=tuple(areas),
            )
        )
    return Taxonomy(name=raw.get("name", "K-AUT"), version=raw.get("version", ""), domains=tuple(domains))


def validate(tax: Taxonomy, expected: dict[str, int] = EXPECTED_COUNTS) -> None:
    """Check domain ids and area counts against `expected`, unique well-formed area ids (DOMAIN-NN, numbered 1..n
    in order) and unique names within each language. Raises ValueError naming the first problem."""
    got = tax.counts()
    if list(got) != list(expected):
        raise ValueError(f"K-AUT domains are {list(got)}, expected {list(expected)}")
    for did, n in expected.items():
        if got[did] != n:
            raise ValueError(f"K-AUT domain {did} has {got[did]} risk areas, expected {n}")
    seen: set[str] = set()
    for d in tax.domains:
        for i, a in enumerate(d.areas, start=1):
            if a.id in seen:
                raise ValueError(f"K-AUT risk area id {a.id!r} is used twice")
            seen.add(a.id)
            want = f"{d.id}-{i:02d}"
            if a.id != want or not re.fullmatch(r"[A-Z]+-\d{2}", a.id):
                raise ValueError(f"K-AUT risk area id {a.id!r} out of order in domain {d.id}: expected {want!r}")
    for lang in LANGS_TEXT:
        names = [getattr(a, f"name_{lang}") for a in tax.areas.values()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"K-AUT {lang} area names repeat: {dup}")


@functools.lru_cache(maxsize=1)
def load_taxonomy() -> Taxonomy:
    """The packaged K-AUT taxonomy, validated."""
    tax = parse_taxonomy(json.loads(TAXONOMY_PATH.read_text(encoding="utf-8")))
    validate(tax)
    return tax
