"""Golden cases per official class of Magpie's instruction_post_process."""
import pytest

from pipeline.synth.magpie_sanitizer import sanitize_instruction

LLAMA = [
    ("**What is the boiling point of water?** It is 100C.", "What is the boiling point of water?", 1),
    ('"How do plants grow?" he asked.', "How do plants grow?", 2.1),
    ('"Write a poem about rain"\nThanks', "Write a poem about rain", 2.2),
    ("<b>Explain gravity</b>\nmore", "<b>Explain gravity</b>\nmore", 3),  # official no-op on the first line, kept
    ("Compute 2+2. The answer is: 4", "Compute 2+2.", 4),
    ("Solve x+1=2.\n## Step 1: subtract", "Solve x+1=2.", 5),
    ("Consider the following:\n# Header\nbody", "Consider the following:", 6.1),
    ("Given these facts:\nWhich is true? Or not", "Given these facts:\nWhich is true?", 6.2),
    ("List three fruits:\napple", "List three fruits:", 6.3),
    ("Question: Why is the sky blue? Because.", "Why is the sky blue?", 99.1),
    ("1. Describe a cat\nIt has fur", "Describe a cat", 99.2),
]
GEMMA = [
    ("Task: Explain recursion:\nUse an example", "Explain recursion:", 5.3),
    ("Tell me a joke?\nSure", "Tell me a joke?", 6.1),
    ("Write a haiku\nabout spring", "Write a haiku", 6.2),
    ("Describe it.\n## Step 1 go", "Describe it.", 6.2),  # the step rule is Llama-3 only
]


@pytest.mark.parametrize("raw, clean, cls", LLAMA)
def test_llama3_classes(raw, clean, cls):
    assert sanitize_instruction(raw, "llama-3.1") == (clean, cls)


@pytest.mark.parametrize("raw, clean, cls", GEMMA)
def test_gemma2_classes(raw, clean, cls):
    assert sanitize_instruction(raw, "gemma-2") == (clean, cls)


@pytest.mark.parametrize("family", [None, "qwen2.5", "phi-3"])
def test_other_families_are_untouched(family):
    assert sanitize_instruction("Task: x\ny", family) == ("Task: x\ny", 0)
