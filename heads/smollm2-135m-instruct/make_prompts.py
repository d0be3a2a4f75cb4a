"""Writes train_prompts.jsonl: the requests the shipped SmolLM2 head was trained on.

1300 templates x topics (chat, code, math, lists, explanations), drawn with a fixed seed, and
500 of the requests the target wrote itself for the first training run (self_written.jsonl). None is a
prompt of examples/prompts/heldout.jsonl (checked).

    python heads/smollm2-135m-instruct/make_prompts.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
TOPICS = """cooking pasta|the solar system|ancient Rome|learning to code|healthy sleep|traveling on a budget|jazz music|
dogs|cats|saving money|high school|football|rainy weather|vegetable gardens|science fiction movies|geometry|electricity|
friendship|remote work|electric cars|the deep ocean|mystery novels|laptops|painting with watercolors|learning Spanish|
board games|chemistry experiments|big cities|winter holidays|robots|volcanoes|bees|the internet|coffee|tea|baking bread|
running|yoga|birds|mountains|deserts|rainforests|the moon|black holes|dinosaurs|the Renaissance|World War II|the printing press|
photography|chess|video games|social media|public speaking|job interviews|time management|climate change|recycling|
solar power|wind energy|airplanes|trains|bicycles|the human heart|the immune system|vitamins|meditation|writing a novel|
poetry|theater|smartphones|cybersecurity|passwords|databases|the stock market|credit cards|renting an apartment|
moving house|camping|fishing|the Olympics|basketball|tennis|swimming|chocolate|pizza|sushi|spices|birthday parties|
weddings|babysitting|pets|houseplants|the weather forecast|earthquakes|rivers|islands|penguins|elephants|whales|
the brain|memory|habits|motivation|kindness|honesty|teamwork|leadership|small businesses|marketing|customer service|
email etiquette|museums|libraries|history of writing|the alphabet|prime numbers|fractions|percentages|probability|
statistics|Python lists|recursion|sorting algorithms|web browsers|HTML|operating systems|cloud storage|artificial intelligence""".replace("\n", "").split("|")

CHAT = ["What do you think about {t}?", "Tell me something interesting about {t}.", "I want to get into {t}. Where should I start?",
        "Why do people like {t}?", "Can you give me some advice about {t}?", "Write a short story about {t}.",
        "Write a short poem about {t}.", "Describe {t} to a ten-year-old.", "What is a common mistake people make with {t}?",
        "I'm curious about {t}. What should I know?", "Write a friendly email to a friend about {t}.",
        "Summarize the most important ideas about {t} in a paragraph.", "What are the pros and cons of {t}?",
        "Tell me a fun fact about {t}.", "How has {t} changed over the last hundred years?", "Explain {t} in simple terms.",
        "What questions should I ask an expert on {t}?", "Compare {t} and {u}."]
LISTS = ["List five facts about {t}.", "Give me a list of tips about {t}.", "List three common questions about {t}.",
         "What are five things a beginner should know about {t}?", "Name four benefits of {t}.",
         "Make a checklist for getting started with {t}.", "List the main steps to learn {t}.",
         "Give me ten words related to {t}.", "List some books or resources about {t}.", "What are three myths about {t}?"]
CODE_TASKS = ["reverses a string", "returns the largest number in a list", "counts the words in a sentence",
              "checks whether a string is a palindrome", "sums the even numbers in a list", "converts Celsius to Fahrenheit",
              "removes duplicates from a list", "returns the n-th Fibonacci number", "sorts a list of names alphabetically",
              "merges two dictionaries", "finds the average of a list of numbers", "checks whether a year is a leap year",
              "capitalizes every word in a sentence", "returns the first non-repeated character of a string",
              "computes the greatest common divisor of two numbers", "flattens a nested list", "counts how often each letter appears",
              "checks whether two strings are anagrams", "returns the squares of the numbers from 1 to n",
              "finds the second smallest number in a list", "converts a number to binary", "validates an email address",
              "reads a CSV file and prints each row", "computes the median of a list", "splits a list into chunks of size k"]
CODE = ["Write a Python function that {c}.", "Write a JavaScript function that {c}.", "How would you write code that {c}?",
        "Write a short Python program that {c}, and explain it.", "Write a function in C that {c}.",
        "Explain step by step how to write a Python function that {c}."]
CODE_QA = ["What is a {k} in Python?", "Explain {k} with a short example.", "When should I use a {k}?",
           "What is the difference between a {k} and a {k2}?"]
CODE_KW = ["list", "dictionary", "set", "tuple", "class", "function", "loop", "while loop", "variable", "string",
           "generator", "decorator", "module", "exception", "lambda", "list comprehension", "recursion", "API", "SQL join",
           "hash table", "stack", "queue", "binary search", "git branch"]


def math_prompt(r: random.Random) -> str:
    a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(2, 20)
    forms = [f"What is {a} plus {b}?", f"What is {a} times {c}? Show your work.", f"What is {a * c} divided by {c}?",
             f"Solve for x: {c}x + {a} = {c * b + a}.", f"What is {c * 5} percent of {a * 10}?",
             f"A car drives {a} km per hour for {c} hours. How far does it travel?",
             f"If a shirt costs {a} dollars and is {c * 5} percent off, what is the sale price?",
             f"What is the perimeter of a rectangle that is {a} cm by {b} cm?",
             f"What is the area of a triangle with base {a} and height {c}?",
             f"I have {a} marbles and give {c} to each of my {c // 2 + 2} friends. How many do I have left?",
             f"Is {a * 2 + 1} a prime number? Explain.", f"What is {c} squared plus {a}?",
             f"Convert {a} kilometers to meters.", f"What is the average of {a}, {b} and {c}?",
             f"Explain how to multiply {a} by {b} in your head.", f"Simplify the fraction {c * 2}/{c * 6}.",
             f"What is {a}% of {b * 10}?", f"Round {a}.{b} to the nearest whole number and explain why."]
    return r.choice(forms)


def main(n: int = 1300, n_own: int = 500, seed: int = 0) -> None:
    r = random.Random(seed)
    held = {json.loads(line)["prompt"] for line in (HERE / "../../examples/prompts/heldout.jsonl").read_text().splitlines()}
    out: list[str] = []
    seen = set(held)
    while len(out) < n:
        kind = r.choices(["chat", "list", "code", "code_qa", "math"], weights=[4, 2, 2, 1, 2])[0]
        t, u = r.sample(TOPICS, 2)
        if kind == "chat":
            p = r.choice(CHAT).format(t=t, u=u)
        elif kind == "list":
            p = r.choice(LISTS).format(t=t)
        elif kind == "code":
            p = r.choice(CODE).format(c=r.choice(CODE_TASKS))
        elif kind == "code_qa":
            k, k2 = r.sample(CODE_KW, 2)
            p = r.choice(CODE_QA).format(k=k, k2=k2)
        else:
            p = math_prompt(r)
        if p not in seen:
            seen.add(p)
            out.append(p)
    own = [json.loads(line)["messages"][-1]["content"] for line in (HERE / "self_written.jsonl").read_text().splitlines()]
    lines = [json.dumps({"prompt": p}) for p in out] + [json.dumps({"prompt": p}) for p in own[:n_own] if p not in held]
    (HERE / "train_prompts.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} prompts ({len(out)} templated, {len(lines) - len(out)} written by the target)")


if __name__ == "__main__":
    main()
