"""Molecular conformers for the conformer_diffusion task, offline, through RDKit.

A *conformer library* is a fixed set of molecular graphs (heavy atoms only) with several
3-D conformers each, split per molecule into training and held-out conformers (a split
by conformer: every molecule has both; see tasks/conformer_diffusion.py for why). It is
built from one `source`:

- "drugs": the bundled list collapse_ray/neural/drugs.smi (33 approved drugs, 11-26
  heavy atoms), each embedded `n_conformers` times with RDKit's ETKDG (v3, seeded) and
  cleaned up with MMFF94 (RDKit's force field), hydrogens then removed;
- a `.smi` file of the user's: the same, for their SMILES;
- an `.sdf` file, or a folder of them (GEOM-Drugs / QM9 conformers written as SDF):
  records are grouped into molecules by canonical SMILES, one conformer per record.
  GEOM's own `.pickle` files are refused: unpickling a file runs code. Convert them
  once, in a process you trust, with RDKit's `Chem.SDWriter`.

Atoms are ordered canonically (RDKit's canonical ranking), so every conformer of a
molecule lists its atoms in the same order whatever file it came from. Coordinates are
in Angstrom, centred (zero centre of mass over heavy atoms, unit masses), padded with
zeros to the largest molecule's atom count, with a mask. A molecule is its graph without
stereochemistry (the bundled SMILES give none; ETKDG then picks each conformer's
stereocentres at random, and SDF records of one graph are grouped whatever theirs).

RMSD is RDKit's alignment-aware, symmetry-aware `rdMolAlign.GetBestRMS` on heavy atoms;
COV and MAT follow GeoDiff (Xu et al. 2022): per molecule, COV is the fraction of
reference conformers whose nearest generated conformer is within the threshold, MAT the
mean over references of that nearest RMSD; both are then averaged over molecules.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DRUGS = "drugs"
BUNDLED = Path(__file__).with_name("drugs.smi")
ATOM_TYPES = ("C", "N", "O", "F", "P", "S", "Cl", "Br", "I")  # then one "other" slot
# bond classes of the edge features: 0 = not bonded, then these
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
MAX_GRAPH_DISTANCE = 3  # edge features also say whether atoms are 1, 2, 3 or more bonds apart
N_NODE_FEATURES = len(ATOM_TYPES) + 1 + 1  # element one-hot + aromatic flag
N_EDGE_FEATURES = 1 + len(BOND_TYPES) + MAX_GRAPH_DISTANCE + 1
MMFF_MAX_ITERS = 500
REFUSED_SUFFIXES = (".pickle", ".pkl", ".p")


@dataclass(frozen=True, eq=False)
class ConformerLibrary:
    """Molecular graphs and their conformers, padded to `n_max` atoms."""

    smiles: tuple[str, ...]  # (M,) canonical heavy-atom SMILES
    names: tuple[str, ...]  # (M,)
    mols: tuple  # (M,) RDKit heavy-atom molecules without conformers: templates for RMSD and pictures
    n_atoms: np.ndarray  # (M,) int64
    mask: np.ndarray  # (M, n_max) bool: real atoms
    node_features: np.ndarray  # (M, n_max, N_NODE_FEATURES) float32
    edge_features: np.ndarray  # (M, n_max, n_max, N_EDGE_FEATURES) float32
    bonds: tuple  # (M,) int arrays (n_bonds, 2): for pictures
    train_pos: np.ndarray  # (n_train, n_max, 3) float32, Angstrom, centred
    train_mol: np.ndarray  # (n_train,) int64 molecule index
    test_pos: np.ndarray  # (n_test, n_max, 3)
    test_mol: np.ndarray  # (n_test,)

    @property
    def n_molecules(self) -> int:
        return len(self.smiles)

    @property
    def n_max(self) -> int:
        return self.mask.shape[1]


def check_source(source: str) -> str | None:
    """None if `source` can be read, else what is wrong (for the validation message)."""
    if source == DRUGS:
        return None
    path = Path(source).expanduser()
    if path.suffix.lower() in REFUSED_SUFFIXES:
        return "a pickle, which is refused (unpickling runs code): convert it to SDF with RDKit first"
    if path.is_dir():
        return None if any(_sdf_files(path)) else "a folder with no .sdf files"
    if not path.is_file():
        return "not an existing file or folder"
    if path.suffix.lower() not in (".smi", ".sdf"):
        return "neither .smi nor .sdf"
    return None


def smiles_entries(source: str) -> list[tuple[str, str]]:
    """(SMILES, name) pairs of the bundled list or a .smi file."""
    return _read_smiles(BUNDLED if source == DRUGS else Path(source).expanduser())


def unparsable(entries: list[tuple[str, str]]) -> str | None:
    """The first SMILES RDKit cannot parse (with its name), or None."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.error")  # the validation message says it once
    try:
        return next((f"{smiles!r} ({name})" for smiles, name in entries if Chem.MolFromSmiles(smiles) is None), None)
    finally:
        RDLogger.EnableLog("rdApp.error")


