r"""URIAL (Lin et al., arXiv 2312.01552): a *base* model answers in an assistant's style when its prompt is a system
block and three constant stylistic examples, in the official `urial_backticks` format (Re-Align/URIAL,
src/fastchat_conversation.py): after the prefix, each turn is "\n# Query:\n```\n{query}\n```\n" and
"\n# Answer:\n```\n{answer}\n```\n", the prompt ends with an open "\n# Answer:\n```\n", generation stops at
"# Query" or "# User", and the fences are removed from the output. The instruction block and the examples are our
wording (answers open with a greeting, are structured, and close with an offer of more help, as the official ones);
pass the official file's text as `prefix` to use it instead.
"""
from __future__ import annotations

PREFIX = '''# Instruction

Below are conversations between a person and an AI assistant. The person's queries follow "# Query:" and the
assistant's answers follow "# Answer:". The assistant is helpful, honest and careful; its answers are well
organised, detailed where it helps, and friendly.

# Query:
```
What are some good ways to save money on groceries?
```

# Answer:
```
Hi! Here are a few ways that work for most households:

1. Plan meals for the week and shop with a list, so you buy only what you will use.
2. Compare unit prices rather than package prices; store brands are often the best value.
3. Buy staples such as rice, beans and oats in bulk, and seasonal fruit and vegetables fresh.
4. Cook in batches and freeze portions to cut waste and takeaway spending.

Small changes add up quickly. Let me know if you would like a sample weekly plan!
```

# Query:
```
A train travels 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed?
```

# Answer:
```
Hello! Average speed is total distance divided by total time.

- Total distance: 180 km + 120 km = 300 km
- Total time: 2 h + 1.5 h = 3.5 h
- Average speed: 300 km / 3.5 h ≈ 85.7 km/h

So the train's average speed is about 85.7 km/h. Happy to help with more problems like this!
```

# Query:
```
How can I help a friend who seems stressed at work?
```

# Answer:
```
Hi! It's kind of you to want to help. A few things that usually make a difference:

1. Listen first: ask how they are doing and let them talk without rushing to fix things.
2. Offer concrete help, such as a walk, a meal together, or a hand with a task.
3. Encourage rest and activities they enjoy, and gently suggest professional support if the stress lasts.

Being there consistently matters more than having perfect advice. I hope this helps!
```
'''
STOP = ("# Query", "# User")
FENCE = "```"


def render(history: list[dict], prefix: str = PREFIX) -> str:
    r"""The URIAL prompt for a conversation that ends with a user turn (system turns are not shown to a base model).

    >>> render([{"role": "user", "content": "Hi?"}], prefix="P")
    'P\n# Query:\n```\nHi?\n```\n\n# Answer:\n```\n'
    """
    turns = [m for m in history if m["role"] in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("a URIAL prompt needs a conversation that ends with a user turn")
    text = prefix
    for message in turns:
        role = "# Query:" if message["role"] == "user" else "# Answer:"
        text += f"\n{role}\n{FENCE}\n{message['content']}\n{FENCE}\n"
    return text + f"\n# Answer:\n{FENCE}\n"


def answer(text: str | None) -> str | None:
    r"""A base model's URIAL continuation: cut at the closing fence, the fences removed, stripped.

    >>> answer("Hello! Paris.\n```\n\n")
    'Hello! Paris.'
    """
    return None if text is None else text.split(FENCE)[0].replace(FENCE, "").strip()
