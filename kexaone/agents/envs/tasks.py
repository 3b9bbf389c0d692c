"""Tool-use tasks over the registry office, generated from the synthetic world, with a verifiable pass criterion.

A task is a user request, the small database it starts from, the gold actions (tool calls) that fulfil it and the
facts the final answer must state. As in tau-bench, a run passes when
  (1) the hash of the database it leaves equals the hash after replaying the gold actions on a fresh copy (any path
      to the same state passes; reads change nothing), and
  (2) every required fact appears in the final answer (case-insensitive, commas removed, not inside a longer
      Latin word or number).
Each task's database is a subset of one `World` (people sampled per task, with their employers, cities, company
headquarters and inventions, plus distractors), so tasks are self-contained JSON records.

Templates: transfer an employee, relocate a company, move a person, register an invention, a read-only lookup, and
a bulk transfer (every employee of one company to another); requests in English or Korean (names stay in Latin
script, as in the synthetic corpus). This module does not run models
(kexaone.agents.envs.evaluate).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kexaone.agents.envs.db import CityRow, CompanyRow, InventionRow, PersonRow, RegistryDB, db_hash
from kexaone.agents.envs.office import RegistryOffice
from kexaone.data.synthetic.names import pseudo_word
from kexaone.data.synthetic.world import World

PEOPLE_PER_TASK = 8
EXTRA_COMPANIES = 3
EXTRA_CITIES = 3


@dataclass
class ToolTask:
    id: str
    template: str
    instruction: str
    db: dict
    gold_actions: list[dict]  # [{"name", "arguments"}]
    outputs: list[str]  # facts the final answer must contain
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "template": self.template, "instruction": self.instruction, "db": self.db,
                "gold_actions": self.gold_actions, "outputs": self.outputs, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> ToolTask:
        missing = [k for k in ("id", "template", "instruction", "db", "gold_actions", "outputs") if k not in d]
        if missing:
            raise ValueError(f"tool task record lacks {missing} (has {sorted(d)})")
        RegistryDB.from_dict(d["db"])  # fail early on a malformed database
        return cls(d["id"], d["template"], d["instruction"], d["db"], list(d["gold_actions"]), list(d["outputs"]),
                   dict(d.get("meta") or {}))

    def start_db(self) -> RegistryDB:
        return RegistryDB.from_dict(self.db)


def load_tasks(path) -> list[ToolTask]:
    """Tasks from a JSONL file written by `kexaone tools synth`."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(ToolTask.from_json(json.loads(line)))
                except (json.JSONDecodeError, ValueError) as e:
                    raise ValueError(f"{path}:{lineno}: bad tool task: {e}") from None
    if not out:
        raise ValueError(f"{path} holds no tool task")
    return out


# ------------------------------------------------------------------------------------------------ pass criterion
def replay(db: RegistryDB, actions: list[dict]) -> tuple[RegistryOffice, list[str]]:
    """Run `actions` on a fresh office over `db`; (office, errors of the actions that failed)."""
    office = RegistryOffice(db)
    reg = office.registry()
    errors = []
    for k, a in enumerate(actions):
        r = reg.call(a.get("name"), a.get("arguments", {}))
        if not r.ok:
            errors.append(f"action {k} {a.get('name')}: {r.error}")
    return office, errors


def gold_hash(task: ToolTask) -> str:
    """Hash of the database after the gold actions; ValueError when they do not all succeed."""
    office, errors = replay(task.start_db(), task.gold_actions)
    if errors:
        raise ValueError(f"task {task.id}: gold actions fail: {errors[0]}")
    return office.db.hash()


def normalize(text: str) -> str:
    return (text or "").lower().replace(",", "")


def states_fact(answer: str, fact: str) -> bool:
    """Whether `answer` states `fact`: case-insensitive, commas ignored, not inside a longer Latin word or number
    (so "1" is not found in "10"); other scripts may touch it ("1926년", "Krazas에서")."""
    pattern = r"(?<![0-9a-z])" + re.escape(normalize(fact).strip()) + r"(?![0-9a-z])"
    return re.search(pattern, normalize(answer)) is not None


@dataclass(frozen=True)
class Verdict:
    db_ok: bool
    outputs_ok: bool
    missing: tuple[str, ...]

    @property
    def reward(self) -> float:
        return float(self.db_ok and self.outputs_ok)


def check(task: ToolTask, final_db: RegistryDB | dict, answer: str, *, expected_hash: str | None = None) -> Verdict:
    """The pass criterion: database state equal to the gold replay's, and every required fact in `answer`."""
    final = final_db.to_dict() if isinstance(final_db, RegistryDB) else final_db
    target = expected_hash or gold_hash(task)
    missing = tuple(o for o in task.outputs if not states_fact(answer, o))
    return Verdict(db_hash(final) == target, not missing, missing)


