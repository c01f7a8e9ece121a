"""Static checks of cluster/: the launcher config, the KubeRay manifests, the runtime
environment and the tracking-server files parse, agree with each other, keep secret
values out, and bind loopback wherever they are a local default. No cluster, no network.

    python -m pytest tests/test_cluster_configs.py -q
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
MLFLOW_K8S = CLUSTER / "mlflow" / "tracking-server.k8s.yaml"
MLFLOW_SCRIPT = CLUSTER / "mlflow" / "tracking-server.sh"
CLUSTER_README = CLUSTER / "README.md"

SHARED = "/shared"  # the mount every node shares; --out goes under it
LOOPBACK = "127.0.0.1"
# A documentation command line that binds a private interface on purpose ends with this.
PRIVATE_MARKER = "# cluster-private"
# HF_TOKEN, PGPASSWORD, AWS_SECRET_ACCESS_KEY, ... but not TOKENIZERS_PARALLELISM
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|KEY)(?![A-Z])")
GPU = "nvidia.com/gpu"

CLUSTER_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file() and not p.name.startswith("."))
YAML_FILES = [p for p in CLUSTER_FILES if p.suffix in (".yaml", ".yml")]
K8S_FILES = [RAYCLUSTER, RAYJOB, MLFLOW_K8S]
# Files whose commands are local defaults (plus every shell script under cluster/).
DOC_FILES = [ROOT / "Makefile", ROOT / "README.md", *sorted(CLUSTER.rglob("*.md"))]
SCRIPTS = sorted(CLUSTER.rglob("*.sh"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one(path: Path, kind: str) -> dict:
    found = [d for d in docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{rel(path)}: expected one {kind}, found {len(found)}"
    return found[0]


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, as a shell reads them."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
        else:
            out.append(buf + line)
            buf = ""
    return out + ([buf] if buf else [])


def commands(line: str) -> list[list[str]]:
    """Simple commands of a shell line (split at ; && ||), each as tokens."""
    return [shlex.split(part) for part in re.split(r";|&&|\|\|", line) if part.strip()]


def flag(tokens: list[str], name: str) -> str | None:
    for i, tok in enumerate(tokens):
        if tok == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def header(path: Path) -> list[str]:
    """The leading comment block (after a shebang)."""
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line)
    return block


# ---------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses(path):
    assert docs(path), f"{rel(path)} holds no YAML document"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=rel)
def test_every_file_opens_with_how_to_use_it(path):
    if path.suffix == ".md":
        assert path.read_text().startswith("# "), f"{rel(path)} opens with a title"
        return
    block = header(path)
    assert len(block) >= 3, f"{rel(path)} opens with a header comment saying how to use it"
    assert rel(path) in "\n".join(block), f"{rel(path)}'s header shows the command that uses it"


def test_the_configs_exist():
    for path in (LAUNCHER, RAYCLUSTER, RAYJOB, RUNTIME_ENV, MLFLOW_K8S, MLFLOW_SCRIPT, CLUSTER_README):
        assert path.is_file(), rel(path)
    assert os.access(MLFLOW_SCRIPT, os.X_OK), "tracking-server.sh is executable"


def test_sweeps_named_in_cluster_docs_exist():
    named = set()
    for path in [*CLUSTER_FILES, ROOT / "README.md"]:
        named |= set(re.findall(r"sweeps/[A-Za-z0-9_]+\.yaml", path.read_text()))
    assert named
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"cluster docs name specs that do not exist: {missing}"


def test_the_rehearsals_jobs_validate_as_submitted(shaped_standins):
    """The fast lane's check of the three-node rehearsal (tests/test_rehearsal.py, slow
    lane): each paper-scale spec with the --set values cluster/rehearse.sh submits it
    with, through `collapse-ray validate`; nothing starts."""
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               **{f"STANDIN_{name.upper()}": str(path) for name, path in shaped_standins.items()})
    done = subprocess.run([str(ROOT / "cluster" / "rehearse.sh"), "--validate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for spec in ("fig5_value_grid", "sft_helpsteer2", "pretraining_tinystories"):
        assert f"{spec}: " in done.stdout, (spec, done.stdout)


def cluster_section_of_readme() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Running on a cluster\n", 1)[1].split("\n## ", 1)[0]


def test_job_submissions_write_to_an_absolute_out():
    """`ray job submit` runs the job in an unpacked copy elsewhere: a relative --out
    would land there, out of every other node's sight."""
    seen = 0
    texts = {rel(p): p.read_text() for p in CLUSTER_FILES} | {"README.md#running-on-a-cluster": cluster_section_of_readme()}
    for where, text in texts.items():
        for line in logical_lines(text):
            if "ray job submit" not in line or "collapse-ray run" not in line:
                continue
            out = re.search(r"--out[= ]+[\"']?(\S+)", line.split("collapse-ray run", 1)[1])
            assert out, f"{where}: a submitted run names --out: {line.strip()}"
            assert out.group(1).startswith(("/", "$")), f"{where}: --out must be absolute: {line.strip()}"
            seen += 1
    assert seen >= 4


