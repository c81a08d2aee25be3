"""The ACT calibration task: short completion prompts with one correct continuation.

Written for mechscope (no external source). Yu et al. 2024 ("Unveiling and Harnessing Hidden
Attention Sinks", ACT) choose the heads to calibrate by a per-head search that keeps a head
when calibrating it raises accuracy on a calibration set; ``split="calib"`` items serve that
search and ``split="heldout"`` items measure the result. Accuracy is the argmax of the
summed log p(choice | prompt) over ``choices`` (3 options, chance 1/3).

Every answer and choice starts with a space and must be a *clean* continuation: the
tokenisation of ``prompt + choice`` equals ``tok(prompt) + tok(choice)``; items failing
that are dropped by :func:`items_with_splits`. A "counting" category ("A triangle has" →
" three") was dropped after scoring on the model: number words are not the natural
continuation there (digits and articles are), so the model was below chance.
"""

from __future__ import annotations

import json
import random

SEED = 7

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("England", "London"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
    ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Thailand", "Bangkok"), ("Cuba", "Havana"),
    ("Peru", "Lima"), ("Argentina", "Buenos Aires"), ("South Korea", "Seoul"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
    ("Australia", "Canberra"), ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Vietnam", "Hanoi"), ("the Philippines", "Manila"),
    ("Indonesia", "Jakarta"), ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Scotland", "Edinburgh"),
    ("Switzerland", "Bern"), ("Ukraine", "Kyiv"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"),
    ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad"), ("New Zealand", "Wellington"),
    ("Venezuela", "Caracas"), ("Romania", "Bucharest"), ("Czechia", "Prague"),
]

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
    ("happy", "sad"), ("open", "closed"), ("black", "white"), ("left", "right"), ("old", "new"),
    ("early", "late"), ("light", "dark"), ("rich", "poor"), ("strong", "weak"), ("wet", "dry"),
    ("hard", "soft"), ("full", "empty"), ("high", "low"), ("true", "false"), ("win", "lose"),
    ("inside", "outside"), ("begin", "end"), ("push", "pull"), ("buy", "sell"), ("thick", "thin"),
    ("loud", "quiet"), ("clean", "dirty"), ("north", "south"), ("east", "west"), ("love", "hate"),
    ("tall", "short"), ("heavy", "light"), ("young", "old"), ("near", "far"), ("good", "bad"),
    ("always", "never"), ("first", "last"), ("give", "take"), ("question", "answer"), ("friend", "enemy"),
]

# (singular, plural, wrong plural)
PLURALS = [
    ("mouse", "mice", "mouses"), ("child", "children", "childs"), ("foot", "feet", "foots"),
    ("tooth", "teeth", "tooths"), ("man", "men", "mans"), ("woman", "women", "womans"),
    ("goose", "geese", "gooses"), ("person", "people", "persons"), ("box", "boxes", "boxs"),
    ("city", "cities", "citys"), ("knife", "knives", "knifes"), ("leaf", "leaves", "leafs"),
    ("wolf", "wolves", "wolfs"), ("baby", "babies", "babys"), ("half", "halves", "halfs"),
    ("loaf", "loaves", "loafs"), ("wife", "wives", "wifes"), ("church", "churches", "churchs"),
    ("story", "stories", "storys"), ("dish", "dishes", "dishs"),
]

# (present, past, wrong past)
PAST = [
    ("go", "went", "goed"), ("eat", "ate", "eated"), ("see", "saw", "seed"), ("run", "ran", "runned"),
    ("write", "wrote", "writed"), ("take", "took", "taked"), ("give", "gave", "gived"),
    ("come", "came", "comed"), ("buy", "bought", "buyed"), ("think", "thought", "thinked"),
    ("bring", "brought", "bringed"), ("sing", "sang", "singed"), ("swim", "swam", "swimmed"),
    ("drink", "drank", "drinked"), ("speak", "spoke", "speaked"), ("find", "found", "finded"),
    ("teach", "taught", "teached"), ("sleep", "slept", "sleeped"), ("fly", "flew", "flied"),
    ("make", "made", "maked"),
]

SEQUENCES = [
    ("1, 2, 3, 4,", "5", ["6", "8"]), ("2, 4, 6, 8,", "10", ["9", "12"]), ("5, 10, 15, 20,", "25", ["30", "21"]),
    ("10, 20, 30, 40,", "50", ["60", "41"]), ("3, 6, 9, 12,", "15", ["14", "18"]), ("10, 9, 8, 7,", "6", ["5", "8"]),
    ("1, 3, 5, 7,", "9", ["8", "11"]), ("100, 200, 300,", "400", ["500", "301"]), ("7, 8, 9,", "10", ["11", "12"]),
    ("one, two, three, four,", "five", ["six", "seven"]), ("first, second, third,", "fourth", ["fifth", "sixth"]),
    ("Monday, Tuesday, Wednesday,", "Thursday", ["Friday", "Sunday"]),
    ("Thursday, Friday, Saturday,", "Sunday", ["Monday", "Tuesday"]),
    ("January, February, March,", "April", ["May", "June"]), ("June, July, August,", "September", ["October", "December"]),
    ("A, B, C, D,", "E", ["F", "G"]), ("a, b, c, d, e,", "f", ["g", "h"]),
    ("spring, summer, autumn,", "winter", ["summer", "spring"]),
    ("ten, twenty, thirty,", "forty", ["fifty", "sixty"]), ("20, 30, 40, 50,", "60", ["70", "55"]),
]

FACTS = [
    ("The largest planet in our solar system is", "Jupiter", ["Mars", "Venus"]),
    ("The planet closest to the Sun is", "Mercury", ["Jupiter", "Saturn"]),
    ("The planet we live on is called", "Earth", ["Mars", "Venus"]),
    ("Bees make", "honey", ["milk", "bread"]),
    ("The color of grass is", "green", ["blue", "red"]),
    ("The color of a ripe banana is", "yellow", ["blue", "green"]),
    ("The color of snow is", "white", ["black", "green"]),
    ("Water is made of hydrogen and", "oxygen", ["iron", "gold"]),
    ("The chemical symbol for gold is", "Au", ["Ag", "Fe"]),
    ("The chemical symbol for water is", "H2O", ["CO2", "NaCl"]),
    ("The Eiffel Tower is in", "Paris", ["London", "Rome"]),
    ("The Statue of Liberty is in New", "York", ["Jersey", "Orleans"]),
    ("Shakespeare wrote Romeo and", "Juliet", ["Hamlet", "Othello"]),
    ("The first president of the United States was George", "Washington", ["Lincoln", "Jefferson"]),
    ("The author of Harry Potter is J. K.", "Rowling", ["Tolkien", "Dickens"]),
    ("A baby dog is called a", "puppy", ["kitten", "calf"]),
    ("A baby cat is called a", "kitten", ["puppy", "lamb"]),
    ("Ice is frozen", "water", ["milk", "sand"]),
    ("The Sun rises in the", "east", ["west", "north"]),
    ("The freezing point of water in Celsius is", "zero", ["ten", "hundred"]),
    ("The opposite of north is", "south", ["east", "west"]),
    ("The tallest animal in the world is the", "giraffe", ["elephant", "horse"]),
    ("The largest ocean on Earth is the", "Pacific", ["Atlantic", "Indian"]),
    ("People in Spain speak", "Spanish", ["French", "German"]),
    ("People in France speak", "French", ["Spanish", "Italian"]),
    ("People in Germany speak", "German", ["French", "Spanish"]),
    ("People in Italy speak", "Italian", ["German", "French"]),
    ("People in Japan speak", "Japanese", ["Chinese", "Korean"]),
    ("People in Brazil speak", "Portuguese", ["Spanish", "French"]),
    ("Cows give us", "milk", ["honey", "wool"]),
    ("Sheep give us", "wool", ["milk", "honey"]),
    ("The Great Wall is in", "China", ["Japan", "India"]),
    ("The pyramids of Giza are in", "Egypt", ["Mexico", "Greece"]),
    ("We see with our", "eyes", ["ears", "hands"]),
    ("We hear with our", "ears", ["eyes", "nose"]),
    ("Two plus two equals", "four", ["five", "three"]),
    ("Ten minus three equals", "seven", ["six", "eight"]),
    ("Three times three equals", "nine", ["six", "twelve"]),
    ("The number after ninety-nine is one", "hundred", ["thousand", "million"]),
    ("Romeo and Juliet was written by William", "Shakespeare", ["Wordsworth", "Blake"]),
]


def raw_items() -> list[dict]:
    """Every written item with its prompt, answer, category and two distractors."""
    rng = random.Random(SEED)
    items: list[dict] = []

    def add(prompt, answer, distractors, category):
        choices = [answer] + list(distractors)
        rng.shuffle(choices)
        items.append({"prompt": prompt, "answer": " " + answer, "choices": [" " + c for c in choices], "category": category})

    caps = [c for _, c in CAPITALS]
    for i, (country, capital) in enumerate(CAPITALS):
        demo_country, demo_capital = CAPITALS[(i + 7) % len(CAPITALS)]
        prompt = f"The capital of {demo_country} is {demo_capital}. The capital of {country} is"
        others = [c for c in caps if c not in (capital, demo_capital)]
        add(prompt, capital, rng.sample(others, 2), "capital")
    for i, (word, other) in enumerate(OPPOSITES):
        dw, do = OPPOSITES[(i + 11) % len(OPPOSITES)]
        prompt = f"The opposite of {dw} is {do}. The opposite of {word} is"
        valid = {b for a, b in OPPOSITES if a == word} | {a for a, b in OPPOSITES if b == word}
        others = sorted({w for pair in OPPOSITES for w in pair} - valid - {word, dw, do})
        add(prompt, other, [word, rng.choice(others)], "opposite")
    for i, (sg, pl, wrong) in enumerate(PLURALS):
        ds, dp, _ = PLURALS[(i + 5) % len(PLURALS)]
        prompt = f"One {ds}, two {dp}. One {sg}, two"
        add(prompt, pl, [wrong, sg], "plural")
    for i, (pres, past, wrong) in enumerate(PAST):
        dpr, dpa, _ = PAST[(i + 3) % len(PAST)]
        prompt = f"Today I {dpr}; yesterday I {dpa}. Today I {pres}; yesterday I"
        add(prompt, past, [wrong, pres], "past_tense")
    for prompt, answer, distractors in SEQUENCES:
        add(prompt, answer, distractors, "sequence")
    for prompt, answer, distractors in FACTS:
        add(prompt, answer, distractors, "fact")
    return items


def is_clean(tok, prompt: str, continuation: str) -> bool:
    """True when ``continuation`` tokenises the same alone as after ``prompt``."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return enc(prompt + continuation) == enc(prompt) + enc(continuation)


def items_with_splits(tok) -> list[dict]:
    """Drop unclean items; split each category alternately into calib / heldout (seeded)."""
    rng = random.Random(SEED + 1)
    kept = [it for it in raw_items() if not it["prompt"].endswith(" ") and len(set(it["choices"])) == 3
            and all(is_clean(tok, it["prompt"], c) for c in it["choices"])]
    out = []
    for cat in dict.fromkeys(it["category"] for it in kept):
        group = [it for it in kept if it["category"] == cat]
        order = list(range(len(group)))
        rng.shuffle(order)
        for rank, idx in enumerate(order):
            group[idx]["split"] = "calib" if rank % 2 == 0 else "heldout"
        out += group
    return [{"prompt": it["prompt"], "answer": it["answer"], "choices": it["choices"], "split": it["split"],
             "category": it["category"]} for it in out]


def evaluate(path, limit: int | None = None) -> dict:
    """Score the task on smollm2-135m: greedy top-1, 3-choice accuracy, mean log p(answer).

    log p(answer | prompt) comes from ``probes.decoding.score_continuation``; the three
    choices are scored in one right-padded batch (summed token log-probs), and top-1 means
    every answer token is the argmax under teacher forcing (greedy decoding emits it).
    """
    import time

    import torch

    from mechscope.probes.decoding import score_continuation
    from mechscope.probes.models import load
    from mechscope.probes.tokens import encode

    model = load().model
    items = [json.loads(line) for line in open(path, encoding="utf-8")][:limit]
    stats: dict = {}
    t0 = time.time()
    for n, it in enumerate(items):
        prompt_ids = encode(model, it["prompt"]).tolist()
        conts = [encode(model, c, prepend_bos=False).tolist() for c in it["choices"]]
        width = len(prompt_ids) + max(map(len, conts))
        batch = torch.zeros(len(conts), width, dtype=torch.long)
        for r, c in enumerate(conts):
            batch[r, : len(prompt_ids) + len(c)] = torch.tensor(prompt_ids + c)
        with torch.no_grad():
            logp = model(batch).float().log_softmax(-1)
        scores, argmax_ok = [], []
        for r, c in enumerate(conts):
            pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(c))
            scores.append(float(logp[r, pos, torch.tensor(c)].sum()))
            argmax_ok.append(logp[r, pos].argmax(-1).tolist() == c)
        a = it["choices"].index(it["answer"])
        lp = float(score_continuation(model, it["prompt"], conts[a]).sum())
        assert abs(lp - scores[a]) < 1e-3 * max(1.0, abs(lp)), (it, lp, scores[a])  # batch == reference
        choice_ok = max(range(len(scores)), key=scores.__getitem__) == a
        for key in (it["split"], f"{it['split']}/{it['category']}"):
            s = stats.setdefault(key, {"n": 0, "top1": 0, "choice": 0, "logp": 0.0})
            s["n"] += 1
            s["top1"] += argmax_ok[a]
            s["choice"] += choice_ok
            s["logp"] += lp
        if not choice_ok or not argmax_ok[a]:
            print(f"miss top1={argmax_ok[a]} choice={choice_ok} {it['prompt']!r} -> {it['answer']!r} "
                  f"scores={[round(x, 2) for x in scores]} {it['choices']}", flush=True)
        if n % 10 == 0:
            print(f"[{n}/{len(items)}] {time.time() - t0:.0f}s", flush=True)
    for key in sorted(stats):
        s = stats[key]
        print(f"{key:28s} n={s['n']:3d}  top1={s['top1'] / s['n']:.3f}  3-choice={s['choice'] / s['n']:.3f}  "
              f"mean log p(answer)={s['logp'] / s['n']:.3f}", flush=True)
    return stats
