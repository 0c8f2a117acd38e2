"""The theory lab's exact part: token trees (Def. 3.1/3.3), Huffman code lengths (Theorem 3.4), joint
training's mixture code and the elasticity law (Theorem 4.2), and synthetic worlds with known
distributions. Derivations: docs/theory.md.

    from elasticity.theory import TokenTree, huffman_code_lengths, expected_code_length
    from elasticity.theory import joint_rates, law_table, World
"""

from elasticity.theory.huffman import CodeLengths, expected_code_length, huffman_code_lengths
from elasticity.theory.law import LawRow, law_table, rates_and_slopes
from elasticity.theory.mixture import JointRates, joint_code, joint_rates, mixture_rates
from elasticity.theory.rates import NORMALIZATIONS, normalized_rate
from elasticity.theory.tree import TokenTree
from elasticity.theory.worlds import World, WorldConfig, make_world

__all__ = [
    "CodeLengths", "JointRates", "LawRow", "NORMALIZATIONS", "TokenTree", "World", "WorldConfig",
    "expected_code_length", "huffman_code_lengths", "joint_code", "joint_rates", "law_table",
    "make_world", "mixture_rates", "normalized_rate", "rates_and_slopes",
]