# ----------------------------------------------------------------------- launcher (AWS)


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_follows_rays_schema(launcher):
    """Ray's own JSON schema for cluster configs catches misspelt or misplaced fields."""
    jsonschema = pytest.importorskip("jsonschema")
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    assert launcher["provider"]["type"] == "aws"


def test_launcher_has_a_cpu_head_and_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = launcher["head_node_type"]
    assert head in types
    assert types[head]["resources"].get("GPU", 0) == 0, "the head advertises no GPU"
    assert types[head]["resources"].get("CPU", 0) >= 1, "the head offers CPUs to trials"
    assert not re.match(r"(g|p)\d", types[head]["node_config"]["InstanceType"]), "a CPU instance"
    workers = {k: v for k, v in types.items() if k != head}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu, "a worker type advertises GPUs"
    for node in gpu.values():
        assert re.match(r"(g|p)\d", node["node_config"]["InstanceType"]), "a GPU instance"
        assert node.get("min_workers", 0) <= node["max_workers"] <= launcher["max_workers"]
        assert node["max_workers"] >= 1


def test_launcher_binds_the_dashboard_to_loopback(launcher):
    heads = [c for line in launcher["head_start_ray_commands"] for c in commands(line)
             if c[:2] == ["ray", "start"] and "--head" in c]
    assert len(heads) == 1
    assert flag(heads[0], "--dashboard-host") == LOOPBACK
    workers = [c for line in launcher["worker_start_ray_commands"] for c in commands(line) if c[:2] == ["ray", "start"]]
    assert workers and all("--head" not in c and flag(c, "--address") for c in workers)


def test_launcher_shares_a_filesystem_and_runs_sweeps_on_it(launcher):
    setup = launcher["setup_commands"]
    # mount [-t TYPE] [-o OPTIONS] SOURCE TARGET
    targets = [m.group(1) for c in setup for m in re.finditer(r"\bmount\s+(?:-[a-z]\s+\S+\s+)*\S+\s+([^\s)]+)", c)]
    assert SHARED in targets, f"setup mounts the shared file system at {SHARED}: {targets}"
    runs = [line for line in logical_lines(LAUNCHER.read_text()) if "collapse-ray run" in line]
    assert runs, "the header shows a sweep submitted to the cluster"
    for line in runs:
        out = re.search(r"--out\s+(\S+)", line)
        assert out and out.group(1).startswith(SHARED + "/"), line


