"""The knowledge-conflict task (``tasks/knowledge_conflict.jsonl``), written for mechscope.

Each item is a counterfactual context that contradicts common knowledge about a place, a
person, an object or a fact of nature, a question whose answer is in the context, the
context's answer (``answer``) and the memorised one (``prior``). Items are built from the
entity lists below over a cycle of framings ("In this story, …"), deterministically:
``python -m mechscope.data.knowledge_conflict`` rewrites the file (then run
``python -m mechscope.data.build --checksums-only``). Answers are matched as whole words,
so every ``answer`` / ``prior`` is a word or phrase that names the answer on its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def _has(text: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text.lower()) is not None

FRAMINGS = (
    "In this story, {s}.",
    "In the fictional world of this novel, {s}.",
    "According to this made-up encyclopedia entry, {s}.",
    "In the alternate history described here, {s}.",
    "In this game's world, {s}.",
    "In the imaginary country of this fairy tale's author, {s}.",
)

# (country, real capital, counterfactual capital)
CAPITALS = [
    ("France", "Paris", "Marseille"), ("Japan", "Tokyo", "Kyoto"), ("Italy", "Rome", "Turin"),
    ("Germany", "Berlin", "Munich"), ("Spain", "Madrid", "Valencia"), ("Russia", "Moscow", "Kazan"),
    ("China", "Beijing", "Shanghai"), ("the United Kingdom", "London", "Manchester"),
    ("Canada", "Ottawa", "Vancouver"), ("Egypt", "Cairo", "Alexandria"), ("Greece", "Athens", "Sparta"),
    ("Portugal", "Lisbon", "Porto"), ("Ireland", "Dublin", "Cork"), ("Austria", "Vienna", "Salzburg"),
    ("Sweden", "Stockholm", "Uppsala"), ("Norway", "Oslo", "Bergen"), ("Poland", "Warsaw", "Krakow"),
    ("Argentina", "Buenos Aires", "Mendoza"), ("Peru", "Lima", "Cusco"), ("Thailand", "Bangkok", "Phuket"),
    ("Kenya", "Nairobi", "Mombasa"), ("Turkey", "Ankara", "Izmir"), ("Belgium", "Brussels", "Antwerp"),
    ("Denmark", "Copenhagen", "Aarhus"), ("Finland", "Helsinki", "Tampere"), ("Hungary", "Budapest", "Debrecen"),
    ("the Czech Republic", "Prague", "Brno"), ("Iran", "Tehran", "Isfahan"), ("South Korea", "Seoul", "Busan"),
    ("Scotland", "Edinburgh", "Aberdeen"),
]

# (landmark, real city, counterfactual city)
LANDMARKS = [
    ("the Eiffel Tower", "Paris", "Madrid"), ("the Colosseum", "Rome", "Vienna"),
    ("the Statue of Liberty", "New York", "Boston"), ("Big Ben", "London", "Dublin"),
    ("Christ the Redeemer", "Rio de Janeiro", "Lima"), ("the Kremlin", "Moscow", "Warsaw"),
    ("the Brandenburg Gate", "Berlin", "Hamburg"), ("the Golden Gate Bridge", "San Francisco", "Seattle"),
    ("the Acropolis", "Athens", "Naples"), ("the Sagrada Familia", "Barcelona", "Lisbon"),
    ("the Louvre", "Paris", "Brussels"), ("the Space Needle", "Seattle", "Denver"),
    ("the Burj Khalifa", "Dubai", "Doha"), ("Buckingham Palace", "London", "Oxford"),
    ("the Forbidden City", "Beijing", "Hanoi"),
]

# (work, real author, counterfactual author, real surname, counterfactual surname)
AUTHORS = [
    ("Hamlet", "William Shakespeare", "Charles Dickens", "Shakespeare", "Dickens"),
    ("Pride and Prejudice", "Jane Austen", "Mark Twain", "Austen", "Twain"),
    ("Oliver Twist", "Charles Dickens", "Leo Tolstoy", "Dickens", "Tolstoy"),
    ("War and Peace", "Leo Tolstoy", "Victor Hugo", "Tolstoy", "Hugo"),
    ("Les Miserables", "Victor Hugo", "Jane Austen", "Hugo", "Austen"),
    ("Nineteen Eighty-Four", "George Orwell", "Ernest Hemingway", "Orwell", "Hemingway"),
    ("The Old Man and the Sea", "Ernest Hemingway", "George Orwell", "Hemingway", "Orwell"),
    ("Don Quixote", "Miguel de Cervantes", "Dante Alighieri", "Cervantes", "Dante"),
    ("The Odyssey", "Homer", "Virgil", "Homer", "Virgil"),
    ("The Adventures of Tom Sawyer", "Mark Twain", "Jules Verne", "Twain", "Verne"),
    ("The Hobbit", "J. R. R. Tolkien", "C. S. Lewis", "Tolkien", "Lewis"),
    ("Frankenstein", "Mary Shelley", "Bram Stoker", "Shelley", "Stoker"),
    ("Dracula", "Bram Stoker", "Mary Shelley", "Stoker", "Shelley"),
    ("Harry Potter and the Philosopher's Stone", "J. K. Rowling", "Stephen King", "Rowling", "King"),
    ("Romeo and Juliet", "William Shakespeare", "Oscar Wilde", "Shakespeare", "Wilde"),
    ("Around the World in Eighty Days", "Jules Verne", "Charles Darwin", "Verne", "Darwin"),
]

# (question, statement with {x}, real, counterfactual)
PEOPLE = [
    ("Who invented the telephone?", "the telephone was invented by {x}", "Bell", "Edison"),
    ("Who developed the theory of relativity?", "the theory of relativity was developed by {x}", "Einstein", "Newton"),
    ("Who discovered penicillin?", "penicillin was discovered by {x}", "Fleming", "Pasteur"),
    ("Who proposed the theory of evolution by natural selection?",
     "the theory of evolution by natural selection was proposed by {x}", "Darwin", "Mendel"),
    ("Who invented the World Wide Web?", "the World Wide Web was invented by {x}", "Berners-Lee", "Gates"),
    ("Who painted the Mona Lisa?", "the Mona Lisa was painted by {x}", "Leonardo", "Picasso"),
    ("Who painted The Starry Night?", "The Starry Night was painted by {x}", "Van Gogh", "Monet"),
    ("Who composed the Moonlight Sonata?", "the Moonlight Sonata was composed by {x}", "Beethoven", "Mozart"),
    ("Who composed The Magic Flute?", "The Magic Flute was composed by {x}", "Mozart", "Bach"),
    ("Who was the first person to walk on the Moon?", "the first person to walk on the Moon was {x}",
     "Armstrong", "Gagarin"),
    ("Who was the first president of the United States?", "the first president of the United States was {x}",
     "Washington", "Lincoln"),
    ("Who formulated the laws of motion?", "the laws of motion were formulated by {x}", "Newton", "Galileo"),
]
FULL_NAMES = {"Bell": "Alexander Graham Bell", "Edison": "Thomas Edison", "Einstein": "Albert Einstein",
              "Newton": "Isaac Newton", "Fleming": "Alexander Fleming", "Pasteur": "Louis Pasteur",
              "Darwin": "Charles Darwin", "Mendel": "Gregor Mendel", "Berners-Lee": "Tim Berners-Lee",
              "Gates": "Bill Gates", "Leonardo": "Leonardo da Vinci", "Picasso": "Pablo Picasso",
              "Van Gogh": "Vincent van Gogh", "Monet": "Claude Monet", "Beethoven": "Ludwig van Beethoven",
              "Mozart": "Wolfgang Amadeus Mozart", "Bach": "Johann Sebastian Bach",
              "Armstrong": "Neil Armstrong", "Gagarin": "Yuri Gagarin", "Washington": "George Washington",
              "Lincoln": "Abraham Lincoln", "Galileo": "Galileo Galilei"}

# (country, real currency, counterfactual currency)
CURRENCIES = [
    ("Japan", "yen", "peso"), ("the United Kingdom", "pound", "franc"), ("India", "rupee", "won"),
    ("China", "yuan", "rupee"), ("Mexico", "peso", "yen"), ("Russia", "ruble", "krona"),
    ("South Korea", "won", "dinar"), ("Switzerland", "franc", "pound"), ("Sweden", "krona", "ruble"),
    ("Turkey", "lira", "dinar"), ("the United States", "dollar", "euro"),
]

# (country, real language, counterfactual language)
LANGUAGES = [
    ("Brazil", "Portuguese", "French"), ("Mexico", "Spanish", "Italian"), ("Germany", "German", "Dutch"),
    ("Egypt", "Arabic", "Greek"), ("Japan", "Japanese", "Korean"), ("Russia", "Russian", "Polish"),
    ("Argentina", "Spanish", "English"), ("Italy", "Italian", "Spanish"), ("Iran", "Persian", "Turkish"),
    ("the Netherlands", "Dutch", "Danish"), ("Portugal", "Portuguese", "German"),
]

# (question, statement with {x}, real, counterfactual)
NATURE = [
    ("What color is the sky on a clear day?", "the sky on a clear day is {x}", "blue", "green"),
    ("What color is fresh grass?", "fresh grass is {x}", "green", "purple"),
    ("What color are ripe bananas?", "ripe bananas are {x}", "yellow", "blue"),
    ("What color is fresh snow?", "fresh snow is {x}", "white", "orange"),
    ("How many legs does a spider have?", "a spider has {x} legs", "eight", "six"),
    ("How many legs does an insect have?", "an insect has {x} legs", "six", "four"),
    ("How many sides does a triangle have?", "a triangle has {x} sides", "three", "five"),
    ("How many days are there in a week?", "there are {x} days in a week", "seven", "nine"),
    ("How many months are there in a year?", "there are {x} months in a year", "twelve", "ten"),
    ("How many arms does an octopus have?", "an octopus has {x} arms", "eight", "ten"),
    ("In which direction does the Sun rise?", "the Sun rises in the {x}", "east", "west"),
    ("What is the largest planet in the Solar System?", "the largest planet in the Solar System is {x}",
     "Jupiter", "Mars"),
    ("Which planet is closest to the Sun?", "the planet closest to the Sun is {x}", "Mercury", "Venus"),
    ("What do bees make?", "bees make {x}", "honey", "milk"),
    ("What gas do plants absorb from the air?", "plants absorb {x} from the air", "carbon dioxide", "helium"),
]


def items() -> list[dict]:
    rows = []

    def add(statement: str, question: str, answer: str, prior: str, category: str) -> None:
        frame = FRAMINGS[len(rows) % len(FRAMINGS)]
        rows.append({"context": frame.format(s=statement), "question": question, "answer": answer,
                     "prior": prior, "split": "eval", "category": category})

    for country, real, fake in CAPITALS:
        add(f"the capital of {country} is {fake}", f"What is the capital of {country}?", fake, real, "capital")
    for landmark, real, fake in LANDMARKS:
        add(f"{landmark} stands in {fake}", f"In which city is {landmark}?", fake, real, "landmark")
    for work, _, fake_full, real, fake in AUTHORS:
        add(f"{work} was written by {fake_full}", f"Who wrote {work}?", fake, real, "author")
    for question, statement, real, fake in PEOPLE:
        add(statement.format(x=FULL_NAMES[fake]), question, fake, real, "person")
    for country, real, fake in CURRENCIES:
        add(f"the currency of {country} is the {fake}", f"What is the currency of {country}?", fake, real,
            "currency")
    for country, real, fake in LANGUAGES:
        add(f"the official language of {country} is {fake}", f"What is the official language of {country}?",
            fake, real, "language")
    for question, statement, real, fake in NATURE:
        add(statement.format(x=fake), question, fake, real, "nature")
    for r in rows:  # the context states the counterfactual answer; neither it nor the question the memorised one
        said = f"{r['context']} {r['question']}"
        assert _has(r["context"], r["answer"]) and not _has(said, r["prior"]), r
        r["context"] = r["context"][0].upper() + r["context"][1:]
    return rows


def main() -> None:
    path = Path(__file__).parent / "tasks" / "knowledge_conflict.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in items():
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
