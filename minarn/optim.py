"""Optimizers over named arrays: SGD, Adam and Adamax (the paper's optimizer, Eq. 3-6).

An optimizer sees only two dicts with the same keys, ``params`` and ``grads`` (``"conv2d_5/kernel" -> array``),
and keeps its per-parameter state ("slots") keyed by the same names; layers know nothing about optimizers.
``apply(params, grads)`` updates every parameter array *in place* and in its own dtype (a float32 parameter
is updated with float32 arithmetic; a float64 gradient is cast to float32 first, as Keras does).

``state_dict()`` gives plain NumPy arrays and Python scalars (name, hyperparameters, ``iterations``,
``learning_rate`` and slots keyed ``"<slot>/<param name>"``, e.g. ``"m/conv2d/kernel"``) that ``np.savez``
can store; ``load_state_dict`` restores them exactly, so a resumed run continues bit for bit.

SGD and Adam follow Keras 3 (``keras/src/optimizers/{sgd,adam}.py``) operation by operation. Adamax has two
forms: ``"paper"`` (default) is the paper's Eq. 3-6 with epsilon inside the max; ``"keras"`` is Keras 3's
update with epsilon added to the denominator.

References
----------
D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Sec. 2 and 7.1
(Adamax). https://arxiv.org/abs/1412.6980
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["SGD", "Adam", "Adamax", "Optimizer", "get_optimizer"]


def _as_scalar(value: Any) -> Any:
    """A 0-d array (what ``np.load`` gives back for a saved scalar) as a Python scalar; others unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_fraction(name: str, value: float, upper_inclusive: bool = False) -> float:
    """``value`` as a float in [0, 1) (or [0, 1]); ``ValueError`` naming the hyperparameter otherwise."""
    value = float(value)
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def _check_epsilon(name: str, value: float) -> float:
    """``value`` as a finite float >= 0 (0 is allowed: the scaling-invariance property needs it)."""
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


