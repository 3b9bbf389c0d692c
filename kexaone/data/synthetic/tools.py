"""Tool-use dialogues in the K-EXAONE chat format: declare tools, call one, read its result, answer.

Three tools (weather, calculator, currency conversion) with JSON-schema declarations; the user asks in one of the six
languages, the assistant reasons briefly, emits a `<tool_call>`, receives a `<tool_result>` and answers in the
user's language from that result. Tool results are drawn fresh per dialogue (the model must read them, not recall
them), and no dialogue mentions a fact of the synthetic world, so tools never leak a held-out fact.

Rendering uses kexaone.tokenizer.chat.render.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from kexaone.data.sources import Document
from kexaone.data.synthetic.languages import LANGS

DOMAIN = "tools"

TOOLS = {
    "get_weather": {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                       "required": ["city"]}}},
    "calculator": {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    "convert_currency": {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies at today's rate.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
            "required": ["amount", "from", "to"]}}},
}

CONDITIONS = {
    "en": ("sunny", "cloudy", "rainy", "snowy"), "ko": ("맑음", "흐림", "비", "눈"), "ja": ("晴れ", "曇り", "雨", "雪"),
    "es": ("soleado", "nublado", "lluvioso", "nevado"), "de": ("sonnig", "bewölkt", "regnerisch", "verschneit"),
    "vi": ("nắng", "nhiều mây", "có mưa", "có tuyết"),
}
WEATHER_Q = {"en": "What is the weather like in {c} today?", "ko": "오늘 {c}의 날씨는 어떻습니까?",
             "ja": "今日の{c}の天気はどうですか？", "es": "¿Qué tiempo hace hoy en {c}?",
             "de": "Wie ist das Wetter heute in {c}?", "vi": "Hôm nay thời tiết ở {c} thế nào?"}
WEATHER_A = {"en": "It is {t}°C and {w} in {c}.", "ko": "{c}의 날씨는 {w}, 기온은 {t}°C입니다.",
             "ja": "{c}の天気は{w}で、気温は{t}°Cです。", "es": "En {c} hace {t}°C y está {w}.",
             "de": "In {c} sind es {t}°C und es ist {w}.", "vi": "Thời tiết ở {c}: {w}, nhiệt độ {t}°C."}
CALC_Q = {"en": "Please compute {e} with the calculator.", "ko": "{e}의 값을 계산기로 구해 주세요.",
          "ja": "電卓で{e}を計算してください。", "es": "Calcula {e} con la calculadora, por favor.",
          "de": "Bitte berechne {e} mit dem Taschenrechner.", "vi": "Hãy dùng máy tính để tính {e}."}
CALC_A = {"en": "The result is {r}.", "ko": "결과는 {r}입니다.", "ja": "結果は{r}です。", "es": "El resultado es {r}.",
          "de": "Das Ergebnis ist {r}.", "vi": "Kết quả là {r}."}
FX_Q = {"en": "How much is {x} {a} in {b}?", "ko": "{x} {a}는 {b}로 얼마입니까?", "ja": "{x} {a}は{b}でいくらですか？",
        "es": "¿Cuánto son {x} {a} en {b}?", "de": "Wie viel sind {x} {a} in {b}?", "vi": "{x} {a} bằng bao nhiêu {b}?"}
FX_A = {"en": "{x} {a} is {y} {b}.", "ko": "{x} {a}는 {y} {b}입니다.", "ja": "{x} {a}は{y} {b}です。",
        "es": "{x} {a} son {y} {b}.", "de": "{x} {a} sind {y} {b}.", "vi": "{x} {a} bằng {y} {b}."}
CURRENCIES = ("USD", "EUR", "KRW", "JPY", "VND")
SYSTEM = "You are a helpful assistant with access to tools."


def _call(name: str, args: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def make_dialogue(rng: random.Random, cities: list[str], lang: str) -> tuple[list[dict], list[dict]]:
    """(messages, tools) of one dialogue."""
    kind = rng.choice(("get_weather", "calculator", "convert_currency"))
    if kind == "get_weather":
        c, t, w = rng.choice(cities), rng.randint(-15, 38), rng.randrange(4)
        q = WEATHER_Q[lang].format(c=c)
        args, result = {"city": c}, {"city": c, "temperature_c": t, "condition": CONDITIONS["en"][w]}
        think1 = f"The user asks about the weather in {c}. I will call get_weather."
        think2 = f"The tool reports {t}°C and {CONDITIONS['en'][w]} in {c}."
        answer = WEATHER_A[lang].format(c=c, t=t, w=CONDITIONS[lang][w])
    elif kind == "calculator":
        a, b = rng.randint(10, 9999), rng.randint(2, 999)
        op = rng.choice("+-*")
        e = f"{a} {op} {b}"
        r = a + b if op == "+" else a - b if op == "-" else a * b
        q = CALC_Q[lang].format(e=e)
        args, result = {"expression": e}, {"result": r}
        think1 = f"The user wants {e} computed. I will use the calculator."
        think2 = f"The calculator returned {r}."
        answer = CALC_A[lang].format(r=r)
    else:
        x = rng.choice((5, 10, 20, 50, 100, 250, 1000))
        a, b = rng.sample(CURRENCIES, 2)
        y = round(x * rng.uniform(0.01, 1500.0), 2)
        q = FX_Q[lang].format(x=x, a=a, b=b)
        args, result = {"amount": x, "from": a, "to": b}, {"amount": y, "currency": b}
        think1 = f"The user wants to convert {x} {a} to {b}. I will call convert_currency."
        think2 = f"The conversion gives {y} {b}."
        answer = FX_A[lang].format(x=x, a=a, y=y, b=b)
    names = [kind] + rng.sample([n for n in TOOLS if n != kind], rng.randint(0, 2))
    rng.shuffle(names)
    msgs: list[dict] = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
    msgs += [
        {"role": "user", "content": q},
        {"role": "assistant", "content": "", "reasoning_content": think1, "tool_calls": [_call(kind, args)]},
        {"role": "tool", "content": json.dumps(result, ensure_ascii=False)},
        {"role": "assistant", "content": answer, "reasoning_content": think2},
    ]
    return msgs, [TOOLS[n] for n in names]


def tool_documents(cities: list[str], seed: int = 0) -> Iterator[Document]:
    """Endless rendered tool-use dialogues, one per document."""
    from kexaone.tokenizer.chat import render

    rng = random.Random(f"kexaone-tools|{seed}")
    while True:
        lang = rng.choice(LANGS)
        msgs, tools = make_dialogue(rng, cities, lang)
        yield Document(render(msgs, tools=tools, enable_thinking=True), f"{DOMAIN}/{lang}")