def max_heavy_atoms(source: str, n_molecules: int) -> int:
    """The largest heavy-atom count among a SMILES source's first n_molecules (no embedding)."""
    from rdkit import Chem

    entries = smiles_entries(source)[:n_molecules]
    return max(Chem.MolFromSmiles(smiles).GetNumHeavyAtoms() for smiles, _ in entries)


def builds_from_smiles(source: str) -> bool:
    return source == DRUGS or Path(source).suffix.lower() == ".smi"


@lru_cache(maxsize=4)
def conformer_library(source: str, n_molecules: int, n_conformers: int, n_test_conformers: int,
                      seed: int) -> ConformerLibrary:
    """The library of `source`'s first `n_molecules` molecules. Deterministic for `seed`
    (ETKDG's random seed and the per-molecule train/test permutation). Cached per process:
    embedding costs ~10 ms per conformer."""
    from rdkit import Chem

    if builds_from_smiles(source):
        entries = smiles_entries(source)[:n_molecules]
        if len(entries) < n_molecules:
            raise ValueError(f"source {source!r} lists {len(entries)} molecules; n_molecules = {n_molecules} asked")
        molecules = [(name, _embedded(smiles, n_conformers, seed)) for smiles, name in entries]
    else:
        molecules = _read_sdf(Path(source).expanduser(), n_molecules, n_conformers, n_test_conformers + 1)
    n_max = max(m.GetNumAtoms() for _, m in molecules)
    rng = np.random.default_rng(seed)
    library = {k: [] for k in ("train_pos", "train_mol", "test_pos", "test_mol")}
    mols, nodes, edges, masks, bonds = [], [], [], [], []
    for index, (_, mol) in enumerate(molecules):
        n = mol.GetNumAtoms()
        positions = np.stack([c.GetPositions() for c in mol.GetConformers()]).astype(np.float64)
        positions -= positions.mean(axis=1, keepdims=True)
        padded = np.zeros((len(positions), n_max, 3), dtype=np.float32)
        padded[:, :n] = positions
        order = rng.permutation(len(positions))
        test, train = order[:n_test_conformers], order[n_test_conformers:]
        library["test_pos"].append(padded[np.sort(test)])
        library["train_pos"].append(padded[np.sort(train)])
        library["test_mol"].append(np.full(len(test), index, dtype=np.int64))
        library["train_mol"].append(np.full(len(train), index, dtype=np.int64))
        template = Chem.Mol(mol)
        template.RemoveAllConformers()
        mols.append(template)
        node, edge, bond = _graph_features(mol, n_max)
        nodes.append(node)
        edges.append(edge)
        bonds.append(bond)
        masks.append(np.arange(n_max) < n)
    arrays = {k: np.concatenate(v) for k, v in library.items()}
    for a in arrays.values():
        a.setflags(write=False)
    return ConformerLibrary(
        smiles=tuple(Chem.MolToSmiles(m, isomericSmiles=False) for _, m in molecules),
        names=tuple(name for name, _ in molecules),
        mols=tuple(mols), n_atoms=np.array([m.GetNumAtoms() for m in mols], dtype=np.int64),
        mask=np.stack(masks), node_features=np.stack(nodes), edge_features=np.stack(edges), bonds=tuple(bonds),
        **arrays,
    )


