"""One switch between fused kernels (torch.compile) and the same functions run eagerly.

The optimizer's passes over the weights (draw z, perturb, update, round) are
written as plain tensor functions. Eagerly, each line is a separate pass over
memory and z is materialised; compiled, the whole function becomes one loop that
draws the noise in registers (C++/OpenMP on CPU, Triton on CUDA). Both give the
same numbers up to float rounding, which the tests check, so `fused=false` is the
reference the fused path is held to, and the way out where no compiler exists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, wraps

from zo import ZOError

# Each kernel is specialised per dtype and argument kind; the default of 8 graphs per
# function would silently fall back to eager on mixed-precision runs.
RECOMPILE_LIMIT = 64


def kernel(fn: Callable, fused: bool) -> Callable:
    """`fn` itself, or its compiled version (built once per process, on first call)."""
    return _compiled(fn) if fused else fn


@cache
def _compiled(fn: Callable) -> Callable:
    import torch._dynamo.config

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # Rounding to fp16/bf16 and back is the point of stochastic rounding: keep inductor from eliding it.
    compiled = torch.compile(fn, dynamic=True, options={"emulate_precision_casts": True})

    @wraps(fn)
    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise ZOError(
                f"torch.compile could not build the fused optimizer kernel {fn.__name__} ({reason}); "
                "install a C++ compiler (e.g. apt install g++) or run with optimizer.fused=false"
            ) from err

    return call
