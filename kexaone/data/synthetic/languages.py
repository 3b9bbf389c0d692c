"""Sentence templates of the synthetic world in the six K-EXAONE languages (ko, en, es, de, ja, vi).

Every relation has several statement phrasings per language (so the model learns the fact, not one sentence) and
one question. `{s}` is the subject, `{o}` the object in the form `object_form` gives for that language. Korean
templates put a noun (씨, 회사, 시, 장치) after Latin-script names so no particle depends on how the name ends.
Templates were written for this project; they hold no text from any corpus.

This module holds only strings and small formatting helpers; kexaone.data.synthetic.world decides what is said.
"""

from __future__ import annotations

LANGS = ("ko", "en", "es", "de", "ja", "vi")

QUESTION_WORD = {"en": "Question", "ko": "질문", "ja": "質問", "es": "Pregunta", "de": "Frage", "vi": "Câu hỏi"}
ANSWER_WORD = {"en": "Answer", "ko": "답", "ja": "答え", "es": "Respuesta", "de": "Antwort", "vi": "Trả lời"}

# relation -> language -> (statement templates, question template)
TEMPLATES: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "birth_city": {
        "en": (("{s} was born in {o}.", "{s} is a native of {o}.", "The birthplace of {s} is {o}."),
               "Where was {s} born?"),
        "ko": (("{s} 씨는 {o}에서 태어났다.", "{s} 씨의 고향은 {o}입니다.", "{s} 씨가 태어난 곳은 {o}입니다."),
               "{s} 씨는 어디에서 태어났습니까?"),
        "ja": (("{s}は{o}で生まれた。", "{s}の出身地は{o}です。", "{s}が生まれた町は{o}である。"),
               "{s}はどこで生まれましたか？"),
        "es": (("{s} nació en {o}.", "La ciudad natal de {s} es {o}.", "{s} vino al mundo en {o}."),
               "¿Dónde nació {s}?"),
        "de": (("{s} wurde in {o} geboren.", "Der Geburtsort von {s} ist {o}.", "{s} stammt aus {o}."),
               "Wo wurde {s} geboren?"),
        "vi": (("{s} sinh ra ở {o}.", "Quê hương của {s} là {o}.", "Nơi sinh của {s} là {o}."),
               "{s} sinh ra ở đâu?"),
    },
    "birth_year": {
        "en": (("{s} was born in the year {o}.", "The birth year of {s} is {o}.", "{s} came into the world in {o}."),
               "In what year was {s} born?"),
        "ko": (("{s} 씨는 {o}에 태어났다.", "{s} 씨의 출생 연도는 {o}입니다.", "{s} 씨는 {o}생입니다."),
               "{s} 씨는 몇 년에 태어났습니까?"),
        "ja": (("{s}は{o}に生まれた。", "{s}の生年は{o}です。", "{s}は{o}生まれである。"),
               "{s}は何年に生まれましたか？"),
        "es": (("{s} nació en el año {o}.", "El año de nacimiento de {s} es {o}.", "{s} vino al mundo en {o}."),
               "¿En qué año nació {s}?"),
        "de": (("{s} wurde im Jahr {o} geboren.", "Das Geburtsjahr von {s} ist {o}.", "{s} kam {o} zur Welt."),
               "In welchem Jahr wurde {s} geboren?"),
        "vi": (("{s} sinh năm {o}.", "Năm sinh của {s} là {o}.", "{s} chào đời vào năm {o}."),
               "{s} sinh năm nào?"),
    },
    "occupation": {
        "en": (("{s} is {o}.", "{s} works as {o}.", "By profession, {s} is {o}."),
               "What is the profession of {s}?"),
        "ko": (("{s} 씨의 직업은 {o}입니다.", "{s} 씨는 직업이 {o}입니다.", "{s} 씨는 유명한 {o}입니다."),
               "{s} 씨의 직업은 무엇입니까?"),
        "ja": (("{s}の職業は{o}です。", "{s}は{o}として働いている。", "{s}は有名な{o}である。"),
               "{s}の職業は何ですか？"),
        "es": (("{s} es {o}.", "{s} trabaja como {o}.", "La profesión de {s} es {o}."),
               "¿Cuál es la profesión de {s}?"),
        "de": (("{s} ist {o}.", "{s} arbeitet als {o}.", "Der Beruf von {s} ist {o}."),
               "Was ist der Beruf von {s}?"),
        "vi": (("{s} là {o}.", "{s} làm nghề {o}.", "Nghề nghiệp của {s} là {o}."),
               "{s} làm nghề gì?"),
    },
    "employer": {
        "en": (("{s} works for {o}.", "{s} is employed by {o}.", "The employer of {s} is {o}."),
               "Which company does {s} work for?"),
        "ko": (("{s} 씨는 {o}에서 일한다.", "{s} 씨는 {o}에 근무한다.", "{s} 씨의 직장은 {o}입니다."),
               "{s} 씨는 어느 회사에서 일합니까?"),
        "ja": (("{s}は{o}で働いている。", "{s}は{o}に勤めている。", "{s}の勤務先は{o}です。"),
               "{s}はどの会社で働いていますか？"),
        "es": (("{s} trabaja para {o}.", "{s} trabaja en la empresa {o}.", "La empresa donde trabaja {s} es {o}."),
               "¿Para qué empresa trabaja {s}?"),
        "de": (("{s} arbeitet für {o}.", "{s} ist bei {o} angestellt.", "Der Arbeitgeber von {s} ist {o}."),
               "Für welche Firma arbeitet {s}?"),
        "vi": (("{s} làm việc cho {o}.", "{s} là nhân viên của {o}.", "Nơi làm việc của {s} là {o}."),
               "{s} làm việc cho công ty nào?"),
    },
    "company_hq": {
        "en": (("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}.",
                "{s} has its main office in {o}."), "Where is {s} headquartered?"),
        "ko": (("{s} 회사의 본사는 {o}에 있다.", "{s} 회사는 {o}에 본사를 두고 있다.", "{s} 회사의 본부는 {o}에 있습니다."),
               "{s} 회사의 본사는 어디에 있습니까?"),
        "ja": (("{s}の本社は{o}にある。", "{s}は{o}に本社を置いている。", "{s}の本部は{o}にあります。"),
               "{s}の本社はどこにありますか？"),
        "es": (("{s} tiene su sede en {o}.", "La sede de {s} está en {o}.",
                "La oficina principal de {s} se encuentra en {o}."), "¿Dónde tiene su sede {s}?"),
        "de": (("{s} hat seinen Hauptsitz in {o}.", "Der Hauptsitz von {s} liegt in {o}.",
                "Die Zentrale von {s} befindet sich in {o}."), "Wo hat {s} seinen Hauptsitz?"),
        "vi": (("{s} có trụ sở tại {o}.", "Trụ sở của {s} nằm ở {o}.", "Văn phòng chính của {s} đặt tại {o}."),
               "Trụ sở của {s} ở đâu?"),
    },
    "founded": {
        "en": (("{s} was founded in {o}.", "{s} was established in the year {o}.", "The founding year of {s} is {o}."),
               "When was {s} founded?"),
        "ko": (("{s} 회사는 {o}에 설립되었다.", "{s} 회사의 설립 연도는 {o}입니다.", "{s} 회사는 {o}에 세워졌다."),
               "{s} 회사는 언제 설립되었습니까?"),
        "ja": (("{s}は{o}に設立された。", "{s}の設立年は{o}です。", "{s}は{o}に創業した。"),
               "{s}はいつ設立されましたか？"),
        "es": (("{s} fue fundada en {o}.", "{s} se estableció en el año {o}.", "El año de fundación de {s} es {o}."),
               "¿Cuándo fue fundada {s}?"),
        "de": (("{s} wurde {o} gegründet.", "{s} entstand im Jahr {o}.", "Das Gründungsjahr von {s} ist {o}."),
               "Wann wurde {s} gegründet?"),
        "vi": (("{s} được thành lập năm {o}.", "Năm thành lập của {s} là {o}.", "{s} ra đời vào năm {o}."),
               "{s} được thành lập khi nào?"),
    },
    "inventor": {
        "en": (("The {s} was invented by {o}.", "{o} invented the {s}.", "The inventor of the {s} is {o}."),
               "Who invented the {s}?"),
        "ko": (("{s} 장치는 {o} 씨가 발명했다.", "{o} 씨가 {s} 장치를 발명했다.", "{s} 장치의 발명가는 {o} 씨입니다."),
               "{s} 장치는 누가 발명했습니까?"),
        "ja": (("{s}は{o}によって発明された。", "{o}が{s}を発明した。", "{s}の発明者は{o}です。"),
               "{s}を発明したのは誰ですか？"),
        "es": (("El {s} fue inventado por {o}.", "{o} inventó el {s}.", "El inventor del {s} es {o}."),
               "¿Quién inventó el {s}?"),
        "de": (("Der {s} wurde von {o} erfunden.", "{o} erfand den {s}.", "Der Erfinder von {s} ist {o}."),
               "Wer hat den {s} erfunden?"),
        "vi": (("{s} được phát minh bởi {o}.", "{o} đã phát minh ra {s}.", "Người phát minh ra {s} là {o}."),
               "Ai đã phát minh ra {s}?"),
    },
    "city_country": {
        "en": (("{s} is a city in {o}.", "{s} lies in {o}.", "The city of {s} is located in {o}."),
               "In which country is {s}?"),
        "ko": (("{s} 시는 {o}에 있는 도시이다.", "{s} 시는 {o}에 위치한다.", "{s} 시는 {o}의 도시입니다."),
               "{s} 시는 어느 나라에 있습니까?"),
        "ja": (("{s}は{o}の都市である。", "{s}は{o}にある。", "{s}市は{o}に位置している。"),
               "{s}はどの国にありますか？"),
        "es": (("{s} es una ciudad de {o}.", "{s} está en {o}.", "La ciudad de {s} se encuentra en {o}."),
               "¿En qué país está {s}?"),
        "de": (("{s} ist eine Stadt in {o}.", "{s} liegt in {o}.", "Die Stadt {s} befindet sich in {o}."),
               "In welchem Land liegt {s}?"),
        "vi": (("{s} là một thành phố ở {o}.", "{s} nằm ở {o}.", "Thành phố {s} thuộc {o}."),
               "{s} nằm ở nước nào?"),
    },
}

