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

    def _relink(self, tool: str, row: tuple[str, str, str], attr: str, target: tuple[str, str, str],
                already: str):
        """The write the move/transfer tools share: point `row`'s `attr` at `target` (each `(table, kind, id)`,
        both must exist), log it as `tool` with `<kind>_id` arguments, and return the row. `already` is the
        error, formatted with the row's `name` and the target `id`, when the row points there already."""
        table, kind, row_id = row
        t_table, t_kind, t_id = target
        r = self._by_id(table, row_id, kind)
        self._by_id(t_table, t_id, t_kind)
        if getattr(r, attr) == t_id:
            raise ValueError(already.format(name=r.name, id=t_id))
        setattr(r, attr, t_id)
        self.writes.append((tool, {f"{kind}_id": row_id, f"{t_kind}_id": t_id}))
        return r

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
        return asdict(self._relink("transfer_employee", ("people", "person", person_id), "employer",
                                   ("companies", "company", company_id), "{name} already works for company {id}"))

    def relocate_company(self, company_id: str, city_id: str) -> dict:
        """Record that a company moved its headquarters to another city.

        Args:
            company_id: The company's id.
            city_id: The id of the new headquarters city.
        """
        return self._company(self._relink("relocate_company", ("companies", "company", company_id), "hq_city",
                                          ("cities", "city", city_id), "{name} is already headquartered in city {id}"))

    def move_person(self, person_id: str, city_id: str) -> dict:
        """Record that a person now lives in another city.

        Args:
            person_id: The person's id.
            city_id: The id of the new home city.
        """
        return asdict(self._relink("move_person", ("people", "person", person_id), "home_city",
                                   ("cities", "city", city_id), "{name} already lives in city {id}"))

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
