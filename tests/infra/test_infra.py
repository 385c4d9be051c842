"""infra/: the Dockerfile, the KubeRay manifests and the cluster-launcher YAML agree with the repo.

Fast and offline: the files are parsed, never built or applied. What is pinned:
the manifests' entrypoints are real `geoseg` commands naming job files that
exist; the image's Ray is constraints.txt's Ray; the image installs with the
constraints; no credentials are written anywhere; the cluster launcher starts Ray.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml

from geoseg.cli import build_parser
from geoseg.job import load_job
from tests.factories import REPO

ROOT = REPO
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "Dockerfile"
RAYJOB = INFRA / "kuberay" / "rayjob-flood-survey.yaml"
RAYCRONJOB = INFRA / "kuberay" / "raycronjob-flood-survey.yaml"
CLUSTER = INFRA / "cluster.yaml"
MANIFESTS = [RAYJOB, RAYCRONJOB]

# Environment variables whose value is a secret: never written, only taken from a Secret.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)


def pinned(package: str) -> str:
    """The exact version constraints.txt pins for ``package``."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = re.fullmatch(rf"{re.escape(package)}==(\S+)", line.split("#")[0].strip())
        if match:
            return match.group(1)
    raise AssertionError(f"constraints.txt pins no {package}")


def documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def single(path: Path) -> dict:
    docs = documents(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}"
    return docs[0]


def rayjob_spec(path: Path) -> dict:
    """The RayJob spec of a RayJob, or the template a RayCronJob creates RayJobs from."""
    doc = single(path)
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    cluster = spec["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(group["groupName"], group["template"]["spec"]) for group in cluster.get("workerGroupSpecs", [])]
    return pods


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def base_image(text: str) -> str:
    """The FROM image of the (last) stage, with ARG defaults declared before it substituted."""
    args, image = {}, None
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "ARG" and image is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
        elif keyword == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), image)
    assert image, "Dockerfile has no FROM"
    return image


