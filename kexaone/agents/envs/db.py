"""The database of the synthetic tool environments: a small registry of people, companies, cities and inventions.

Rows are plain dataclasses keyed by short ids (`P3`, `C1`, `T7`, `I12`), built from a subset of the synthetic world
(kexaone.data.synthetic.world). `RegistryDB.hash()` is a sha256 over the canonical JSON of every row (sorted keys,
fixed separators), so two databases with equal content have equal hashes whatever order their rows were written in;
the pass criterion compares these hashes.

This module holds state only; the tools that read and change it are in kexaone.agents.envs.office.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass
class PersonRow:
    id: str
    name: str
    birth_year: int
    birth_city: str  # city id
    home_city: str  # city id
    employer: str  # company id


@dataclass
class CompanyRow:
    id: str
    name: str
    hq_city: str  # city id
    founded: int


@dataclass
class CityRow:
    id: str
    name: str
    country: str


@dataclass
class InventionRow:
    id: str
    name: str
    inventor: str  # person id


TABLES = {"people": PersonRow, "companies": CompanyRow, "cities": CityRow, "inventions": InventionRow}


@dataclass
class RegistryDB:
    people: dict[str, PersonRow] = field(default_factory=dict)
    companies: dict[str, CompanyRow] = field(default_factory=dict)
    cities: dict[str, CityRow] = field(default_factory=dict)
    inventions: dict[str, InventionRow] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {t: {k: asdict(v) for k, v in getattr(self, t).items()} for t in TABLES}

    @classmethod
    def from_dict(cls, d: dict) -> RegistryDB:
        if not isinstance(d, dict) or set(d) != set(TABLES):
            raise ValueError(f"a registry database needs exactly the tables {sorted(TABLES)}, got "
                             f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
        try:
            return cls(**{t: {k: row(**v) for k, v in d[t].items()} for t, row in TABLES.items()})
        except TypeError as e:
            raise ValueError(f"bad database row: {e}") from None

    def copy(self) -> RegistryDB:
        return copy.deepcopy(self)

    def hash(self) -> str:
        return db_hash(self.to_dict())


def db_hash(d: dict) -> str:
    """sha256 of the canonical JSON of a database dict."""
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
