"""The audio every backbone takes: 16 kHz mono.

Kept in a module of its own, free of torch, so the audio layer and the CLI can
use the rate without loading the deep-learning stack.
"""

#: Every backbone takes 16 kHz mono audio; every stage after the source works at this rate.
SAMPLE_RATE = 16_000
