"""An E(3)-equivariant graph network (EGNN, Satorras, Hoogeboom & Welling 2021) for a
batch of chains, as a noise predictor over atom coordinates (tasks/conformer_diffusion.py).

Written here rather than taken from `egnn-pytorch`: that package's layers hold one set of
weights, and collapse_ray trains every chain of a batch at once with its weights stacked
on a leading chain axis (neural.batched.BatchedMLP); each EGNN message, coordinate and
node MLP here is a BatchedMLP, so one batched matmul serves every chain.

Shapes: C chains, B molecules per chain, N atoms (padded, with a mask), F node features,
E edge features. Every atom pair of a molecule is an edge (molecules here have <= ~30
heavy atoms: O(N^2) per molecule is cheap), its features say how the atoms are bonded.

Layer l, for atoms i != j (GeoDiff's and EGNN's invariant messages, equivariant updates):
    m_ij   = phi_e(h_i, h_j, |x_i - x_j|^2, e_ij)
    x_i   += sum_j (x_i - x_j) / (|x_i - x_j| + 1) * R tanh(phi_x(m_ij)) / (N_atoms - 1)
    h_i   += phi_h(h_i, sum_j m_ij / (N_atoms - 1))
(R = COORDINATE_RANGE bounds a step, as E(n) diffusion models' coords_range: the noise
to predict has unit variance per coordinate, so an update must be able to reach a few
units.) Distances and features are invariant under rotations, reflections and translations;
coordinate updates are sums of relative vectors, so they rotate with the input and
ignore its translation. The predicted noise is x_L - x_0, with its centre of mass
removed: it lives in the same zero-centre-of-mass subspace as the noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from collapse_ray.neural.batched import BatchedMLP

COORDINATE_RANGE = 15.0  # as Hoogeboom et al. (2022)'s EGNN


def remove_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (..., N, 3) minus its mean over the real atoms, zero on padding (mask (..., N) float)."""
    n = mask.sum(-1, keepdim=True).clamp(min=1)[..., None]
    mean = (x * mask[..., None]).sum(-2, keepdim=True) / n
    return (x - mean) * mask[..., None]


class BatchedEGNN(torch.nn.Module):
    """`len(generators)` EGNNs of `n_layers` layers, `hidden` units wide."""

    def __init__(self, n_node_features: int, n_edge_features: int, hidden: int, n_layers: int,
                 generators: Sequence[torch.Generator]):
        super().__init__()
        self.embed = BatchedMLP([n_node_features, hidden], generators)
        self.messages = torch.nn.ModuleList(
            BatchedMLP([2 * hidden + 1 + n_edge_features, hidden, hidden], generators) for _ in range(n_layers))
        self.coordinates = torch.nn.ModuleList(BatchedMLP([hidden, hidden, 1], generators) for _ in range(n_layers))
        self.nodes = torch.nn.ModuleList(BatchedMLP([2 * hidden, hidden, hidden], generators) for _ in range(n_layers))
        self.hidden = hidden

    def forward(self, x: torch.Tensor, h: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (C, B, N, 3), h (C, B, N, F), edges (C, B, N, N, E), mask (C, B, N) float
        -> predicted noise (C, B, N, 3), zero centre of mass, zero on padding."""
        c, b, n, _ = x.shape
        pair = mask[..., :, None] * mask[..., None, :] * (1 - torch.eye(n, dtype=x.dtype))  # (C, B, N, N)
        norm = (mask.sum(-1) - 1).clamp(min=1)[..., None, None]  # (C, B, 1, 1)

        def flat(t: torch.Tensor) -> torch.Tensor:  # (C, ..., k) -> (C, rows, k) for a BatchedMLP
            return t.reshape(c, -1, t.shape[-1])

        start = x
        h = self.embed(flat(h)).reshape(c, b, n, self.hidden)
        for message, coordinate, node in zip(self.messages, self.coordinates, self.nodes, strict=True):
            diff = x[..., :, None, :] - x[..., None, :, :]  # (C, B, N, N, 3): x_i - x_j
            sq = (diff**2).sum(-1, keepdim=True)
            m = _message(message, h, sq, edges) * pair[..., None]
            weight = COORDINATE_RANGE * torch.tanh(coordinate(flat(m))).reshape(c, b, n, n, 1) * pair[..., None]
            # + 1e-8: a finite gradient where i = j (and between padding atoms)
            x = x + (diff / ((sq + 1e-8).sqrt() + 1) * weight).sum(-2) / norm
            aggregate = m.sum(-2) / norm
            h = h + node(flat(torch.cat([h, aggregate], dim=-1))).reshape(c, b, n, self.hidden)
        return remove_mean(x - start, mask)


def _message(mlp: BatchedMLP, h: torch.Tensor, sq: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """silu(phi_e([h_i, h_j, sq_ij, e_ij])) (C, B, N, N, H), phi_e's first layer split by
    input: its h_i and h_j parts are computed once per atom (O(N H^2)) and broadcast over
    pairs, rather than multiplied out for each of the N^2 pairs (O(N^2 H^2))."""
    c, b, n, hidden = h.shape
    weight, bias = mlp.weights[0], mlp.biases[0]  # (C, 2H + 1 + E, H), (C, H)
    atom_weight = weight[:, : 2 * hidden].reshape(c, 2, hidden, -1).permute(0, 2, 1, 3).flatten(2)  # (C, H, 2H)
    per_atom = torch.bmm(h.reshape(c, b * n, hidden), atom_weight)
    per_atom = per_atom.reshape(c, b, n, 2, -1)
    pairs = torch.bmm(torch.cat([sq, edges], dim=-1).reshape(c, b * n * n, -1), weight[:, 2 * hidden :])
    first = (pairs.reshape(c, b, n, n, -1) + per_atom[:, :, :, None, 0] + per_atom[:, :, None, :, 1]
             + bias[:, None, None, None, :])
    out = torch.nn.functional.silu(first)
    for i in range(1, len(mlp.weights)):  # the remaining layers, as BatchedMLP.forward
        out = torch.baddbmm(mlp.biases[i][:, None, :], out.reshape(c, b * n * n, -1), mlp.weights[i])
        out = torch.nn.functional.silu(out)  # EGNN's message is the activated output
    return out.reshape(c, b, n, n, -1)