RELATIONS = tuple(TEMPLATES)

# Occupations: English (with article, bare), Spanish and German (masculine, feminine), others one form.
OCCUPATIONS = (
    {"en": ("a painter", "painter"), "es": ("pintor", "pintora"), "de": ("Maler", "Malerin"),
     "ko": "화가", "ja": "画家", "vi": "họa sĩ"},
    {"en": ("an engineer", "engineer"), "es": ("ingeniero", "ingeniera"), "de": ("Ingenieur", "Ingenieurin"),
     "ko": "엔지니어", "ja": "技師", "vi": "kỹ sư"},
    {"en": ("a doctor", "doctor"), "es": ("médico", "médica"), "de": ("Arzt", "Ärztin"),
     "ko": "의사", "ja": "医師", "vi": "bác sĩ"},
    {"en": ("a teacher", "teacher"), "es": ("maestro", "maestra"), "de": ("Lehrer", "Lehrerin"),
     "ko": "교사", "ja": "教師", "vi": "giáo viên"},
    {"en": ("a chemist", "chemist"), "es": ("químico", "química"), "de": ("Chemiker", "Chemikerin"),
     "ko": "화학자", "ja": "化学者", "vi": "nhà hóa học"},
    {"en": ("an architect", "architect"), "es": ("arquitecto", "arquitecta"), "de": ("Architekt", "Architektin"),
     "ko": "건축가", "ja": "建築家", "vi": "kiến trúc sư"},
    {"en": ("a composer", "composer"), "es": ("compositor", "compositora"), "de": ("Komponist", "Komponistin"),
     "ko": "작곡가", "ja": "作曲家", "vi": "nhà soạn nhạc"},
    {"en": ("a farmer", "farmer"), "es": ("agricultor", "agricultora"), "de": ("Landwirt", "Landwirtin"),
     "ko": "농부", "ja": "農家", "vi": "nông dân"},
)


def occupation_form(index: int, lang: str, female: bool, in_answer: bool) -> str:
    """The occupation noun as a statement (`in_answer=False`) or a short answer uses it."""
    form = OCCUPATIONS[index][lang]
    if lang == "en":
        return form[1] if in_answer else form[0]
    if lang in ("es", "de"):
        return form[1] if female else form[0]
    return form


def year_form(year: int, lang: str) -> str:
    """Years carry the counter word in Korean (년) and Japanese (年)."""
    return f"{year}년" if lang == "ko" else f"{year}年" if lang == "ja" else str(year)


def qa_text(question: str, answer: str | None, lang: str) -> str:
    """`Question: ...\\nAnswer: ...` in `lang`; with answer None, the prompt ends after `Answer:`."""
    head = f"{QUESTION_WORD[lang]}: {question}\n{ANSWER_WORD[lang]}:"
    return head if answer is None else f"{head} {answer}"