def test_launcher_installs_this_checkout_and_shares_the_ray_token(launcher):
    mounts = launcher["file_mounts"]
    code = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert len(code) == 1, "file_mounts copies this checkout"
    installs = [c for c in launcher["setup_commands"] if re.search(r"pip install\b.*-e\s+" + re.escape(code[0]), c)]
    assert installs, "setup installs the copied checkout"
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", "every node gets the Ray token"
    assert any("RAY_AUTH_MODE=token" in c for c in launcher["setup_commands"])


# -------------------------------------------------------------------------- runtime env


@pytest.fixture(scope="module")
def runtime_env() -> dict:
    return yaml.safe_load(RUNTIME_ENV.read_text())


def test_runtime_env_uploads_the_checkout_without_outputs(runtime_env):
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)  # Ray's own type checks (env_vars: Dict[str, str], ...)
    assert set(runtime_env) <= {"working_dir", "excludes", "env_vars"}
    assert runtime_env["working_dir"] == "."
    for pattern in ("results/", ".venv/", "mlruns/", "*.db"):
        assert pattern in runtime_env["excludes"], pattern


def test_runtime_env_carries_no_secrets(runtime_env):
    names = list(runtime_env.get("env_vars", {}))
    assert not [n for n in names if SECRET_NAME.search(n)], "secrets never go into a runtime env"


# ------------------------------------------------------------------------------ KubeRay


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return one(RAYCLUSTER, "RayCluster")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return one(RAYJOB, "RayJob")


def cluster_specs() -> list[tuple[str, dict]]:
    return [("RayCluster", one(RAYCLUSTER, "RayCluster")["spec"]),
            ("RayJob", one(RAYJOB, "RayJob")["spec"]["rayClusterSpec"])]


def pod_groups(spec: dict) -> list[tuple[str, dict]]:
    """(name, group spec) for the head and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_manifests_are_ray_io_v1(raycluster, rayjob):
    for path, kind in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")):
        assert [(d["apiVersion"], d["kind"]) for d in docs(path)] == [("ray.io/v1", kind)], rel(path)


def test_rayjob_runs_the_same_cluster_as_raycluster(raycluster, rayjob):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]


@pytest.mark.parametrize("name, spec", cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_head_is_cpu_and_workers_are_gpu(name, spec):
    groups = pod_groups(spec)
    for group_name, group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), \
            f"{name}/{group_name}: rayStartParams values are strings"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    for c in containers(head):
        for part in ("limits", "requests"):
            assert GPU not in c.get("resources", {}).get(part, {}), f"{name}: the head asks for no GPU"
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        limits = [c["resources"]["limits"].get(GPU, 0) for c in containers(group)]
        assert int(max(limits)) >= 1, f"{name}/{group['groupName']}: GPU workers"
        assert group["minReplicas"] <= group["maxReplicas"]
    images = {c["image"] for _, g in groups for c in containers(g)}
    assert len(images) == 1, f"{name}: head and workers run one image"


@pytest.mark.parametrize("name, spec", cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_mounts_the_shared_claim_on_every_pod(name, spec):
    claims = set()
    for group_name, group in pod_groups(spec):
        volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes", [])}
        for c in containers(group):
            mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == SHARED]
            assert len(mounts) == 1, f"{name}/{group_name}/{c['name']} mounts {SHARED}"
            volume = volumes[mounts[0]["name"]]
            claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"{name}: one shared claim for all pods, got {claims}"
    assert claims == {readme_claim()["metadata"]["name"]}


def readme_claim() -> dict:
    """The PersistentVolumeClaim that cluster/README.md applies (kept out of the Ray
    manifests so that deleting a RayJob never deletes the results)."""
    blocks = re.findall(r"<<'EOF'\n(.*?)\nEOF", CLUSTER_README.read_text(), re.DOTALL)
    claims = [d for b in blocks for d in yaml.safe_load_all(b) if d and d.get("kind") == "PersistentVolumeClaim"]
    assert len(claims) == 1
    return claims[0]


def test_the_shared_claim_is_readwritemany():
    assert "ReadWriteMany" in readme_claim()["spec"]["accessModes"]


@pytest.mark.parametrize("name, spec", cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_keeps_the_cluster_inside_and_authenticated(name, spec):
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: Ray token authentication"
    for group_name, group in pod_groups(spec):
        pod = group["template"]["spec"]
        assert not pod.get("hostNetwork", False)
        for c in containers(group):
            assert not any("hostPort" in p for p in c.get("ports", [])), f"{name}/{group_name}"


def test_rayjob_runs_an_existing_spec_on_the_shared_mount(rayjob):
    line = rayjob["spec"]["entrypoint"]
    runs = [c for c in commands(line) if c[:2] == ["collapse-ray", "run"]]
    assert len(runs) == 1, line
    spec_path = runs[0][2]
    assert re.fullmatch(r"sweeps/[A-Za-z0-9_]+\.yaml", spec_path) and (ROOT / spec_path).is_file(), spec_path
    out = flag(runs[0], "--out")
    assert out and out.startswith(SHARED + "/"), f"--out {out} is under the shared mount {SHARED}"
    cds = [c for c in commands(line) if c[0] == "cd"]
    for cd in cds:  # the code's place in the image, as the image recipe builds it
        assert f"WORKDIR {cd[1]}" in CLUSTER_README.read_text()


def test_rayjob_runtime_env_is_runtime_env_yaml_without_the_upload(rayjob, runtime_env):
    inline = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    expected = {k: v for k, v in runtime_env.items() if k not in ("working_dir", "excludes")}
    assert inline == expected


def test_rayjob_cleans_up_after_itself(rayjob):
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")


def env_of(group: dict) -> dict[str, dict]:
    return {e["name"]: e for c in containers(group) for e in c.get("env", [])}


@pytest.mark.parametrize("name, spec", cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_pods_log_to_the_tracking_service(name, spec):
    deployment = one(MLFLOW_K8S, "Deployment")
    service = one(MLFLOW_K8S, "Service")
    for group_name, group in pod_groups(spec):
        uri = urlsplit(env_of(group)["MLFLOW_TRACKING_URI"]["value"])
        assert uri.hostname == service["metadata"]["name"], f"{name}/{group_name}"
        assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


# ------------------------------------------------------------------------------ secrets


def env_lists(node):
    """Every `env:` list of container-like objects anywhere in a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            else:
                yield from env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from env_lists(item)