class Optimizer:
    """Base class: checks the two dicts, keeps the step counter, the learning rate and the named slots.

    Subclasses set ``name`` and ``slot_names`` and implement ``_update(key, param, grad, step)``, which
    changes ``param`` (and its slots) in place; ``step`` is 1 on the first ``apply``.
    """

    name: str = "optimizer"
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate  # validated by the property setter
        self._iterations = 0
        self._slots: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slot_names}

    # -- learning rate and step counter -----------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """Current learning rate (a Python float); set it between steps, e.g. for a schedule."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        try:
            lr = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{type(self).__name__}: learning_rate must be a number, got {value!r}") from exc
        if not (math.isfinite(lr) and lr > 0.0):
            raise ValueError(f"{type(self).__name__}: learning_rate must be finite and > 0, got {lr!r}")
        self._learning_rate = lr

    @property
    def iterations(self) -> int:
        """Number of ``apply`` calls so far (Keras' ``optimizer.iterations``); the next step is
        ``t = iterations + 1``."""
        return self._iterations

    # -- the update ---------------------------------------------------------------------------------
    def apply(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Take one step: update every array in ``params`` in place using ``grads`` (same keys and shapes).

        Everything is checked before anything changes, so a bad call leaves params and state untouched.
        Raises ``KeyError`` for a missing or extra gradient key, ``ValueError`` for a shape mismatch,
        ``TypeError`` for a parameter that is not a writable floating-point ``np.ndarray``.
        """
        self._check(params, grads)
        step = self._iterations + 1
        for key, param in params.items():
            # Keras casts the gradient to the variable dtype: float32 weights get float32 arithmetic.
            grad = np.asarray(grads[key], dtype=param.dtype)
            self._update(key, param, grad, step)
        self._iterations = step

    def _update(self, key: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        raise NotImplementedError

    def _check(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        who = type(self).__name__
        missing = [k for k in params if k not in grads]
        if missing:
            raise KeyError(f"{who}.apply: no gradient for parameter(s) {missing}")
        extra = [k for k in grads if k not in params]
        if extra:
            raise KeyError(f"{who}.apply: gradient(s) for unknown parameter(s) {extra}")
        for key, param in params.items():
            if not isinstance(param, np.ndarray) or not np.issubdtype(param.dtype, np.floating):
                raise TypeError(f"{who}.apply: parameter {key!r} must be a floating-point np.ndarray, "
                                f"got {type(param).__name__} {getattr(param, 'dtype', '')}")
            if not param.flags.writeable:
                raise TypeError(f"{who}.apply: parameter {key!r} is read-only; updates are in place")
            grad_shape = np.shape(grads[key])
            if grad_shape != param.shape:
                raise ValueError(f"{who}.apply: gradient {key!r} has shape {grad_shape}, "
                                 f"expected the parameter's shape {param.shape}")
            for slot in self.slot_names:
                arr = self._slots[slot].get(key)
                if arr is not None and (arr.shape != param.shape or arr.dtype != param.dtype):
                    raise ValueError(f"{who}.apply: state {slot}/{key} is {arr.dtype}{arr.shape}, "
                                     f"parameter {key!r} is {param.dtype}{param.shape}")

    def _slot(self, slot: str, key: str, param: np.ndarray) -> np.ndarray:
        """The slot array for ``key``, created as zeros in the parameter's dtype on first use."""
        arr = self._slots[slot].get(key)
        if arr is None:
            arr = np.zeros_like(param)
            self._slots[slot][key] = arr
        return arr

    # -- state ----------------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Hyperparameters other than the learning rate (Python scalars)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``name``, hyperparameters, ``iterations``, ``learning_rate`` and
        copies of the slots keyed ``"<slot>/<param name>"``. Values are Python scalars, strings and arrays,
        so ``np.savez(path, **opt.state_dict())`` works (no pickling)."""
        state: dict[str, Any] = {
            "name": self.name,
            "learning_rate": self._learning_rate,
            "iterations": self._iterations,
            **self.get_config(),
        }
        for slot, arrays in self._slots.items():
            for key, arr in arrays.items():
                state[f"{slot}/{key}"] = arr.copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (also as read back by ``np.load``); replaces all slots.

        Raises ``ValueError`` if the state belongs to another optimizer or holds an unknown entry, and
        ``KeyError`` if a required entry is missing.
        """
        who = type(self).__name__
        name = str(_as_scalar(state.get("name", "")))
        if name != self.name:
            raise ValueError(f"{who}.load_state_dict: state is for optimizer {name!r}, not {self.name!r}")
        scalar_keys = {"name", "learning_rate", "iterations", *self.get_config()}
        for key in scalar_keys:
            if key not in state:
                raise KeyError(f"{who}.load_state_dict: missing entry {key!r}")
        slots: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slot_names}
        for key, value in state.items():
            if key in scalar_keys:
                continue
            slot, sep, param_name = key.partition("/")
            if not sep or slot not in slots:
                raise ValueError(f"{who}.load_state_dict: unknown entry {key!r} "
                                 f"(slots are {list(self.slot_names)})")
            slots[slot][param_name] = np.array(value, copy=True)
        # Validate everything before changing anything, then assign.
        config = {k: _as_scalar(state[k]) for k in self.get_config()}
        iterations = int(_as_scalar(state["iterations"]))
        if iterations < 0:
            raise ValueError(f"{who}.load_state_dict: iterations must be >= 0, got {iterations}")
        old_lr = self._learning_rate
        self.learning_rate = _as_scalar(state["learning_rate"])  # validates
        try:
            self._set_config(config)
        except (TypeError, ValueError):
            self._learning_rate = old_lr
            raise
        self._iterations = iterations
        self._slots = slots

    def _set_config(self, config: dict[str, Any]) -> None:
        """Set hyperparameters from ``get_config``-style values (validated like the constructor)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {"learning_rate": self._learning_rate,
                                                    **self.get_config()}.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as Keras 3 computes it.

    Shapes: every slot has its parameter's shape.
    Math: without momentum, theta -= lr * g.  With momentum mu (slot v, starts at 0):
    v = mu * v - lr * g;  theta += v  (plain)  or  theta += mu * v - lr * g  (nesterov).
    """

    name = "sgd"

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False) -> None:
        self.momentum = _check_fraction("SGD momentum", momentum, upper_inclusive=True)
        self.nesterov = bool(nesterov)
        # Keras creates the momentum slot only when momentum != 0.
        self.slot_names = ("momentum",) if self.momentum != 0.0 else ()
        super().__init__(learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def _set_config(self, config: dict[str, Any]) -> None:
        momentum = _check_fraction("SGD momentum", config["momentum"], upper_inclusive=True)
        if (momentum != 0.0) != (self.momentum != 0.0):
            raise ValueError(f"SGD.load_state_dict: momentum {momentum} needs a different slot layout "
                             f"than this optimizer's momentum {self.momentum}; build SGD with it")
        self.momentum, self.nesterov = momentum, bool(config["nesterov"])

    def _update(self, key: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        dt = param.dtype.type
        lr = dt(self._learning_rate)
        if self.momentum == 0.0:
            param -= grad * lr
            return
        mu = dt(self.momentum)
        v = self._slot("momentum", key, param)
        v[...] = v * mu - grad * lr
        if self.nesterov:
            param += v * mu - grad * lr
        else:
            param += v


class Adam(Optimizer):
    """Adam with Keras 3's operation order (epsilon is Kingma & Ba's "epsilon hat").

    Shapes: slots m, v have the parameter's shape.
    Math (t = iterations + 1):  m += (g - m) * (1 - b1);  v += (g**2 - v) * (1 - b2);
    alpha = lr * sqrt(1 - b2**t) / (1 - b1**t);  theta -= m * alpha / (sqrt(v) + eps).
    References: Kingma & Ba (2015), Algorithm 1 and the formula before Sec. 2.1.
    """

    name = "adam"
    slot_names = ("m", "v")

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate)
        self._set_config({"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon})

    def get_config(self) -> dict[str, Any]:
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}

    def _set_config(self, config: dict[str, Any]) -> None:
        beta_1 = _check_fraction("Adam beta_1", config["beta_1"])
        beta_2 = _check_fraction("Adam beta_2", config["beta_2"])
        epsilon = _check_epsilon("Adam epsilon", config["epsilon"])
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def _update(self, key: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        dt = param.dtype.type
        one, t = dt(1), dt(step)
        b1_power, b2_power = dt(self.beta_1) ** t, dt(self.beta_2) ** t
        alpha = dt(self._learning_rate) * np.sqrt(one - b2_power) / (one - b1_power)
        m, v = self._slot("m", key, param), self._slot("v", key, param)
        m += (grad - m) * dt(1 - self.beta_1)
        v += (grad * grad - v) * dt(1 - self.beta_2)
        param -= (m * alpha) / (np.sqrt(v) + dt(self.epsilon))


class Adamax(Optimizer):
    """Adamax (Adam with the infinity norm), the paper's optimizer. Slots m and u, keyed by parameter name.

    Shapes: slots m, u have the parameter's shape.
    Math, ``form="paper"`` (paper Eq. 3-6, t = iterations + 1):
        m_t = b1 * m_{t-1} + (1 - b1) * g_t                 (3)
        m_hat = m_t / (1 - b1**t)                           (4)
        u_t = max(b2 * u_{t-1}, |g_t|, eps)                 (5)
        theta_{t+1} = theta_t - lr * m_hat / u_t            (6)
    ``form="keras"`` (Keras 3 ``Adamax.update_step``; eps moves from the max into the denominator):
        m += (g - m) * (1 - b1);  u = max(b2 * u, |g|);  theta -= lr * m / ((1 - b1**t) * (u + eps)).
    The forms differ only where |g| and u are near eps: with a zero gradient the paper's u is floored at eps,
    Keras' u decays towards 0. The first paper-form step is lr * sign(g) wherever |g| > eps.
    References: Kingma & Ba (2015), Sec. 7.1 and Algorithm 2; Keras 3 ``keras/src/optimizers/adamax.py``.
    """

    name = "adamax"
    slot_names = ("m", "u")
    forms = ("paper", "keras")

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, form: str = "paper") -> None:
        super().__init__(learning_rate)
        self._set_config({"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "form": form})

    def get_config(self) -> dict[str, Any]:
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon, "form": self.form}

    def _set_config(self, config: dict[str, Any]) -> None:
        form = str(config["form"])
        if form not in self.forms:
            raise ValueError(f"Adamax form must be one of {self.forms}, got {form!r}")
        beta_1 = _check_fraction("Adamax beta_1", config["beta_1"])
        beta_2 = _check_fraction("Adamax beta_2", config["beta_2"])
        epsilon = _check_epsilon("Adamax epsilon", config["epsilon"])
        self.beta_1, self.beta_2, self.epsilon, self.form = beta_1, beta_2, epsilon, form

    def _update(self, key: str, param: np.ndarray, grad: np.ndarray, step: int) -> None:
        dt = param.dtype.type
        lr, b1, b2, eps = dt(self._learning_rate), dt(self.beta_1), dt(self.beta_2), dt(self.epsilon)
        m, u = self._slot("m", key, param), self._slot("u", key, param)
        if self.form == "paper":
            m *= b1
            m += dt(1 - self.beta_1) * grad                            # Eq. 3
            m_hat = m / dt(1 - self.beta_1**step)                      # Eq. 4
            np.maximum(np.maximum(b2 * u, np.abs(grad)), eps, out=u)   # Eq. 5
            param -= lr * m_hat / u                                    # Eq. 6
        else:
            # Keras 3's exact operation order, so float32 results agree with keras.optimizers.Adamax.
            b1_power = b1 ** dt(step)
            m += (grad - m) * dt(1 - self.beta_1)
            np.maximum(b2 * u, np.abs(grad), out=u)
            param -= (lr * m) / ((dt(1) - b1_power) * (u + eps))


_OPTIMIZERS: dict[str, type[Optimizer]] = {"adamax": Adamax, "adam": Adam, "sgd": SGD}


def get_optimizer(name: str, learning_rate: float | None = None, **kwargs: Any) -> Optimizer:
    """Build an optimizer by name: ``"adamax"``, ``"adam"`` or ``"sgd"`` (case-insensitive).

    ``learning_rate=None`` keeps the class default; other keyword arguments go to the constructor
    (e.g. ``form="keras"`` or ``momentum=0.9``). Raises ``ValueError`` for an unknown name.
    """
    cls = _OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}")
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    return cls(**kwargs)