def walk(node, path=""):
    """Every (path, mapping) in a parsed YAML tree."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


# --- every file parses -------------------------------------------------------------------------------------------


def test_infra_has_the_four_files():
    for path in (DOCKERFILE, RAYJOB, RAYCRONJOB, CLUSTER):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


@pytest.mark.parametrize(
    "path", sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml")), ids=lambda p: str(p.relative_to(INFRA))
)
def test_every_yaml_parses(path):
    assert documents(path), f"{path.relative_to(ROOT)} holds no YAML document"


# --- KubeRay manifests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, kind", [(RAYJOB, "RayJob"), (RAYCRONJOB, "RayCronJob")], ids=["rayjob", "raycronjob"])
def test_manifest_kind_and_api_version(path, kind):
    doc = single(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert doc["metadata"]["name"]


@pytest.mark.parametrize("path", MANIFESTS, ids=["rayjob", "raycronjob"])
def test_entrypoint_is_a_geoseg_command_on_an_existing_job(path):
    argv = shlex.split(rayjob_spec(path)["entrypoint"])
    assert argv[0] == "geoseg", f"entrypoint runs {argv[0]!r}, not geoseg"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of refusing an unknown command or option
        pytest.fail(f"{shlex.join(argv)!r} is not a valid geoseg command line (argparse exit {exc.code})")
    assert args.command == "run"
    job = ROOT / args.job  # the image ships the repo at the working directory
    assert job.is_file(), f"entrypoint names {args.job}, which is not in the repo"
    load_job(job)  # and it is a valid job file (schema only; no inputs are needed)


@pytest.mark.parametrize("path", MANIFESTS, ids=["rayjob", "raycronjob"])
def test_ray_version_and_lifecycle(path):
    spec = rayjob_spec(path)
    assert spec["rayClusterSpec"]["rayVersion"] == pinned("ray")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1, "a failed run should be retried on a fresh cluster"
    assert spec["submitterConfig"]["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("path", MANIFESTS, ids=["rayjob", "raycronjob"])
def test_pods_run_the_image_from_its_working_directory_with_a_gpu_worker(path):
    spec = rayjob_spec(path)
    pods = pod_specs(spec)
    workdir = dict(dockerfile_instructions(DOCKERFILE.read_text()))["WORKDIR"]
    images = set()
    for name, pod in pods:
        (container,) = pod["containers"]
        images.add(container["image"])
        assert container["workingDir"] == workdir, f"{name}: entrypoint paths are relative to the repo at {workdir}"
        assert container["resources"]["limits"]["memory"]
    assert len(images) == 1, f"head and workers must run one image (one Ray version): {sorted(images)}"
    gpus = [pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") for name, pod in pods if name != "head"]
    assert any(gpu and int(gpu) >= 1 for gpu in gpus), "no worker group asks for a GPU"


@pytest.mark.parametrize("path", MANIFESTS, ids=["rayjob", "raycronjob"])
def test_every_pod_mounts_the_jobs_inputs_and_outputs(path):
    spec = rayjob_spec(path)
    job = load_job(ROOT / build_parser().parse_args(shlex.split(spec["entrypoint"])[1:]).job)
    needed = [job.output_dir, job.predict.scene, job.evaluate.labels]
    needed += [p for scene in job.train.scenes for p in (scene.image, scene.labels)]
    for name, pod in pod_specs(spec):
        (container,) = pod["containers"]
        claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        shared = [Path(m["mountPath"]) for m in container.get("volumeMounts", []) if m["name"] in claims]
        for local in filter(None, needed):
            in_image = Path(container["workingDir"]) / Path(local).resolve().relative_to(ROOT)
            assert any(in_image.is_relative_to(mount) for mount in shared), (
                f"{name}: {in_image} (the job's {Path(local).relative_to(ROOT)}) is on no shared volume"
            )


def test_cron_schedule_is_nightly_and_runs_cannot_overlap():
    doc = single(RAYCRONJOB)
    fields = doc["spec"]["schedule"].split()
    assert len(fields) == 5, "a five-field cron schedule"
    minute, hour, day, month, weekday = fields
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*"), "once a night"
    template = doc["spec"]["jobTemplate"]
    # RayCronJob has no concurrencyPolicy: every attempt's deadline together must end before the next night.
    longest = template["activeDeadlineSeconds"] * (1 + template["backoffLimit"]) + template["ttlSecondsAfterFinished"]
    assert longest < 24 * 3600


def test_rayjob_and_cron_template_run_the_same_job():
    job, template = rayjob_spec(RAYJOB), rayjob_spec(RAYCRONJOB)
    assert job["entrypoint"] == template["entrypoint"]
    assert job["rayClusterSpec"] == template["rayClusterSpec"]
    assert yaml.safe_load(job["runtimeEnvYAML"]) == yaml.safe_load(template["runtimeEnvYAML"])


# --- no credentials -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=["rayjob", "raycronjob"])
def test_runtime_env_holds_environment_variables_only_and_no_secrets(path):
    runtime_env = yaml.safe_load(rayjob_spec(path)["runtimeEnvYAML"])
    assert set(runtime_env) == {"env_vars"}, f"runtimeEnvYAML should set env_vars only, got {sorted(runtime_env)}"
    for name, value in runtime_env["env_vars"].items():
        assert isinstance(value, str), f"{name}: Ray wants env var values as strings"
        assert not SECRET_NAME.search(name), f"{name} in runtimeEnvYAML: take it from a Secret instead"


@pytest.mark.parametrize("path", [*MANIFESTS, CLUSTER], ids=["rayjob", "raycronjob", "cluster"])
def test_no_credential_values_in_manifests(path):
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id is written in the file"
    assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}", text), (
        "an AWS secret access key is written in the file"
    )
    for where, mapping in walk(documents(path)):
        for entry in mapping.get("env", []) if isinstance(mapping.get("env"), list) else []:
            if SECRET_NAME.search(entry.get("name", "")):
                assert "value" not in entry, f"{where}: {entry['name']} has a literal value"
                assert "secretKeyRef" in entry.get("valueFrom", {}), f"{where}: {entry['name']} not from a Secret"


@pytest.mark.parametrize("path", MANIFESTS, ids=["rayjob", "raycronjob"])
def test_pods_take_object_storage_credentials_from_a_secret(path):
    for name, pod in pod_specs(rayjob_spec(path)):
        (container,) = pod["containers"]
        from_secret = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        from_secret += [e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        assert from_secret, f"{name}: object-storage credentials should come from a Secret (envFrom/secretKeyRef)"


def test_dockerfile_bakes_in_no_credentials():
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword in ("ENV", "ARG"):
            assert not SECRET_NAME.search(rest.split("=")[0]), f"{keyword} {rest}: secrets must not be baked in"


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def test_dockerfile_base_is_rays_gpu_image_at_the_pinned_ray_version():
    image = base_image(DOCKERFILE.read_text())
    match = re.fullmatch(r"(?:docker\.io/)?rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu[\d.]+)", image)
    assert match, f"FROM {image}: expected rayproject/ray:<ray version>-py3XX-gpu (or -cuXXX)"
    assert match.group(1) == pinned("ray"), f"image has Ray {match.group(1)}, constraints.txt pins {pinned('ray')}"
    python = (int(match.group(2)), int(match.group(3)))
    assert python >= (3, 11), f"geoseg needs Python >= 3.11; the image has {python}"


def test_dockerfile_installs_geoseg_with_the_constraints():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    copied = " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "geoseg/", "jobs/"):
        assert needed in copied, f"the image does not COPY {needed}"
    installs = [shlex.split(rest) for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest]
    assert installs, "no RUN pip install"
    argv = max(installs, key=len)
    start = max(i for i in range(len(argv) - 1) if argv[i : i + 2] == ["pip", "install"])
    install = argv[start : argv.index("&&", start) if "&&" in argv[start:] else len(argv)]
    assert "." in install, "geoseg (the repo, `.`) is not what pip installs"
    assert any(a == "-c" and b == "constraints.txt" for a, b in itertools.pairwise(install)), (
        f"pip install without -c constraints.txt: {shlex.join(install)}"
    )
    assert "--index-url" not in install and "-i" not in install, "the PyTorch index may only be an extra index"
    assert any(a.startswith("--extra-index-url") for a in install), "no CUDA wheel index for torch"


def test_dockerfile_runs_as_a_non_root_user_and_leaves_the_entrypoint_alone():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image should end as a non-root user, as Ray's images do"
    assert not [k for k, _ in instructions if k in ("ENTRYPOINT", "CMD")], "KubeRay sets the container command"
    assert any(k == "RUN" and "gdal-bin" in rest for k, rest in instructions), "gdal-bin is not installed"


# --- Ray cluster launcher -----------------------------------------------------------------------------------------


def commands_running(commands: list[str], *words: str) -> list[list[str]]:
    """The argv of every simple command in ``commands`` whose program is ``words[0]`` followed by ``words[1:]``."""
    found = []
    for command in commands:
        for part in re.split(r"&&|\|\||;", command):
            argv = shlex.split(part)
            if argv and Path(argv[0]).name == words[0] and argv[1 : len(words)] == list(words[1:]):
                found.append(argv)
    return found


def test_cluster_yaml_starts_ray_on_head_and_workers():
    config = single(CLUSTER)
    heads = commands_running(config["head_start_ray_commands"], "ray", "start")
    assert heads and all("--head" in argv for argv in heads), "head_start_ray_commands do not `ray start --head`"
    workers = commands_running(config["worker_start_ray_commands"], "ray", "start")
    assert workers and all(any(a.startswith("--address") for a in argv) for argv in workers), (
        "worker_start_ray_commands do not `ray start --address=...`"
    )


def test_cluster_yaml_installs_geoseg_with_the_constraints():
    config = single(CLUSTER)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and isinstance(config["provider"]["worker_ips"], list)
    setup = config["setup_commands"]
    assert commands_running(setup, "make", "install") or any(
        "-c" in argv and "constraints.txt" in argv for argv in commands_running(setup, "pip", "install")
    ), "setup_commands do not install geoseg with the pinned constraints"
    mounted = {Path(local).name for local in config["file_mounts"].values()}
    for needed in ("pyproject.toml", "constraints.txt", "Makefile", "geoseg", "jobs"):
        assert needed in mounted, f"file_mounts do not copy {needed} to the nodes"
        assert (ROOT / needed).exists()


def test_cluster_yaml_passes_rays_own_schema():
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(single(CLUSTER)))