@pytest.mark.parametrize("path", K8S_FILES, ids=rel)
def test_secret_env_vars_come_from_kubernetes_secrets(path):
    secret_vars = []
    for doc in docs(path):
        for env in env_lists(doc):
            for var in env:
                if SECRET_NAME.search(var["name"]):
                    secret_vars.append(var["name"])
                    assert "value" not in var, f"{rel(path)}: {var['name']} has an inline value"
                    ref = var.get("valueFrom", {}).get("secretKeyRef", {})
                    assert ref.get("name") and ref.get("key"), f"{rel(path)}: {var['name']} uses secretKeyRef"
    assert secret_vars, f"{rel(path)} passes its credentials as env vars from Secrets"


CREDENTIAL_PATTERNS = {
    "password in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"`]+:[^\s/@'\"`$*]+@"),
    "AWS access key id": re.compile(r"\bA(KIA|SIA)[0-9A-Z]{16}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "literal secret assignment": re.compile(
        r"\b[A-Z_]*(TOKEN|PASSWORD|SECRET|KEY)[A-Z_]*\s*[=:]\s*['\"]?[A-Za-z0-9/+_-]{16,}"),
}


@pytest.mark.parametrize("path", [*CLUSTER_FILES, ROOT / "README.md"], ids=rel)
def test_no_credentials_are_written_down(path):
    text = path.read_text()
    for what, pattern in CREDENTIAL_PATTERNS.items():
        hit = pattern.search(text)
        assert hit is None, f"{rel(path)}: {what}: {hit.group(0) if hit else ''}"


