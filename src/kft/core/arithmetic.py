"""Whole-number rounding that shapes, batches and chunks are cut with (ints or numpy arrays)."""


def ceil_div(a, b):
    """The smallest whole number of `b`-sized pieces that hold `a`."""
    return -(-a // b)


def round_up(a, b):
    """`a` rounded up to a multiple of `b`."""
    return ceil_div(a, b) * b