def _read_smiles(path: Path) -> list[tuple[str, str]]:
    """(SMILES, name) per line; '#' starts a comment."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if parts:
            entries.append((parts[0], parts[1] if len(parts) > 1 else f"{path.name}:{number}"))
    return entries


def _embedded(smiles: str, n_conformers: int, seed: int):
    """Heavy-atom molecule with n_conformers ETKDG + MMFF conformers, atoms in canonical order."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    # + 1: ETKDG's randomSeed 0 gives every conformer the same coordinates (RDKit 2026.09)
    params.randomSeed = int(seed) + 1
    params.numThreads = 1  # the same conformers whatever the machine
    ids = AllChem.EmbedMultipleConfs(mol, numConfs=n_conformers, params=params)
    if len(ids) != n_conformers:
        raise ValueError(f"ETKDG embedded {len(ids)} of {n_conformers} conformers of {smiles!r}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=MMFF_MAX_ITERS)
    else:  # elements MMFF94 lacks: the universal force field
        AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=MMFF_MAX_ITERS)
    return _canonical(Chem.RemoveHs(mol))


def _canonical(mol):
    from rdkit import Chem

    # chirality ignored: conformers of one graph share an order whatever their stereocentres
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=True, includeChirality=False))
    return Chem.RenumberAtoms(mol, [int(i) for i in np.argsort(ranks)])


def _sdf_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() == ".sdf") if path.is_dir() else [path]


def _read_sdf(path: Path, n_molecules: int, n_conformers: int, min_conformers: int) -> list:
    """The first n_molecules molecules (in file order) with at least min_conformers
    records, each with up to n_conformers conformers (one per record)."""
    from rdkit import Chem

    groups: dict[str, list] = {}
    names: dict[str, str] = {}
    for file in _sdf_files(path):
        for record in Chem.SDMolSupplier(str(file), removeHs=False):
            if record is None or record.GetNumConformers() == 0:
                continue
            mol = _canonical(Chem.RemoveHs(record))
            key = Chem.MolToSmiles(mol, isomericSmiles=False)  # a graph, as the bundled SMILES
            names.setdefault(key, record.GetProp("_Name") if record.HasProp("_Name") and record.GetProp("_Name")
                             else key)
            groups.setdefault(key, []).append(mol)
    chosen = [k for k, v in groups.items() if len(v) >= min_conformers][:n_molecules]
    if len(chosen) < n_molecules:
        raise ValueError(f"source {str(path)!r} has {len(chosen)} molecules with >= {min_conformers} conformers; "
                         f"n_molecules = {n_molecules} asked")
    molecules = []
    for key in chosen:
        records = groups[key][:n_conformers]
        mol = Chem.Mol(records[0])
        for other in records[1:]:
            conformer = Chem.Conformer(other.GetConformer())
            # canonical order makes the atoms line up; check it rather than trust it
            if [a.GetSymbol() for a in other.GetAtoms()] != [a.GetSymbol() for a in mol.GetAtoms()]:
                raise ValueError(f"source {str(path)!r}: conformers of {key!r} list their atoms in different orders")
            mol.AddConformer(conformer, assignId=True)
        molecules.append((names[key], mol))
    return molecules