def test_the_credential_patterns_catch_credentials():
    for name in ("HF_TOKEN", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD"):
        assert SECRET_NAME.search(name), name
    for name in ("TOKENIZERS_PARALLELISM", "MLFLOW_TRACKING_URI", "PYTHONUNBUFFERED"):
        assert not SECRET_NAME.search(name), name
    samples = ["postgresql://mlflow:hunter2@db:5432/mlflow", "AKIAABCDEFGHIJKLMNOP",
               "hf_" + "a1" * 20, "HF_TOKEN=abcdefghijklmnopqrstuvwx"]
    for sample in samples:
        assert any(p.search(sample) for p in CREDENTIAL_PATTERNS.values()), sample
    clean = ["postgresql://mlflow@db:5432/mlflow", "export RAY_AUTH_MODE=token", 'PGPASSWORD="$PGPASSWORD"']
    for sample in clean:
        assert not any(p.search(sample) for p in CREDENTIAL_PATTERNS.values()), sample


# ----------------------------------------------------------------------------- loopback


def resolve_shell_vars(text: str) -> str:
    """Substitute simple NAME=literal assignments and ${NAME:-default} defaults."""
    assigned = dict(re.findall(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=([0-9A-Za-z.:/_-]+)\s*$", text, re.MULTILINE))
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)
    for name, value in assigned.items():
        text = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, text)
    return text


def loopback_violations(text: str) -> list[str]:
    """Command lines starting `mlflow ui|server` or `ray start --head` that do not bind
    127.0.0.1, unless marked as cluster-private on purpose."""
    bad = []
    for line in logical_lines(text):
        if PRIVATE_MARKER in line:
            continue
        for match in re.finditer(r"\bmlflow\s+(?:ui|server)\b([^`]*)", line):
            args = match.group(1)
            if "--" not in args:  # a mention in prose, not a command
                continue
            host = re.search(r"(?:--host|-h)(?:=|\s+)[\"']?([^\s\"']+)", args)
            if not host or host.group(1) != LOOPBACK:
                bad.append(line.strip())
        for match in re.finditer(r"\bray\s+start\b([^`]*)", line):
            args = match.group(1)
            if "--head" not in args:
                continue
            host = re.search(r"--dashboard-host(?:=|\s+)[\"']?([^\s\"']+)", args)
            if not host or host.group(1) != LOOPBACK:
                bad.append(line.strip())
    return bad


@pytest.mark.parametrize("path", DOC_FILES + SCRIPTS, ids=rel)
def test_local_defaults_bind_loopback(path):
    text = path.read_text()
    if path.suffix == ".sh":
        text = resolve_shell_vars(text)
    assert loopback_violations(text) == []


def test_the_loopback_check_catches_exposed_servers():
    assert loopback_violations("mlflow server --backend-store-uri sqlite:///x.db --host 0.0.0.0")
    assert loopback_violations("mlflow ui --backend-store-uri sqlite:///x.db --port 5000")  # no --host
    assert loopback_violations("ray start --head --port 6379 \\\n  --dashboard-host 0.0.0.0")
    assert loopback_violations("`ray start --head --port 6379`")
    assert not loopback_violations("mlflow ui --backend-store-uri sqlite:///x.db --host 127.0.0.1")
    assert not loopback_violations("ray start --head --dashboard-host=127.0.0.1")
    assert not loopback_violations("mlflow server --host 10.0.0.5 --port 5000  " + PRIVATE_MARKER)
    assert not loopback_violations("an `mlflow server` on 127.0.0.1:5000")
    assert resolve_shell_vars('H=127.0.0.1\nmlflow server --host "$H" --x "${P:-5000}"').endswith(
        'mlflow server --host "127.0.0.1" --x "5000"')


def test_the_tracking_service_stays_inside_the_cluster():
    service = one(MLFLOW_K8S, "Service")
    assert service["spec"].get("type") == "ClusterIP"
    assert not any("nodePort" in p for p in service["spec"]["ports"])
    pod = one(MLFLOW_K8S, "Deployment")["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork", False)
    (container,) = pod["containers"]
    assert not any("hostPort" in p for p in container.get("ports", []))
    args = container["command"] + container["args"]
    assert args[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in args, "artifacts go through the server, so Ray pods hold no bucket keys"
    assert (flag(args, "--artifacts-destination") or "").startswith(("s3://", "$("))
    assert flag(args, "--allowed-hosts"), "a Service name is not among MLflow's default allowed hosts"
    env = {e["name"]: e for e in container["env"]}
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql://") and urlsplit(uri).password is None
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")


# ----------------------------------------------------------- tracking-server.sh, for real


@pytest.fixture
def fake_mlflow(tmp_path):
    """An `mlflow` first on PATH that records its arguments instead of serving."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    stub = bin_dir / "mlflow"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)

    def run(**env_vars):
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), **env_vars}
        proc = subprocess.run(["bash", str(MLFLOW_SCRIPT)], check=False, env=env, capture_output=True, text=True, timeout=30)
        argv = record.read_text().splitlines() if record.exists() else None
        return proc, argv

    return run


STORES = {"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@db.internal:5432/mlflow",
          "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow"}


def test_tracking_server_script_defaults_to_loopback(fake_mlflow):
    proc, argv = fake_mlflow(**STORES)
    assert proc.returncode == 0, proc.stderr
    assert argv[0] == "server"
    assert flag(argv, "--host") == LOOPBACK
    assert flag(argv, "--backend-store-uri") == STORES["MLFLOW_BACKEND_STORE_URI"]
    assert flag(argv, "--artifacts-destination") == STORES["MLFLOW_ARTIFACTS_DESTINATION"]
    assert "--serve-artifacts" in argv
    assert flag(argv, "--allowed-hosts") is None  # MLflow's defaults: localhost, private IPs


def test_tracking_server_script_binds_the_interface_it_is_given(fake_mlflow):
    proc, argv = fake_mlflow(**STORES, MLFLOW_HOST="10.0.1.23", MLFLOW_PORT="5001",
                             MLFLOW_ALLOWED_HOSTS="mlflow.internal:5001")
    assert proc.returncode == 0, proc.stderr
    assert flag(argv, "--host") == "10.0.1.23"
    assert flag(argv, "--port") == "5001"
    assert flag(argv, "--allowed-hosts") == "mlflow.internal:5001"


@pytest.mark.parametrize("uri", ["postgresql://mlflow:hunter2@db:5432/mlflow",
                                 "postgresql+psycopg2://mlflow:hunter2@db/mlflow"])
def test_tracking_server_script_refuses_a_password_in_the_uri(fake_mlflow, uri):
    proc, argv = fake_mlflow(**{**STORES, "MLFLOW_BACKEND_STORE_URI": uri})
    assert proc.returncode == 2 and argv is None
    assert "hunter2" not in proc.stderr and "PGPASSFILE" in proc.stderr


def test_tracking_server_script_needs_both_stores(fake_mlflow):
    proc, argv = fake_mlflow(MLFLOW_BACKEND_STORE_URI=STORES["MLFLOW_BACKEND_STORE_URI"])
    assert proc.returncode != 0 and argv is None
    assert "MLFLOW_ARTIFACTS_DESTINATION" in proc.stderr


# ------------------------------------------------------------------------------- README


def test_readme_points_to_the_cluster_guide():
    text = (ROOT / "README.md").read_text()
    titles = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert "Running on a cluster" in titles
    assert titles.index("Running on a cluster") > titles.index("Quickstart: run it, read the answer")  # after the basics
    section = cluster_section_of_readme()
    assert "cluster/README.md" in section
    assert "cluster/local_cluster.sh start" in section