# ---------------------------------------------------------------------------------------------------- generation
def task_db(world: World, rng: random.Random) -> RegistryDB:
    """A small database: sampled people with their employers, cities and inventions, plus distractor rows."""
    # A few colleagues of one company first (so "move all its employees" tasks move several people), then others.
    staff: dict[int, list] = {}
    for p in world.people:
        staff.setdefault(p.employer, []).append(p)
    teams = [ps for ps in staff.values() if len(ps) >= 2]
    team = rng.choice(teams) if teams else []
    people = rng.sample(team, min(3, len(team)))
    pids = {p.id for p in people}
    rest = [p for p in world.people if p.id not in pids]
    people += rng.sample(rest, max(0, min(PEOPLE_PER_TASK - len(people), len(rest))))
    pids = {p.id for p in people}
    comp_ids = {p.employer for p in people}
    others = [c.id for c in world.companies if c.id not in comp_ids]
    comp_ids |= set(rng.sample(others, min(EXTRA_COMPANIES, len(others))))
    city_ids = {p.birth_city for p in people} | {world.companies[c].hq_city for c in comp_ids}
    others = [c.id for c in world.cities if c.id not in city_ids]
    city_ids |= set(rng.sample(others, min(EXTRA_CITIES, len(others))))
    db = RegistryDB()
    for p in sorted(people, key=lambda p: p.id):
        db.people[f"P{p.id}"] = PersonRow(f"P{p.id}", p.name, p.birth_year, f"T{p.birth_city}", f"T{p.birth_city}",
                                          f"C{p.employer}")
    for c in sorted(comp_ids):
        co = world.companies[c]
        db.companies[f"C{c}"] = CompanyRow(f"C{c}", co.name, f"T{co.hq_city}", co.founded)
    for t in sorted(city_ids):
        ci = world.cities[t]
        db.cities[f"T{t}"] = CityRow(f"T{t}", ci.name, world.countries[ci.country])
    for inv in world.inventions:
        if inv.inventor in pids:
            db.inventions[f"I{inv.id}"] = InventionRow(f"I{inv.id}", inv.name, f"P{inv.inventor}")
    return db


def _act(tool_name: str, **arguments) -> dict:
    return {"name": tool_name, "arguments": arguments}


Spec = tuple[dict, list[dict], list[str]]  # (fields of the request, gold actions, required outputs)


def _transfer(db: RegistryDB, rng: random.Random) -> Spec | None:
    p = rng.choice(list(db.people.values()))
    targets = [c for c in db.companies.values() if c.id != p.employer]
    if not targets:
        return None
    c = rng.choice(targets)
    old = db.companies[p.employer].name
    hq = db.cities[c.hq_city]
    return {"person": p.name, "old": old, "new": c.name}, [_act("find_person", name=p.name), _act("find_company", name=c.name),
                  _act("transfer_employee", person_id=p.id, company_id=c.id),
                  _act("get_city", city_id=hq.id)], [hq.name]


def _relocate(db: RegistryDB, rng: random.Random) -> Spec | None:
    c = rng.choice(list(db.companies.values()))
    cities = [t for t in db.cities.values() if t.id != c.hq_city]
    if not cities:
        return None
    t = rng.choice(cities)
    return {"company": c.name, "city": t.name}, [_act("find_company", name=c.name), _act("find_city", name=t.name),
                  _act("relocate_company", company_id=c.id, city_id=t.id)], [t.country]


def _move(db: RegistryDB, rng: random.Random) -> Spec | None:
    p = rng.choice(list(db.people.values()))
    options = [c for c in db.companies.values() if c.hq_city != p.home_city]
    if not options:
        return None
    c = rng.choice(options)
    t = db.cities[c.hq_city]
    return {"person": p.name, "company": c.name}, [_act("find_person", name=p.name), _act("find_company", name=c.name), _act("get_city", city_id=t.id),
                  _act("move_person", person_id=p.id, city_id=t.id)], [t.name]


def _invention(db: RegistryDB, rng: random.Random) -> Spec | None:
    p = rng.choice(list(db.people.values()))
    taken = {i.name.lower() for i in db.inventions.values()} | {x.name.lower() for x in db.people.values()}
    name = pseudo_word(rng, 3)
    if name.lower() in taken:
        return None
    employer = db.companies[p.employer]
    return {"person": p.name, "name": name}, [_act("find_person", name=p.name), _act("register_invention", name=name, inventor_id=p.id),
                  _act("get_company", company_id=employer.id)], [employer.name]


def _lookup(db: RegistryDB, rng: random.Random) -> Spec | None:
    p = rng.choice(list(db.people.values()))
    city = db.cities[p.birth_city]
    return {"person": p.name}, [_act("find_person", name=p.name), _act("get_city", city_id=city.id)], [city.name, str(p.birth_year)]


