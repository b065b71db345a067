r"""SAM-db: SAM whose two gradients use different batches (SAMPa paper, App. B.2, Table 10).

Algorithm (call t receives batch B_t; the method keeps the previous batch B_{t-1}, B_{-1} := B_0):
    input: radius \rho, stabiliser \xi, base optimizer BaseOpt
    g       <- \nabla f(x_t; B_{t-1})             # pass 1, clean, PREVIOUS batch, updates BN statistics
    e       <- \rho g / (||g|| + \xi)             # global L2 norm
    g_db    <- \nabla f(x_t + e; B_t)             # pass 2, perturbed, CURRENT batch, BN statistics frozen
    x_{t+1} <- BaseOpt(x_t, g_db)
    keep B_t
Passes per step: 2 forward, 2 backward, sequential; temporal cost 2. Memory: SAM's, plus one batch.

Which batches (the paper says only "on two different batches"; our choice, optimizers.md §2.4): the
ascent uses the previous batch and the update gradient the current one. These are the "two sequential
batches" of SAMPa's Algorithm 1, so SAM-db isolates exactly the batch mismatch SAMPa avoids (SAMPa
evaluates its perturbed gradient on the batch its perturbation came from). Every sample enters one
update gradient per epoch, as in SGD and SAM. The first step has no previous batch and uses B_0 twice
(a SAM step), as SAMPa's official code sets B_{-1} := B_0. The reporting pass is the clean pass
(loss on B_{t-1} at x_t). There is no official code.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sampa.batch import Inputs, to_device
from sampa.optim.contract import GradResult
from sampa.optim.sam import SAM, SAMHparams
from sampa.optim.tensors import TensorList


class SAMdb(SAM):
    """SAM with the ascent on the previous batch and the update gradient on the current one."""

    name = "samdb"
    display_name = "SAM-db"
    Hparams = SAMHparams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prev_batch: tuple[Inputs, Tensor] | None = None  # B_{t-1}

    def direction(self, inputs: Inputs, targets: Tensor) -> tuple[TensorList, GradResult, dict[str, Any]]:
        batch = (inputs, targets)
        ascent_batch = batch if self.prev_batch is None else self.prev_batch  # B_{-1} := B_0
        clean, perturbed = self.sam_passes(ascent_batch, batch)  # g on B_{t-1}, g_db on B_t
        self.prev_batch = batch
        return perturbed.grads, clean, {}

    def method_state(self) -> dict[str, Any]:
        return {"prev_batch": None if self.prev_batch is None else list(self.prev_batch)}

    def load_method_state(self, state: dict[str, Any]) -> None:
        batch, device = state["prev_batch"], self.params[0].device
        self.prev_batch = None if batch is None else (to_device(batch[0], device), batch[1].to(device))
