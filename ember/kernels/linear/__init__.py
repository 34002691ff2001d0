"""LinearMethod: how a projection's weight is stored and multiplied. One file per method."""

from ember.kernels.linear.base import LINEAR_METHODS, LinearMethod
from ember.kernels.linear import bcq, dense, int4, int8, lmul, planes, ternary, tmac, w4a4  # noqa: F401  (register the methods)


def get_linear_method(name: str) -> LinearMethod:
    return LINEAR_METHODS.create(name)


__all__ = ["LINEAR_METHODS", "LinearMethod", "get_linear_method"]
