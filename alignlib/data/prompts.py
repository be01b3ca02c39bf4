"""The instruction the bundled GSM8K and MATH prompts end with (the arithmetic sets have their own,
in tasks.py)."""

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def prompt_of(problem: str) -> str:
    """A problem as a prompt: the problem, then the boxed-answer instruction."""
    return f"{problem}\n{INSTRUCTION}"
