"""The conformer_diffusion task: an E(3)-equivariant denoiser, RDKit's RMSD and GeoDiff's
COV/MAT, a deterministic conformer library (bundled SMILES or SDF), batch independence,
its validation messages, and the quick sweep end to end (replace against accumulate)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from collapse_ray.core.loop import chain_generators, run_chain
from collapse_ray.neural import molecules
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks.conformer_diffusion import ConformerDiffusionTask
from collapse_ray.validation import SpecError, from_mapping

from .helpers import one_torch_thread  # noqa: F401 - a fixture, used by pytestmark

# the quick sweep's margins at its last iteration (see the end-to-end test's numbers)
COV_MARGIN, MAT_MARGIN = 0.2, 0.1
# Four small molecules, a two-layer network and ten steps: a fit takes a fraction of a second.
TINY = ConformerDiffusionTask(n_molecules=4, n_conformers=12, n_test_conformers=3, n_steps=10, hidden=8,
                              n_layers=2, epochs=2, batch_size=16, n_eval_noise=2, n_picture=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one intra-op thread (tests/helpers.py)


def gens(seeds, stream=0):
    return [chain_generators(s)[stream] for s in seeds]


def random_rotation(rng: np.random.Generator, reflect: bool = False) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q @ np.diag([1.0, 1.0, -1.0]) if reflect else q


@pytest.mark.parametrize("reflect", [False, True])
def test_the_denoiser_is_e3_equivariant(reflect):
    """Rotating (or reflecting) and translating x_t rotates the predicted noise and leaves
    it otherwise unchanged: eps(R x + t) = R eps(x), to float32 tolerance."""
    task = dataclasses.replace(TINY, hidden=16, n_layers=3)
    library = task.library()
    mol = np.array([[0, 1, 2], [3, 2, 1]])  # two chains, three molecules each, padded rows included
    net = task._network([torch.Generator().manual_seed(s) for s in (0, 1)])
    nodes, edges, mask = task._graph(mol)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 3, library.n_max, 3)).astype(np.float32)) * mask[..., None]
    emb = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    rotation = torch.from_numpy(random_rotation(rng, reflect).astype(np.float32))
    shift = torch.from_numpy(rng.standard_normal(3).astype(np.float32) * 5)
    with torch.no_grad():
        eps = task._predict(net, x, nodes, edges, mask, emb)
        moved = task._predict(net, (x @ rotation.T + shift) * mask[..., None], nodes, edges, mask, emb)
    assert eps.abs().max() > 0.1, "a non-trivial prediction"
    torch.testing.assert_close(moved, eps @ rotation.T, atol=2e-5, rtol=1e-4)
    # the prediction has zero centre of mass over real atoms and is zero on padding
    torch.testing.assert_close((eps * mask[..., None]).sum(-2), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)
    assert (eps[mask == 0] == 0).all()


def test_the_split_first_message_layer_equals_the_plain_mlp():
    """egnn._message computes phi_e's first layer per atom; it must equal phi_e on the
    concatenated pair features."""
    from collapse_ray.neural.batched import BatchedMLP
    from collapse_ray.neural.egnn import _message

    c, b, n, hidden, e = 2, 3, 5, 4, 6
    g = torch.Generator().manual_seed(0)
    mlp = BatchedMLP([2 * hidden + 1 + e, hidden, hidden], [g, g])
    h, sq, edges = torch.randn(c, b, n, hidden), torch.rand(c, b, n, n, 1), torch.rand(c, b, n, n, e)
    pairs = torch.cat([h[:, :, :, None].expand(c, b, n, n, hidden), h[:, :, None].expand(c, b, n, n, hidden), sq,
                       edges], dim=-1)
    expected = torch.nn.functional.silu(mlp(pairs.reshape(c, -1, pairs.shape[-1]))).reshape(c, b, n, n, hidden)
    torch.testing.assert_close(_message(mlp, h, sq, edges), expected, atol=1e-5, rtol=1e-5)


def test_rmsd_is_zero_to_a_rotated_copy_and_symmetric():
    library = TINY.library()
    rng = np.random.default_rng(1)
    largest = []
    for index in range(library.n_molecules):
        n = int(library.n_atoms[index])
        refs = library.test_pos[library.test_mol == index][:, :n].astype(np.float64)
        moved = refs @ random_rotation(rng).T + rng.standard_normal(3) * 3
        same = molecules.rmsd_matrix(library.mols[index], refs, moved)
        np.testing.assert_allclose(np.diag(same), 0, atol=1e-4)  # float32 coordinates
        np.testing.assert_allclose(same, same.T, atol=1e-4)  # best RMSD is symmetric
        largest.append(same.max())
    # rigid molecules relax to one MMFF minimum (RMSD ~0 between conformers); flexible ones do not
    assert max(largest) > 0.3


def test_cov_and_mat_of_the_references_themselves_and_of_noise():
    library = TINY.library()
    cov, mat = molecules.coverage_and_matching(library, library.test_pos, library.test_mol, 1.25)
    assert cov == 1.0 and mat == pytest.approx(0, abs=1e-6)
    # random points with the same spread: far from every reference
    rng = np.random.default_rng(0)
    spread = 2 * library.mask[library.test_mol][..., None]
    noise = rng.standard_normal(library.test_pos.shape).astype(np.float32) * spread
    cov, mat = molecules.coverage_and_matching(library, noise, library.test_mol, 1.25)
    assert cov < 0.5 and mat > 1.25


def test_the_library_is_deterministic_for_a_seed_and_split_by_conformer():
    build = molecules.conformer_library.__wrapped__  # past the per-process cache
    a, b, c = build("drugs", 3, 6, 2, 0), build("drugs", 3, 6, 2, 0), build("drugs", 3, 6, 2, 1)
    for name in ("train_pos", "train_mol", "test_pos", "test_mol", "node_features", "edge_features", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.allclose(a.train_pos, c.train_pos), "another seed embeds other conformers"
    assert a.smiles == c.smiles and a.names == ("paracetamol", "benzocaine", "gabapentin")
    # every molecule has 4 training and 2 held-out conformers, centred, zero on padding
    assert np.bincount(a.train_mol).tolist() == [4] * 3 and np.bincount(a.test_mol).tolist() == [2] * 3
    for pos, mol in ((a.train_pos, a.train_mol), (a.test_pos, a.test_mol)):
        np.testing.assert_allclose(pos.sum(axis=1), 0, atol=1e-4)
        assert (pos[~a.mask[mol]] == 0).all()
    # bonds are about 1.2-1.6 Angstrom: real geometry, not noise
    i, j = a.bonds[0].T
    lengths = np.linalg.norm(a.train_pos[0, i] - a.train_pos[0, j], axis=-1)
    assert lengths.min() > 1.1 and lengths.max() < 1.6


def test_the_bundled_list_is_drug_sized_and_parses():
    from rdkit import Chem

    entries = molecules._read_smiles(molecules.BUNDLED)
    assert len(entries) == len(molecules.smiles_entries("drugs")) >= 30
    sizes = [Chem.MolFromSmiles(smiles).GetNumHeavyAtoms() for smiles, _ in entries]
    assert all(10 <= s <= 30 for s in sizes) and sizes == sorted(sizes)


def test_sdf_conformers_load_through_source(tmp_path):
    """A user's SDF (as GEOM-Drugs written with RDKit's SDWriter) goes through the same
    call: molecules are grouped by graph, conformers kept, shuffled atom order undone."""
    from rdkit import Chem

    library = TINY.library()
    path = tmp_path / "confs.sdf"
    writer = Chem.SDWriter(str(path))
    rng = np.random.default_rng(0)
    for index, template in enumerate(library.mols):
        n = int(library.n_atoms[index])
        conformers = np.concatenate([library.train_pos[library.train_mol == index],
                                     library.test_pos[library.test_mol == index]])[:, :n]
        for positions in conformers:
            mol = molecules.with_conformers(template, positions[None])
            mol = Chem.RenumberAtoms(mol, [int(k) for k in rng.permutation(n)])  # files need not agree on order
            mol.SetProp("_Name", library.names[index])
            writer.write(mol)
    writer.close()
    task = dataclasses.replace(TINY, source=str(path))
    task.validate("task")
    loaded = task.library()
    assert loaded.smiles == library.smiles and loaded.names == library.names
    assert len(loaded.train_mol) + len(loaded.test_mol) == len(library.train_mol) + len(library.test_mol)
    # every loaded conformer is one of the written ones (RMSD ~0, SDF keeps 4 decimals)
    for index in range(library.n_molecules):
        n = int(library.n_atoms[index])
        written = np.concatenate([library.train_pos[library.train_mol == index],
                                  library.test_pos[library.test_mol == index]])[:, :n]
        rmsd = molecules.rmsd_matrix(library.mols[index], written, loaded.test_pos[loaded.test_mol == index][:, :n])
        assert (rmsd.min(axis=0) < 1e-3).all()
    assert task.row_nbytes() == 4 * 3 * loaded.n_max + 8


def test_pickles_and_missing_sources_are_refused_naming_the_field(tmp_path):
    pickled = tmp_path / "drugs.pickle"
    pickled.write_bytes(b"not read")
    with pytest.raises(SpecError, match=r"task.source must be .*unpickling runs code"):
        from_mapping(ConformerDiffusionTask, {"source": str(pickled)}, "task")
    with pytest.raises(SpecError, match=r"task.source must be .*not an existing file or folder"):
        from_mapping(ConformerDiffusionTask, {"source": str(tmp_path / "missing.sdf")}, "task")
    smiles = tmp_path / "mine.smi"
    smiles.write_text("CCO ethanol\nC1CC not_a_ring\n")
    with pytest.raises(SpecError, match=r"task.source must be a SMILES file RDKit can parse; got .*not_a_ring"):
        from_mapping(ConformerDiffusionTask, {"source": str(smiles), "n_molecules": 2}, "task")
    with pytest.raises(SpecError, match=r"task.n_molecules must be an integer in \[1, 2\] for source"):
        from_mapping(ConformerDiffusionTask, {"source": str(smiles), "n_molecules": 3}, "task")


@pytest.mark.parametrize(("changes", "field"), [
    ({"n_molecules": 40}, r"task.n_molecules must be an integer in \[1, 33\] for source 'drugs'"),
    ({"n_test_conformers": 20}, r"task.n_test_conformers must be an integer in \[1, n_conformers\)"),
    ({"beta_start": 0.2, "beta_end": 0.1}, r"task.beta_end must be a number in \[beta_start, 1\)"),
    ({"rmsd_threshold": 0.0}, r"task.rmsd_threshold must be a number in \(0, inf\)"),
])
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(SpecError, match=field):
        from_mapping(ConformerDiffusionTask, changes, "task")


def test_more_real_rows_than_training_conformers_are_refused():
    with pytest.raises(SpecError, match=r"chain.n_real must be an integer <= 36"):
        TINY.check_chain(ChainConfig(n_real=37).resolved(), "chain")
    TINY.check_chain(ChainConfig(n_real=36).resolved(), "chain")


def test_a_chain_gives_the_same_numbers_alone_and_in_a_batch_and_draws_a_picture():
    real_b = TINY.real_data(24, gens([0, 1, 2]))
    real_a = TINY.real_data(24, gens([1]))
    for column in ("pos", "mol"):
        np.testing.assert_array_equal(real_b.train[column][1], real_a.train[column][0])
    model_b, model_a = TINY.fit(real_b.train, real_b.context), TINY.fit(real_a.train, real_a.context)
    batch, alone = TINY.evaluate(model_b, real_b.test), TINY.evaluate(model_a, real_a.test)
    np.testing.assert_allclose(batch["test_loss"][1], alone["test_loss"][0], rtol=1e-4)
    np.testing.assert_allclose(batch["mat_r"][1], alone["mat_r"][0], rtol=1e-3)
    assert set(batch) == {"test_loss", "cov_r", "mat_r", "train_rows_per_s"}
    sample_b = TINY.sample(model_b, 10, gens([0, 1, 2], stream=1))
    sample_a = TINY.sample(model_a, 10, gens([1], stream=1))
    np.testing.assert_array_equal(sample_b["mol"][1], sample_a["mol"][0])
    np.testing.assert_allclose(sample_b["pos"][1], sample_a["pos"][0], atol=1e-3)
    # samples are zero-CoM conformers of the molecules they name, zero on padding
    mask = TINY.library().mask[sample_b["mol"]]
    assert (sample_b["pos"][~mask] == 0).all()
    np.testing.assert_allclose(sample_b["pos"].sum(axis=2), 0, atol=1e-3)
    assert TINY.iteration_artifacts(model_b, real_b.context)["samples.png"].startswith(b"\x89PNG")


@pytest.mark.parametrize("workflow", ["replace", "accumulate", "accumulate_subsample", "fresh_data"])
def test_runs_under_the_workflows(workflow):
    table = run_chain(TINY, ChainConfig(workflow=workflow, n_real=12, n_iterations=3).resolved(), seeds=[0]).table
    assert len(table) == 3 and np.isfinite(table.test_loss).all() and table.cov_r.between(0, 1).all()



@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.slow_lane("the molecule sweep: ~3-5 min of EGNN fits; this file's chain tests run the same task and "
                       "loop in-process in the fast lane")
def test_quick_sweep_end_to_end_replace_loses_the_conformers_accumulate_keeps(sweep_once):
    """sweeps/diffusion_molecules_quick.yaml through Ray Tune, MLflow and the results table
    (the session's one run of it, which tests/test_sweep_ray.py's figure check also reads).

    Measured with run_chain on seeds 0-8 (the sweep's chains are seeds 0-2), iteration 1
    -> 4, mean +- sd over seeds: replace's COV-R 1.00 -> 0.42 +- 0.41 (seeds 0-2) and
    0.40 +- 0.16 (seeds 3-8), its MAT-R 0.98 -> 1.25 +- 0.17 and 0.92 -> 1.31 +- 0.07
    Angstrom; accumulate's COV-R stays at 0.90 +- 0.13 and 0.98 +- 0.05, its MAT-R at 1.01
    +- 0.06 and 0.95 +- 0.06. Replace's MAT-R ends above accumulate's for all 9 seeds (by
    0.13-0.46, mean 0.32); on seeds 0-2 the means differ by 0.24 (MAT-R) and 0.48 (COV-R).
    The margins asked for, 0.1 and 0.2, are about 3 standard errors of accumulate's
    3-seed mean (sd 0.06 and 0.13).
    """
    import pyarrow.parquet as pq

    from collapse_ray.tracking.store import client_for

    run = sweep_once("diffusion_molecules_quick")
    table, out = run.table(), run.out
    assert len(table) == 3 * 3 * 4 and not table.duplicated(["run_key", "seed", "iteration"]).any()
    assert table[["test_loss", "cov_r", "mat_r"]].notna().all().all()
    by = {m: table.pivot_table(index="iteration", columns="workflow", values=m) for m in ("test_loss", "cov_r", "mat_r")}
    for name, frame in by.items():
        print(f"\n{name} by iteration (mean over seeds):\n{frame.round(3).to_string()}")
    last = table[table.iteration == 4].pivot_table(index="seed", columns="workflow", values=["cov_r", "mat_r"])
    print(f"\niteration 4 per seed:\n{last.round(3).to_string()}")
    # iteration 1 is the same fit under every workflow (same real data and seeds)
    first = table[table.iteration == 1].pivot_table(index="seed", columns="workflow", values="mat_r")
    np.testing.assert_allclose(first["replace"], first["accumulate"], rtol=1e-4)
    assert by["cov_r"].loc[4, "replace"] < by["cov_r"].loc[4, "accumulate"] - COV_MARGIN
    assert by["mat_r"].loc[4, "replace"] > by["mat_r"].loc[4, "accumulate"] + MAT_MARGIN
    # the pool's rows carry coordinates with their molecule id, by iteration and source
    shards = sorted(out.rglob("part-0.parquet"))
    assert any("source=synthetic" in str(p) for p in shards) and any("source=real" in str(p) for p in shards)
    assert {"pos", "mol"} <= set(pq.read_schema(shards[0]).names)
    # a conformer picture per iteration in each chain's MLflow run
    client = client_for(f"sqlite:///{out / 'mlflow.db'}")
    run_id = table.run_id.iloc[0]
    logged = [a.path for a in client.list_artifacts(run_id, "samples/iteration_004")]
    assert any(p.endswith("samples.png") for p in logged), logged