def _bulk(db: RegistryDB, rng: random.Random) -> Spec | None:
    staffed = [c for c in db.companies.values() if 1 <= sum(p.employer == c.id for p in db.people.values()) <= 4]
    if not staffed:
        return None
    most = max(sum(p.employer == c.id for p in db.people.values()) for c in staffed)
    a = rng.choice([c for c in staffed if sum(p.employer == c.id for p in db.people.values()) == most])
    b = rng.choice([c for c in db.companies.values() if c.id != a.id])
    staff = sorted((p for p in db.people.values() if p.employer == a.id), key=lambda p: int(p.id[1:]))
    fields = {"a": a.name, "b": b.name}
    acts = [_act("find_company", name=a.name), _act("find_company", name=b.name)]
    acts += [_act("transfer_employee", person_id=p.id, company_id=b.id) for p in staff]
    return fields, acts, [str(len(staff))]


TEMPLATES: dict[str, Callable[[RegistryDB, random.Random], Spec | None]] = {
    "transfer": _transfer, "relocate": _relocate, "move": _move, "invention": _invention, "lookup": _lookup,
    "bulk_transfer": _bulk,
}
WRITE_TEMPLATES = ("transfer", "relocate", "move", "invention", "bulk_transfer")
# The user's request per template and language. Korean phrasings keep particles off the (Latin-script) names by
# naming the kind of thing after them ("{x} 회사", "{x} 씨").
REQUESTS: dict[str, dict[str, str]] = {
    "transfer": {
        "en": "{person} has left {old} and joined {new}. Please update the registry, and tell me in which city {new} "
              "has its headquarters.",
        "ko": "{person} 씨가 {old} 회사를 떠나 {new} 회사에 입사했습니다. 등록부를 갱신하고, {new} 회사의 본사가 어느 "
              "도시에 있는지 알려 주세요.",
    },
    "relocate": {
        "en": "{company} has moved its headquarters to {city}. Please record the move, and tell me which country "
              "{city} is in.",
        "ko": "{company} 회사가 본사를 {city} 시로 옮겼습니다. 이전을 기록하고, 그 도시가 어느 나라에 있는지 알려 주세요.",
    },
    "move": {
        "en": "{person} now lives in the city where {company} has its headquarters. Please update their home city, "
              "and tell me the name of that city.",
        "ko": "{person} 씨는 이제 {company} 회사의 본사가 있는 도시에 삽니다. 거주 도시를 갱신하고, 그 도시의 이름을 "
              "알려 주세요.",
    },
    "invention": {
        "en": "Please register a new invention called {name}, made by {person}, and tell me the name of the company "
              "{person} works for.",
        "ko": "{person} 씨가 만든 새 발명품을 등록해 주세요. 이름은 {name}입니다. 그리고 {person} 씨가 다니는 회사의 "
              "이름을 알려 주세요.",
    },
    "lookup": {
        "en": "Where was {person} born, and in which year? Please do not change any record.",
        "ko": "{person} 씨는 어느 도시에서, 몇 년에 태어났습니까? 기록은 바꾸지 마세요.",
    },
    "bulk_transfer": {
        "en": "{a} is closing. Please move every one of its employees to {b}, and tell me how many people you moved.",
        "ko": "{a} 회사가 문을 닫습니다. 그 회사의 직원을 모두 {b} 회사로 옮기고, 몇 명을 옮겼는지 알려 주세요.",
    },
}
REQUEST_LANGS = ("en", "ko")


def generate_candidates(n: int, seed: int = 0, *, world: World | None = None,
                        templates: tuple[str, ...] = tuple(TEMPLATES), langs: tuple[str, ...] = ("en",)
                        ) -> list[ToolTask]:
    """`n` candidate tasks (templates in rotation, each request's language drawn from `langs`), before filtering.
    Deterministic in (n, seed, world, templates, langs)."""
    if n < 1:
        raise ValueError(f"the number of tasks must be >= 1, got {n}")
    unknown = [t for t in templates if t not in TEMPLATES]
    if unknown or not templates:
        raise ValueError(f"unknown task templates {unknown}; choose from {sorted(TEMPLATES)}")
    bad = [lang for lang in langs if lang not in REQUEST_LANGS]
    if bad or not langs:
        raise ValueError(f"unsupported request languages {bad}; choose from {REQUEST_LANGS}")
    world = world or World(seed=0, size="default")
    out = []
    for i in range(n):
        name = templates[i % len(templates)]
        rng = random.Random(f"kexaone-tooltask|{seed}|{i}")
        for attempt in range(20):
            db = task_db(world, rng)
            spec = TEMPLATES[name](db, rng)
            if spec is not None:
                break
        else:
            continue
        fields, actions, outputs = spec
        lang = langs[0] if len(langs) == 1 else rng.choice(langs)
        out.append(ToolTask(f"tools-{seed}-{i}", name, REQUESTS[name][lang].format(**fields), db.to_dict(), actions,
                            outputs, {"world_seed": world.seed, "seed": seed, "index": i, "lang": lang}))
    return out
