"""Format reward: does the completion have the shape the parser and the corpus expect?

rephrase: 1.0 when the lead line opens the answer exactly once and a rewrite follows it; 0.5 when it
appears once but after some chatter; 0 when missing, repeated or followed by nothing.

reformat: the mean of four checks, so partial progress is visible within a group:
  heading present exactly once; 1..MAX_ENTRIES entries parsed; share of entries tagged with one of
  the five kinds; no stray lines outside the entries.
"""
from __future__ import annotations

from synpro_megatron.formats import (LEAD_RE, MAX_ENTRIES, check_kind, completion_text,
                                                count_marker, parse_reformat_detailed, strip_marker)


def format_reward(kind: str, completion) -> float:
    text = completion_text(completion).strip()
    if check_kind(kind) == "rephrase":
        if count_marker("rephrase", text) != 1 or len(strip_marker("rephrase", text).split()) < 3:
            return 0.0
        return 1.0 if LEAD_RE.match(text) else 0.5
    parsed = parse_reformat_detailed(text)
    n = len(parsed.entries)
    checks = [
        count_marker("reformat", text) == 1,
        1 <= n <= MAX_ENTRIES,
        (sum(e.kind is not None for e in parsed.entries) / n) if n else 0.0,
        1.0 if n and parsed.stray_lines == 0 else 0.0,
    ]
    return float(sum(float(c) for c in checks) / len(checks))


def format_rewards(kind: str, completions) -> list[float]:
    return [format_reward(kind, c) for c in completions]
