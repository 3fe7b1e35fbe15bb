"""The first train step's XLA program, compiled on a second thread while the run measures before training.

The recipe traces and lowers the step Keras' `fit` will call (same jitted function, same state,
its first batch), hands the compile to a thread, and goes on: the measurement's own Python work
(the decode copies, tracing its generate program) runs meanwhile. JAX's in-memory caches then
give `fit`'s first call that executable: no trace, no compile. XLA:CPU compiles one program at a
time (two compiles on two threads took 8.1 s, one 4.3 s), so the gain is the overlap with Python
and execution, not with the generate program's compile: on the 270M job with a cold XLA cache,
82.6 and 84.1 s against 85.3 and 87.5 s without.

Only an optimisation: where anything differs (Keras builds another function, the batch has
another shape), `fit` traces and compiles as it always did. Tracing stays on the calling thread:
kft swaps layer classes while it traces generate programs (kft.generation.decode_kernels), and a
second thread tracing then would see them.
"""

from __future__ import annotations

import inspect
import threading


def start(fit_model, batches) -> threading.Thread | None:
    """Lower `fit_model`'s train step for `batches`' first batch and compile it on a thread
    (returned: `finish` it before `fit`); None where Keras' train function is not a jitted step,
    or where lowering it here fails (fit then builds its own and reports any error itself)."""
    try:
        lowered = _lower(fit_model, batches)
    except Exception:  # noqa: BLE001 - an optimisation only; tests/test_train_step_ahead.py checks it is used
        lowered = None
    if lowered is None:
        fit_model.train_function = None
        return None
    thread = threading.Thread(
        target=_compile, args=(lowered,), name="kft-train-step-compile", daemon=True
    )
    thread.start()
    return thread


def _lower(fit_model, batches):
    from keras.src.backend.jax.trainer import JAXEpochIterator

    if fit_model.steps_per_execution != 1 or len(batches) == 0:
        return None
    # The first batch as fit's own iterator hands it over (numpy, or placed under a distribution).
    iterator = JAXEpochIterator(x=batches, shuffle=False, steps_per_execution=1)
    for _, _, batch_iterator in iterator:
        data = next(batch_iterator)
        break
    # In fit's order: the optimizer's variables, then the train function (its out_shardings cover them).
    fit_model._symbolic_build(data_batch=data)
    fit_model.make_train_function()
    step = inspect.getclosurevars(fit_model.train_function).nonlocals.get("step_function")
    if not hasattr(step, "lower"):
        return None  # run eagerly, or a Keras whose train function we do not know
    state = fit_model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    return step.lower(state, data)


def _compile(lowered) -> None:
    try:
        lowered.compile()
    except Exception:  # noqa: BLE001 - fit compiles it again and reports what went wrong
        pass


def finish(thread: threading.Thread | None) -> None:
    """Wait for the compile (fit would otherwise start a second one of the same program)."""
    if thread is not None:
        thread.join()