def _graph_features(mol, n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node features (element one-hot, aromatic), edge features (bond class one-hot,
    graph distance 1, 2, 3 or more one-hot; zero rows for padding) and the bond list."""
    from rdkit import Chem

    n = mol.GetNumAtoms()
    nodes = np.zeros((n_max, N_NODE_FEATURES), dtype=np.float32)
    for atom in mol.GetAtoms():
        symbol = atom.GetSymbol()
        nodes[atom.GetIdx(), ATOM_TYPES.index(symbol) if symbol in ATOM_TYPES else len(ATOM_TYPES)] = 1
        nodes[atom.GetIdx(), -1] = float(atom.GetIsAromatic())
    edges = np.zeros((n_max, n_max, N_EDGE_FEATURES), dtype=np.float32)
    bond_class = np.zeros((n, n), dtype=np.int64)
    bond_list = []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        name = str(bond.GetBondType())
        bond_class[i, j] = bond_class[j, i] = 1 + (BOND_TYPES.index(name) if name in BOND_TYPES else 0)
        bond_list.append((i, j))
    distance = np.asarray(Chem.GetDistanceMatrix(mol), dtype=np.float64)
    hops = np.clip(distance, 1, MAX_GRAPH_DISTANCE + 1).astype(np.int64)  # disconnected (1e8) -> "more"
    edges[:n, :n, :][np.arange(n)[:, None], np.arange(n)[None, :], bond_class] = 1
    edges[:n, :n, :][np.arange(n)[:, None], np.arange(n)[None, :], len(BOND_TYPES) + hops] = 1
    edges[np.arange(n), np.arange(n)] = 0  # no self edges
    return nodes, edges, np.asarray(bond_list, dtype=np.int64).reshape(-1, 2)


# -- RMSD and GeoDiff's measures ----------------------------------------------------
def with_conformers(template, positions: np.ndarray):
    """A copy of `template` holding one conformer per row of positions (k, n_atoms, 3)."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.Mol(template)
    mol.RemoveAllConformers()
    for coords in np.asarray(positions, dtype=np.float64):
        conformer = Chem.Conformer(mol.GetNumAtoms())
        for i, (x, y, z) in enumerate(coords):
            conformer.SetAtomPosition(i, Point3D(float(x), float(y), float(z)))
        mol.AddConformer(conformer, assignId=True)
    return mol


def rmsd_matrix(template, reference: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """(k_ref, k_gen) best-alignment heavy-atom RMSD in Angstrom (rdMolAlign.GetBestRMS:
    over the molecule's symmetry-equivalent atom maps, each optimally superposed).
    O(k_ref x k_gen x symmetry matches) alignments."""
    from rdkit.Chem import rdMolAlign

    refs = with_conformers(template, reference)
    probes = with_conformers(template, generated)
    out = np.empty((len(reference), len(generated)))
    for j in range(len(generated)):
        for i in range(len(reference)):
            # GetBestRMS moves the probe onto the reference; RMSD is invariant to that move
            out[i, j] = rdMolAlign.GetBestRMS(probes, refs, prbId=j, refId=i)
    return out


def coverage_and_matching(library: ConformerLibrary, generated: np.ndarray, generated_mol: np.ndarray,
                          threshold: float) -> tuple[float, float]:
    """GeoDiff's COV-R and MAT-R of generated conformers (k, n_max, 3) against the
    library's held-out ones, averaged over molecules."""
    coverage, matching = [], []
    for index, template in enumerate(library.mols):
        n = int(library.n_atoms[index])
        refs = library.test_pos[library.test_mol == index][:, :n]
        mine = generated[generated_mol == index][:, :n]
        if len(refs) == 0:
            continue
        if len(mine) == 0:  # nothing generated for the molecule: nothing covered
            coverage.append(0.0)
            matching.append(np.nan)
            continue
        nearest = rmsd_matrix(template, refs, mine).min(axis=1)
        coverage.append(float((nearest < threshold).mean()))
        matching.append(float(nearest.mean()))
    return float(np.mean(coverage)), float(np.nanmean(matching)) if np.isfinite(matching).any() else np.nan


# -- pictures ---------------------------------------------------------------------
ELEMENT_COLOURS = {"C": "0.25", "N": "tab:blue", "O": "tab:red", "F": "tab:green", "S": "gold", "Cl": "limegreen",
                   "Br": "brown", "P": "orange", "I": "purple"}


def conformers_png(library: ConformerLibrary, rows: list[tuple[str, int, np.ndarray]], columns: int) -> bytes:
    """A grid of 2-D projections (onto each conformer's two principal axes) of
    (label, molecule index, positions (n_max, 3)) triples, atoms coloured by element."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = int(np.ceil(len(rows) / columns))
    fig, axes = plt.subplots(n_rows, columns, figsize=(2.2 * columns, 2.3 * n_rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (label, index, positions) in zip(axes.flat, rows, strict=False):
        n = int(library.n_atoms[index])
        xyz = np.asarray(positions[:n], dtype=np.float64)
        xyz = xyz - xyz.mean(axis=0)
        _, _, vt = np.linalg.svd(xyz, full_matrices=False)
        flat = xyz @ vt[:2].T
        for i, j in library.bonds[index]:
            ax.plot(flat[[i, j], 0], flat[[i, j], 1], color="0.6", lw=1.2, zorder=1)
        colours = [ELEMENT_COLOURS.get(a.GetSymbol(), "magenta") for a in library.mols[index].GetAtoms()]
        ax.scatter(flat[:, 0], flat[:, 1], s=18, c=colours, zorder=2, edgecolors="none")
        ax.set_xlim(-7, 7)
        ax.set_ylim(-7, 7)
        ax.set_aspect("equal")
        ax.set_title(label, fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
