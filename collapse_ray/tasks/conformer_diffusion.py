"""Diffusion on molecular conformations ("conformer_diffusion"): (B)'s GeoDiff setting, scaled
to 2 CPU cores.

Real data: a conformer library (neural/molecules.py): by default the first `n_molecules`
of 33 approved drugs (bundled SMILES, smallest first), `n_conformers` ETKDG + MMFF
conformers each, heavy atoms only; or the user's SMILES (`.smi`) or conformers (`.sdf`,
or a folder of them, e.g. GEOM-Drugs written as SDF) through `source`. Per molecule,
`n_test_conformers` conformers are held out: a split *by conformer* (every molecule has
training and held-out conformers). GeoDiff splits GEOM-Drugs *by molecule* (its test
molecules are unseen graphs); with tens of molecules and a network this small, unseen
graphs would measure generalisation the model cannot have, not collapse. A chain's real
training set is `n_real` of the library's training conformers, drawn without
replacement with the chain's generator.

Rows: `pos` float32 (chains, n, n_max, 3), coordinates in Angstrom with zero centre of
mass, zero-padded to the library's largest molecule, and `mol` int64 (chains, n), the
molecule (graph) index; a row's atom count and mask follow from its molecule.

A fit is DDPM (Ho et al. 2020; neural/ddpm.py's linear beta schedule, sinusoidal timestep
embedding and ancestral sampler, shared with the diffusion task) with an EGNN noise predictor (neural/egnn.py: `n_layers` layers of
`hidden` units, E(3)-equivariant, conditioned on the molecular graph: element and
aromaticity per atom, bond type and graph distance per atom pair), trained from scratch
each iteration on the epsilon-prediction MSE over real atoms. Coordinates enter the
model divided by COORDINATE_SCALE; noise, training and sampling live in the zero-centre-
of-mass subspace (the noise is projected there, as in E(n) diffusion models), so the
model never has to learn a translation. Synthetic rows are ancestral samples (DDPM's
sigma_t^2 = beta_t) for molecules drawn uniformly from the library with the chain's
generator: new conformers of the same graphs.

Metrics per chain:
  test_loss   denoising MSE per coordinate on every held-out conformer, averaged over
              `n_eval_noise` (timestep, noise) draws per conformer fixed for the chain
  cov_r, mat_r  GeoDiff's COV-R and MAT-R: for each molecule, 2x as many conformers as it
              has held-out ones are sampled (noise fixed per chain); cov is the fraction of
              held-out conformers whose nearest sample (RDKit's GetBestRMS, heavy atoms,
              symmetry-aware) is within `rmsd_threshold` Angstrom (1.25 for drugs, as
              GeoDiff), mat the mean of that nearest RMSD; both averaged over molecules
  train_rows_per_s   fit throughput (all chains of the batch together)

What it keeps from (B)'s GeoDiff on GEOM-Drugs: an equivariant denoiser over atom
coordinates conditioned on the molecular graph, DDPM training and ancestral sampling,
retraining from scratch each iteration, COV/MAT at 1.25 Angstrom on held-out reference
conformers, the replace / accumulate / accumulate_subsample workflows. What it scales
down: tens of drugs instead of GEOM-Drugs' 40,000 molecules (and ETKDG + MMFF conformers
instead of CREST's), heavy atoms only, a 3-layer EGNN of 32 units instead of GeoDiff's
graph field network, 50-100 diffusion steps instead of 5,000, a split by conformer.

Run it small:

    python -c "from collapse_ray.core.loop import run_chain; from collapse_ray.core.chain import ChainConfig;
    from collapse_ray.tasks.conformer_diffusion import ConformerDiffusionTask as T;
    print(run_chain(T(n_molecules=4, epochs=20), ChainConfig(workflow='replace', n_real=40, n_iterations=3),
    seeds=[0, 1]).table)"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from collapse_ray.neural import ddpm, molecules
from collapse_ray.neural.data import distinct_rows, resampled_rows
from collapse_ray.validation import SpecError, check_finite_positive, check_min, describe, require
from collapse_ray.tasks.protocol import Metrics, RealData, Rows

if TYPE_CHECKING:  # torch is imported where it is used: importing the task registry stays light
    import torch

    from collapse_ray.neural.egnn import BatchedEGNN

COORDINATE_SCALE = 2.0  # Angstrom per model unit: heavy-atom coordinates then have about unit spread
SAMPLES_PER_REFERENCE = 2  # GeoDiff samples twice as many conformers as a molecule has references


@dataclass(frozen=True)
class ConformerContext:
    """Per-chain seeds fixed for the whole chain (fit() and the artifacts get no rngs)."""

    init_seeds: np.ndarray  # (chains,): initial weights, minibatch order, training noise
    quality_seeds: np.ndarray  # (chains,): the noise of the COV/MAT samples and the pictures


@dataclass(frozen=True)
class ConformerTestSet:
    t: np.ndarray  # (chains, n_test * n_eval_noise) int64: fixed timesteps
    noise: np.ndarray  # (chains, n_test * n_eval_noise, n_max, 3): fixed noises (zero CoM)
    quality_seeds: np.ndarray  # (chains,)


@dataclass(frozen=True, eq=False)
class ConformerFit:
    net: BatchedEGNN  # one noise predictor per chain
    rows_per_s: float


@dataclass(frozen=True)
class ConformerDiffusionTask:
    """DDPM with an EGNN noise predictor on conformers of drug-like molecules."""

    name: ClassVar[str] = "conformer_diffusion"
    batched: ClassVar[bool] = True

    source: str = "drugs"
    """The bundled 33 drugs ("drugs"), a .smi file of SMILES (embedded with ETKDG like the
    drugs), or an .sdf file / folder of .sdf files of conformers (e.g. GEOM-Drugs). Pickles
    are refused."""
    n_molecules: int = 12
    """Molecules taken from the source: the first n (the bundled list is smallest first)."""
    n_conformers: int = 20
    """Conformers per molecule (ETKDG for SMILES; for SDF at most this many per molecule)."""
    n_test_conformers: int = 4
    """Held-out conformers per molecule (the references of cov / mat and of test_loss)."""
    library_seed: int = 0
    """ETKDG's random seed and the seed of the train/test split: the library is the same for
    every chain (each chain draws its own training set from it)."""
    n_steps: int = 100
    """Diffusion steps T."""
    beta_start: float = 1e-4
    """Linear beta schedule: beta_1 ..."""
    beta_end: float = 0.1
    """... beta_T (T = 100 keeps exp(-sum beta) = 0.6% of the data's variance at its end)."""
    hidden: int = 32
    """Units of the EGNN's message, coordinate and node MLPs."""
    n_layers: int = 3
    """EGNN layers."""
    epochs: int = 100
    """Passes over the training set per fit."""
    batch_size: int = 32
    """Training conformers per Adam step."""
    n_train_noise: int = 2
    """(timestep, noise) draws per training conformer in each step."""
    learning_rate: float = 3e-3
    """Adam's learning rate."""
    n_eval_noise: int = 4
    """Fixed (timestep, noise) draws per held-out conformer that test_loss averages over."""
    rmsd_threshold: float = 1.25
    """COV's RMSD threshold in Angstrom (GeoDiff: 1.25 for GEOM-Drugs, 0.5 for QM9)."""
    n_picture: int = 4
    """Molecules in the per-iteration picture (a sample and a held-out conformer of each)."""

    def validate(self, where: str) -> None:
        problem = molecules.check_source(self.source)
        if problem is not None:
            allowed = "'drugs', a .smi or .sdf file or a folder of .sdf files"
            raise SpecError(f"{where}.source must be {allowed}; got {describe(self.source)}: {problem}",
                            field=f"{where}.source", allowed=allowed)
        check_min(self.n_molecules, 1, f"{where}.n_molecules")
        if molecules.builds_from_smiles(self.source):  # SMILES are cheap to check before anything starts
            entries = molecules.smiles_entries(self.source)
            require(self.n_molecules <= len(entries), f"{where}.n_molecules",
                    f"an integer in [1, {len(entries)}] for source {self.source!r} (the molecules it lists)",
                    self.n_molecules)
            bad = molecules.unparsable(entries[: self.n_molecules])
            if bad:
                raise SpecError(f"{where}.source must be a SMILES file RDKit can parse; got {describe(self.source)}: "
                                f"cannot parse {bad}", field=f"{where}.source", allowed="a SMILES file RDKit can parse")
        check_min(self.n_conformers, 2, f"{where}.n_conformers")
        check_min(self.n_test_conformers, 1, f"{where}.n_test_conformers")
        require(self.n_test_conformers < self.n_conformers, f"{where}.n_test_conformers",
                f"an integer in [1, n_conformers) = [1, {self.n_conformers})", self.n_test_conformers)
        check_min(self.library_seed, 0, f"{where}.library_seed")
        ddpm.check_schedule(self.n_steps, self.beta_start, self.beta_end, where)
        check_min(self.hidden, 1, f"{where}.hidden")
        check_min(self.n_layers, 1, f"{where}.n_layers")
        check_min(self.epochs, 1, f"{where}.epochs")
        check_min(self.batch_size, 1, f"{where}.batch_size")
        check_min(self.n_train_noise, 1, f"{where}.n_train_noise")
        check_finite_positive(self.learning_rate, f"{where}.learning_rate")
        check_min(self.n_eval_noise, 1, f"{where}.n_eval_noise")
        check_finite_positive(self.rmsd_threshold, f"{where}.rmsd_threshold")
        check_min(self.n_picture, 1, f"{where}.n_picture")

    def check_chain(self, chain, where: str) -> None:
        """Real rows are distinct training conformers of the library."""
        n_train = self.n_train_conformers()
        require(chain.n_real <= n_train, f"{where}.n_real",
                f"an integer <= {n_train} (the library's training conformers: n_molecules x "
                f"(n_conformers - n_test_conformers) for SMILES)", chain.n_real)

    def n_train_conformers(self) -> int:
        if molecules.builds_from_smiles(self.source):  # ETKDG embeds exactly n_conformers (or raises)
            return self.n_molecules * (self.n_conformers - self.n_test_conformers)
        return len(self.library().train_mol)

    def library(self) -> molecules.ConformerLibrary:
        return molecules.conformer_library(self.source, self.n_molecules, self.n_conformers, self.n_test_conformers,
                                           self.library_seed)

    def row_nbytes(self) -> int:
        """pos (n_max x 3 float32) and mol (int64)."""
        if molecules.builds_from_smiles(self.source):  # without embedding: the largest graph's atom count
            n_max = molecules.max_heavy_atoms(self.source, self.n_molecules)
        else:
            n_max = self.library().n_max
        return 4 * 3 * n_max + 8

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        library = self.library()
        picks = distinct_rows(len(library.train_mol), n_real, rngs, "training conformers of the library")
        t, noise, init_seeds, quality_seeds = ddpm.fixed_draws(rngs, len(library.test_mol) * self.n_eval_noise,
                                                               self.n_steps, (library.n_max, 3))
        mask = np.repeat(library.mask[library.test_mol], self.n_eval_noise, axis=0)
        test = ConformerTestSet(t=t, noise=_remove_mean_np(noise, mask), quality_seeds=quality_seeds)
        context = ConformerContext(init_seeds=init_seeds, quality_seeds=quality_seeds)
        return RealData(train={"pos": library.train_pos[picks], "mol": library.train_mol[picks]}, test=test,
                        context=context)

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        """Fresh real conformers: the library's training split, with replacement."""
        library = self.library()
        picks = resampled_rows(len(library.train_mol), n, rngs)
        return {"pos": library.train_pos[picks], "mol": library.train_mol[picks]}

    # -- the network --------------------------------------------------------------
    def _network(self, generators) -> BatchedEGNN:
        from collapse_ray.neural.egnn import BatchedEGNN

        return BatchedEGNN(molecules.N_NODE_FEATURES + ddpm.TIME_FEATURES, molecules.N_EDGE_FEATURES, self.hidden,
                           self.n_layers, generators)

    def _graph(self, mol: np.ndarray):
        """Node features, edge features and mask of molecules mol (chains, n) as tensors."""
        import torch

        library = self.library()
        return (torch.from_numpy(library.node_features[mol]), torch.from_numpy(library.edge_features[mol]),
                torch.from_numpy(library.mask[mol].astype(np.float32)))

    @staticmethod
    def _predict(net: BatchedEGNN, xt, nodes, edges, mask, emb):
        """eps(x_t, t): emb(t) (chains, n, F) or (F,) joins every atom's features."""
        import torch

        c, b, n = mask.shape
        emb = emb[..., None, :].expand(c, b, n, emb.shape[-1]) if emb.dim() == 3 else emb.expand(c, b, n, -1)
        return net(xt, torch.cat([nodes, emb], dim=-1), edges, mask)

    # -- fitting ----------------------------------------------------------------
    def fit(self, train: Rows, context: ConformerContext) -> ConformerFit:
        import torch

        from collapse_ray.neural.batched import seeded_generators
        from collapse_ray.neural.batched import train as train_networks
        from collapse_ray.neural.egnn import remove_mean

        pos = torch.from_numpy(np.ascontiguousarray(train["pos"], dtype=np.float32)) / COORDINATE_SCALE
        mol = np.asarray(train["mol"])
        nodes, edges, mask = self._graph(mol)
        n_chains, n_rows = mol.shape
        chains = torch.arange(n_chains)[:, None]
        generators = seeded_generators(context.init_seeds)
        net = self._network(generators)
        s = ddpm.schedule(self.n_steps, self.beta_start, self.beta_end)
        n_max = pos.shape[2]

        def loss(index: torch.Tensor) -> torch.Tensor:  # index (chains, batch) into the training rows
            index = index.repeat(1, self.n_train_noise)
            x0, m = pos[chains, index], mask[chains, index]
            t, eps = ddpm.training_draws(generators, self.n_steps, index.shape[1], (n_max, 3))
            eps = remove_mean(eps, m)
            predicted = self._predict(net, ddpm.noised(s, x0, t, eps), nodes[chains, index], edges[chains, index], m,
                                      s.embedding[t])
            # MSE per real coordinate, each row weighted by its atom count
            return ((predicted - eps) ** 2).sum(dim=(1, 2, 3)) / (3 * m.sum(dim=(1, 2)))

        rows = torch.arange(n_rows).expand(n_chains, n_rows)
        rows_per_s = train_networks(
            list(net.parameters()), rows, loss, generators, self.epochs, self.batch_size, self.learning_rate
        )
        return ConformerFit(net, rows_per_s)

    # -- sampling ---------------------------------------------------------------
    def _ancestral(self, net: BatchedEGNN, mol: np.ndarray, generators) -> np.ndarray:
        """DDPM ancestral sampling for conformers of molecules mol (chains, n), every
        chain at once, in the zero-CoM subspace: positions (chains, n, n_max, 3) in Angstrom."""
        from collapse_ray.neural.batched import standard_normal
        from collapse_ray.neural.egnn import remove_mean

        nodes, edges, mask = self._graph(mol)
        n, n_max = mol.shape[1], self.library().n_max
        x = ddpm.ancestral(ddpm.schedule(self.n_steps, self.beta_start, self.beta_end),
                           lambda xt, emb: self._predict(net, xt, nodes, edges, mask, emb),
                           lambda: remove_mean(standard_normal(generators, n, n_max, 3), mask))
        return (x * COORDINATE_SCALE).numpy().astype(np.float32)

    def sample(self, model: ConformerFit, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        from collapse_ray.neural.batched import torch_generators

        mol = np.stack([rng.integers(0, self.library().n_molecules, n) for rng in rngs]).astype(np.int64)
        return {"pos": self._ancestral(model.net, mol, torch_generators(rngs)), "mol": mol}

    def _reference_samples(self, net: BatchedEGNN, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SAMPLES_PER_REFERENCE conformers per held-out conformer of each molecule, from the
        chain's fixed quality seed (the same noise every iteration)."""
        from collapse_ray.neural.batched import seeded_generators

        mol = np.repeat(self.library().test_mol, SAMPLES_PER_REFERENCE)
        mol = np.broadcast_to(mol, (len(seeds), len(mol))).copy()
        return self._ancestral(net, mol, seeded_generators(seeds)), mol

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: ConformerFit, test: ConformerTestSet) -> Metrics:
        import torch

        library = self.library()
        s = ddpm.schedule(self.n_steps, self.beta_start, self.beta_end)
        n_chains = len(test.quality_seeds)
        mol = np.broadcast_to(np.repeat(library.test_mol, self.n_eval_noise), (n_chains, test.t.shape[1]))
        nodes, edges, mask = self._graph(mol)
        x0 = torch.from_numpy(library.test_pos[mol] / COORDINATE_SCALE)
        t, eps = torch.from_numpy(test.t), torch.from_numpy(test.noise)
        with torch.no_grad():
            predicted = self._predict(model.net, ddpm.noised(s, x0, t, eps), nodes, edges, mask, s.embedding[t])
        test_loss = ((predicted - eps) ** 2).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2)))
        samples, sample_mol = self._reference_samples(model.net, test.quality_seeds)
        scores = np.array([molecules.coverage_and_matching(library, samples[c], sample_mol[c], self.rmsd_threshold)
                           for c in range(n_chains)])
        return {
            "test_loss": test_loss.double().numpy(),
            "cov_r": scores[:, 0],
            "mat_r": scores[:, 1],
            "train_rows_per_s": np.full(n_chains, model.rows_per_s),
        }

    def iteration_artifacts(self, model: ConformerFit, context: ConformerContext) -> dict[str, bytes]:
        """samples.png: a sampled conformer (top row) and a held-out one (bottom row) of the
        first n_picture molecules, for the batch's first chain (from its fixed quality noise)."""
        from collapse_ray.neural.batched import first_chain, seeded_generators

        library = self.library()
        shown = np.arange(min(self.n_picture, library.n_molecules))
        samples = self._ancestral(first_chain(model.net, self._network), shown[None, :],
                                  seeded_generators(context.quality_seeds[:1]))
        held_out = [int(np.flatnonzero(library.test_mol == i)[0]) for i in shown]
        rows = [(f"sample: {library.names[i]}", int(i), samples[0, k]) for k, i in enumerate(shown)]
        rows += [(f"held out: {library.names[i]}", int(i), library.test_pos[j]) for i, j in zip(shown, held_out)]
        return {"samples.png": molecules.conformers_png(library, rows, columns=len(shown))}


def _remove_mean_np(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """x (chains, k, N, 3) minus its mean over real atoms (mask (k, N)), zero on padding."""
    m = mask.astype(np.float32)[None, :, :, None]
    mean = (x * m).sum(-2, keepdims=True) / m.sum(-2, keepdims=True)
    return ((x - mean) * m).astype(np.float32)

