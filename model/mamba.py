"""Mamba-1 blocks whose recurrent state is explicit, so they can run whole, chunk by chunk, or token by token.

The state of a stack is two fixed-size tensors, whatever the length of what came before:
``conv [n_layers, B, d_inner, d_conv - 1]`` (the last inputs of the causal convolution) and
``ssm [n_layers, B, d_inner, d_state]``. Stacking layers in one tensor lets a slot pool, a beam
reorder or an ONNX graph handle the whole state as two tensors.

Masks make padded positions exact no-ops for the SSM state: a masked position feeds zeros to the
convolution and a zero step size to the scan (decay 1, input 0). Two layouts are exact:
- left padding, from a zero state (prefill of a fresh batch): the pads look like the zero history;
- right padding, from any state (streaming chunks and session turns of different lengths): the scan
  state freezes after each row's last real step, and the conv state is taken at each row's own end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mambaserve import kernels
from mambaserve.model.config import MambaConfig
from torch import Tensor, nn


@dataclass
class MambaState:
    """Recurrent state of a stack: conv [layers, B, d_inner, d_conv-1], ssm [layers, B, d_inner, d_state]."""

    conv: Tensor
    ssm: Tensor

    @classmethod
    def zeros(cls, config: MambaConfig, batch: int, device: torch.device | str = "cpu") -> MambaState:
        return cls(
            conv=torch.zeros(config.n_layers, batch, config.d_inner, config.d_conv - 1, device=device),
            ssm=torch.zeros(config.n_layers, batch, config.d_inner, config.d_state, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.ssm.shape[1]

    def select(self, index: Tensor) -> MambaState:
        """Rows ``index`` of the batch (beam reordering, copying a session's state)."""
        return MambaState(self.conv.index_select(1, index), self.ssm.index_select(1, index))

    def clone(self) -> MambaState:
        return MambaState(self.conv.clone(), self.ssm.clone())

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()


def _conv_state_at_ends(conv_state: Tensor, xi: Tensor, mask: Tensor) -> Tensor:
    """The last d_conv-1 inputs before each row's end (the position after its last real step)."""
    keep = conv_state.shape[-1]
    history = torch.cat([conv_state.to(xi.dtype), xi], dim=-1)  # [B, D, keep + L]
    positions = torch.arange(mask.shape[1], device=mask.device)
    ends = torch.where(mask > 0, positions + 1, 0).amax(dim=1)  # 0 when a row has no real step
    index = (ends[:, None] + torch.arange(keep, device=mask.device))[:, None, :].expand(-1, xi.shape[1], -1)
    return torch.gather(history, 2, index).contiguous()


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba-1 block (in_proj -> causal conv -> selective scan gated by z -> out_proj)."""

    def __init__(self, config: MambaConfig, dropout: float = 0.0) -> None:
        super().__init__()
        c = config
        self.config = c
        self.norm = nn.RMSNorm(c.d_model, eps=1e-5)
        self.in_proj = nn.Linear(c.d_model, 2 * c.d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(c.d_inner, c.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(c.d_inner))
        self.x_proj = nn.Linear(c.d_inner, c.dt_rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(c.dt_rank, c.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, c.d_state + 1).float()).repeat(c.d_inner, 1))
        self.D = nn.Parameter(torch.ones(c.d_inner))
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self._A_cache: tuple[tuple, Tensor] | None = None
        self._init_parameters()

    def _init_parameters(self) -> None:
        c = self.config
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        std = c.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # Step sizes log-uniform in [dt_min, dt_max]; the bias is their inverse softplus.
        dt = torch.exp(torch.rand(c.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        dt = dt.clamp_min(1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _A(self) -> Tensor:
        """A = -exp(A_log) in float32. A decode loop needs it once per token and layer (two ops, ~7 us
        on a CPU, two kernel launches on a GPU), so outside autograd it is kept until A_log changes:
        its version counter moves on every in-place update (optimizer step, load_state_dict), and a
        move to another device or dtype changes its storage."""
        p = self.A_log
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return -torch.exp(p.float())
        key = (p._version, p.data_ptr(), p.device, p.dtype)
        if self._A_cache is None or self._A_cache[0] != key:
            self._A_cache = (key, torch.exp(p.detach().float()).neg_())
        return self._A_cache[1]

    def _ssm_inputs(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Step size (before bias and softplus), B and C from the convolved input [..., d_inner]."""
        c = self.config
        dt, B, C = self.x_proj(xc).split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        return dt @ self.dt_proj.weight.T, B, C

    def forward(
        self,
        x: Tensor,
        conv_state: Tensor | None = None,
        ssm_state: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, d_model] -> (y [B, L, d_model], conv_state', ssm_state'); mask [B, L] (1 = real)."""
        c = self.config
        batch = x.shape[0]
        xi, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        xi = xi.transpose(1, 2)  # [B, d_inner, L]
        if mask is not None:
            xi = xi * mask[:, None, :].to(xi.dtype)
        if conv_state is None:
            conv_state = xi.new_zeros(batch, c.d_inner, c.d_conv - 1)
        xc, new_conv = kernels.causal_conv1d_fn(
            xi,
            self.conv_weight,
            self.conv_bias,
            initial_states=conv_state,
            return_final_states=True,
            activation="silu",
        )
        if mask is not None and not torch.compiler.is_exporting():
            new_conv = _conv_state_at_ends(conv_state, xi, mask)
        dt, B, C = self._ssm_inputs(xc.transpose(1, 2))
        A = self._A()
        delta = dt.transpose(1, 2)
        if mask is None:
            y, new_ssm = kernels.selective_scan(
                xc,
                delta,
                A,
                B.transpose(1, 2),
                C.transpose(1, 2),
                self.D.float(),
                z.transpose(1, 2),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
                return_last_state=True,
                initial_state=ssm_state,
            )
        else:  # softplus here so that masked steps get exactly zero step size
            delta = F.softplus(delta + self.dt_proj.bias[:, None]) * mask[:, None, :].to(delta.dtype)
            y, new_ssm = kernels.selective_scan(
                xc,
                delta,
                A,
                B.transpose(1, 2),
                C.transpose(1, 2),
                self.D.float(),
                z.transpose(1, 2),
                return_last_state=True,
                initial_state=ssm_state,
            )
        out = self.out_proj(y.transpose(1, 2))
        return x + self.dropout(out), new_conv, new_ssm

    def step(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor, slots: Tensor | None = None) -> Tensor:
        """One token: x [B, d_model]; conv_state and ssm_state are updated in place.

        Without ``slots`` row b uses state row b; with ``slots`` [B] (a slot pool of any size) row b
        reads and writes state row ``slots[b]``, so a server steps its live sessions in the pool itself.
        """
        xi, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        xc = kernels.causal_conv1d_update(
            xi, conv_state, self.conv_weight, self.conv_bias, activation="silu", conv_state_indices=slots
        )
        dt, B, C = self._ssm_inputs(xc)
        A = self._A()
        y = kernels.selective_state_update(
            ssm_state,
            xc,
            dt,
            A,
            B,
            C,
            D=self.D.float(),
            z=z,
            dt_bias=self.dt_proj.bias.float(),
            dt_softplus=True,
            state_batch_indices=slots,
        )
        return x + self.out_proj(y)


class MambaStack(nn.Module):
    """Mamba blocks plus a final norm, run over a whole sequence or one step at a time."""

    def __init__(self, config: MambaConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(MambaBlock(config, dropout) for _ in range(config.n_layers))
        self.norm_f = nn.RMSNorm(config.d_model, eps=1e-5)
        with torch.no_grad():  # residual branches scaled down with depth (GPT-2 style)
            for layer in self.layers:
                layer.out_proj.weight.mul_(1 / math.sqrt(config.n_layers))

    def forward(
        self, x: Tensor, state: MambaState | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, MambaState]:
        convs, ssms = [], []
        for i, layer in enumerate(self.layers):
            x, conv, ssm = layer(
                x,
                None if state is None else state.conv[i],
                None if state is None else state.ssm[i],
                mask,
            )
            convs.append(conv)
            ssms.append(ssm)
        return self.norm_f(x), MambaState(torch.stack(convs), torch.stack(ssms))

    def step(self, x: Tensor, state: MambaState, slots: Tensor | None = None) -> Tensor:
        """x [B, d_model] -> [B, d_model]; ``state`` is updated in place (rows ``slots`` of it, if given)."""
        for i, layer in enumerate(self.layers):
            x = layer.step(x, state.conv[i], state.ssm[i], slots)
        return self.norm_f(x)
