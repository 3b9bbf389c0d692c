"""The registry-office environment: read and write tools over a `RegistryDB`, tau-bench style.

`RegistryOffice(db)` owns a copy of the database; its tool methods (tagged read or write) are what the model calls,
through `office.registry()`, a `ToolRegistry` whose schemas come from the methods' hints and docstrings. Tools
raise ValueError for what a caller can get wrong (unknown names or ids, a no-op write); the registry turns that into
an error result for the model. Names are matched case-insensitively. Writes are recorded in `office.writes`.

This module does not generate tasks or judge them (kexaone.agents.envs.tasks).
"""

from __future__ import annotations

from dataclasses import asdict

from kexaone.agents.envs.db import InventionRow, RegistryDB
from kexaone.agents.tools import ToolRegistry, make_tool

READ_TOOLS = ("find_person", "find_company", "get_company", "find_city", "get_city", "list_inventions")
WRITE_TOOLS = ("transfer_employee", "relocate_company", "move_person", "register_invention")
POLICY = (
    "You are the clerk of a company registry office. You can look records up and change them only through the "
    "tools. Look up the ids you need before changing a record, make exactly the changes the user asks for, and "
    "when you are done, reply to the user, in the user's language, with the information they asked for (call no "
    "tool in that reply)."
)


class RegistryOffice:
    def __init__(self, db: RegistryDB):
        self.db = db.copy()
        self.writes: list[tuple[str, dict]] = []

    def registry(self) -> ToolRegistry:
        reg = ToolRegistry()
        for name in READ_TOOLS:
            reg.register(make_tool(getattr(self, name), kind="read"))
        for name in WRITE_TOOLS:
            reg.register(make_tool(getattr(self, name), kind="write"))
        return reg

    # --------------------------------------------------------------------------------------------------- helpers
    def _by_name(self, table: str, name: str, what: str):
        key = name.strip().lower()
        for row in getattr(self.db, table).values():
            if row.name.lower() == key:
                return row
        raise ValueError(f"no {what} named {name!r}")

    def _by_id(self, table: str, row_id: str, what: str):
        rows = getattr(self.db, table)
        if row_id not in rows:
            raise ValueError(f"no {what} with id {row_id!r}")
        return rows[row_id]

    def _company(self, c) -> dict:
        staff = sorted((p.id for p in self.db.people.values() if p.employer == c.id), key=_id_key)
        return {**asdict(c), "employees": staff}

    # ----------------------------------------------------------------------------------------------- read tools
    def find_person(self, name: str) -> dict:
        """Look up a person by full name.

        Args:
            name: The person's full name, e.g. "Tala Brenor".
        """
        return asdict(self._by_name("people", name, "person"))

    def find_company(self, name: str) -> dict:
        """Look up a company by name; the record lists its employees' ids.

        Args:
            name: The company name.
        """
        return self._company(self._by_name("companies", name, "company"))

    def get_company(self, company_id: str) -> dict:
        """Get a company record by id; the record lists its employees' ids.

        Args:
            company_id: A company id such as "C4".
        """
        return self._company(self._by_id("companies", company_id, "company"))

    def find_city(self, name: str) -> dict:
        """Look up a city by name.

        Args:
            name: The city name.
        """
        return asdict(self._by_name("cities", name, "city"))

    def get_city(self, city_id: str) -> dict:
        """Get a city record by id.

        Args:
            city_id: A city id such as "T2".
        """
        return asdict(self._by_id("cities", city_id, "city"))

    def list_inventions(self, person_id: str) -> list[dict]:
        """The inventions registered to a person.

        Args:
            person_id: A person id such as "P7".
        """
        self._by_id("people", person_id, "person")
        return [asdict(i) for i in self.db.inventions.values() if i.inventor == person_id]

    # ---------------------------------------------------------------------------------------------- write tools
    def transfer_employee(self, person_id: str, company_id: str) -> dict:
        """Record that a person now works for another company.

        Args:
            person_id: The person's id.
            company_id: The id of the new employer.
        """
        p = self._by_id("people", person_id, "person")
        self._by_id("companies", company_id, "company")
        if p.employer == company_id:
            raise ValueError(f"{p.name} already works for company {company_id}")
        p.employer = company_id
        self.writes.append(("transfer_employee", {"person_id": person_id, "company_id": company_id}))
        return asdict(p)

    def relocate_company(self, company_id: str, city_id: str) -> dict:
        """Record that a company moved its headquarters to another city.

        Args:
            company_id: The company's id.
            city_id: The id of the new headquarters city.
        """
        c = self._by_id("companies", company_id, "company")
        self._by_id("cities", city_id, "city")
        if c.hq_city == city_id:
            raise ValueError(f"{c.name} is already headquartered in city {city_id}")
        c.hq_city = city_id
        self.writes.append(("relocate_company", {"company_id": company_id, "city_id": city_id}))
        return self._company(c)

    def move_person(self, person_id: str, city_id: str) -> dict:
        """Record that a person now lives in another city.

        Args:
            person_id: The person's id.
            city_id: The id of the new home city.
        """
        p = self._by_id("people", person_id, "person")
        self._by_id("cities", city_id, "city")
        if p.home_city == city_id:
            raise ValueError(f"{p.name} already lives in city {city_id}")
        p.home_city = city_id
        self.writes.append(("move_person", {"person_id": person_id, "city_id": city_id}))
        return asdict(p)

    def register_invention(self, name: str, inventor_id: str) -> dict:
        """Register a new invention; it gets the next free id.

        Args:
            name: The invention's name.
            inventor_id: The inventor's person id.
        """
        self._by_id("people", inventor_id, "person")
        if not name.strip():
            raise ValueError("an invention needs a non-empty name")
        if any(i.name.lower() == name.strip().lower() for i in self.db.inventions.values()):
            raise ValueError(f"an invention named {name!r} is already registered")
        new_id = f"I{1 + max((_id_key(k)[1] for k in self.db.inventions), default=-1)}"
        self.db.inventions[new_id] = InventionRow(new_id, name.strip(), inventor_id)
        self.writes.append(("register_invention", {"name": name, "inventor_id": inventor_id}))
        return asdict(self.db.inventions[new_id])


def _id_key(row_id: str) -> tuple[str, int]:
    return row_id[0], int(row_id[1:])
