"""The two images, checked without a Docker engine: hadolint, the shape of each Dockerfile
(stages, user, pinned bases, dependency layers before code), and that each image holds and
runs what the chart and the topology test start in it."""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dockerfile import Stage, entrypoint, stages, user

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
API, RAY = DEPLOY / "api.Dockerfile", DEPLOY / "ray.Dockerfile"
IMAGES = {"api": API, "ray": RAY}
HADOLINT = Path(sys.executable).parent / "hadolint"

MODULES = {
    # uvicorn's app; the migration hook Job; the base model registration an operator runs.
    "api": ["service.main", "service.migrate", "service.base_models"],
    # The serving deploy hook (`--submit`) and the Ray job it submits; the training job the
    # API submits (service/jobs/scheduler/launch.py).
    "ray": ["serving.deploy", "training.driver"],
}
"""The modules each image's containers and jobs run (``python -m`` or an app import)."""
PACKAGES = ("contract", "service", "training", "serving", "vllm_cpu", "devstack")
NOT_IN = {"api": {"training", "serving", "vllm_cpu", "devstack"},
          "ray": {"service", "devstack"}}


def copied_packages(path: Path) -> set[str]:
    """The project's packages some stage of ``path`` copies from the build context."""
    return {src.strip("./").split("/")[0] for stage in stages(path) for copy in stage.copies
            if copy.from_stage is None for src in copy.sources} & set(PACKAGES)


def lineage(all_stages: list[Stage], stage: Stage) -> list[Stage]:
    by_name = {s.name: s for s in all_stages if s.name}
    chain = [stage]
    while chain[0].image in by_name:
        chain.insert(0, by_name[chain[0].image])
    return chain


# --- lint and shape -------------------------------------------------------------------------


def test_hadolint_passes_with_only_the_justified_ignores() -> None:
    config = DEPLOY / ".hadolint.yaml"
    result = subprocess.run([str(HADOLINT), "--config", str(config), str(API), str(RAY)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = config.read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s*- DL\d+", line):
            assert lines[n - 1].strip().startswith("#"), f"{line.strip()} has no reason"


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_is_multi_stage_and_copies_its_build_from_another(name: str) -> None:
    all_stages = stages(IMAGES[name])
    assert len(all_stages) >= 2
    assert any(c.from_stage for c in all_stages[-1].copies) or any(
        "from=" in r.args for r in all_stages[-1].runs)


@pytest.mark.parametrize(("name", "uid"), [("api", 1000), ("ray", 1000)])
def test_each_image_runs_as_a_fixed_non_root_uid(name: str, uid: int) -> None:
    """Numeric, so a pod's ``runAsNonRoot`` can verify it (a name it cannot)."""
    assert user(IMAGES[name]) == str(uid)
    creates = " ".join(r.args for r in stages(IMAGES[name])[-1].runs)
    assert f"--uid {uid}" in creates


@pytest.mark.parametrize("name", IMAGES)
def test_every_base_image_is_pinned_to_a_patch_version(name: str) -> None:
    all_stages = stages(IMAGES[name])
    names = {s.name for s in all_stages if s.name}
    for stage in all_stages:
        if stage.image in names:
            continue
        repository, _, tag = stage.image.partition("@")[0].rpartition(":")
        assert repository and re.search(r"\d+\.\d+\.\d+", tag), stage.image
        assert "latest" not in tag


def test_both_images_build_from_the_same_base_and_keep_the_venv_at_one_path() -> None:
    """The API names its own interpreter in the training jobs it submits
    (``<sys.executable> -m training.driver``): the Ray image must have that path too."""
    assert {s.image for s in stages(API)} - {"deps", "app"} == \
        {s.image for s in stages(RAY)} - {"deps", "app"}
    for path in IMAGES.values():
        final = stages(path)[-1]
        assert final.env["PATH"].startswith("/opt/venv/bin:")
        assert any(c.sources == ["/opt/venv"] and c.dest == "/opt/venv" for c in final.copies)


@pytest.mark.parametrize("name", IMAGES)
def test_dependencies_are_installed_before_the_code_is_copied(name: str) -> None:
    """A code change rebuilds only the small layers on top (the Ray image's dependencies are
    gigabytes)."""
    all_stages = stages(IMAGES[name])
    for stage in all_stages:
        order = [i for s in lineage(all_stages, stage) for i in s.instructions]
        installs = [k for k, i in enumerate(order)
                    if i.keyword == "RUN" and "pip install" in i.args and "-r " in i.args]
        code = [k for k, i in enumerate(order) if i.keyword == "COPY" and "--from" not in i.args
                and set(shlex.split(i.args)) & {f"{p}" for p in PACKAGES}]
        if code:
            assert installs and max(installs) < min(code), stage.name
    final = all_stages[-1]
    venv = next(i for i, ins in enumerate(final.instructions)
                if ins.keyword == "COPY" and "/opt/venv" in ins.args)
    app = next(i for i, ins in enumerate(final.instructions)
               if ins.keyword == "RUN" and "from=app" in ins.args)
    assert venv < app


def test_the_api_image_installs_no_gpu_stack() -> None:
    text = API.read_text()
    for extra in ("stack", "cuda", "cpu", "devstack", "torch", "vllm", "ray"):
        assert f"'{extra}'" not in text and f"{extra}==" not in text, extra


def test_the_ray_image_takes_the_cuda_builds_and_leaves_auth_to_kuberay() -> None:
    text = RAY.read_text()
    assert "torch==2.13.0" in text and "['cuda']" in text and "['stack']" in text
    env = stages(RAY)[-1].env
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "RAY_AUTH_MODE" not in text.replace("No RAY_AUTH_MODE", "").split("KubeRay sets")[0]
    assert not any(k.startswith("RAY_AUTH") for k in env)


# --- what each image runs -------------------------------------------------------------------


def api_process_argv() -> list[str]:
    """The argv tests/support/api_process.py starts the API with (the topology test's API
    pod), its string literals with the interpreter and variables as ``None``."""
    tree = ast.parse((ROOT / "tests" / "support" / "api_process.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "start"
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "api"):
            return [e.value if isinstance(e, ast.Constant) else None for e in node.args[1].elts]
    raise AssertionError("no start('api', [...]) in tests/support/api_process.py")


def test_the_api_image_runs_what_the_topology_test_runs() -> None:
    local = api_process_argv()
    assert local[:2] == [None, "-m"]  # <interpreter> -m uvicorn: the image's console script
    image = entrypoint(API)
    options = dict(zip(image[3::2], image[4::2], strict=True))
    assert image[:3] == local[2:5] == ["uvicorn", "--factory", "service.main:create_app"]
    assert local[5::2] == list(options) == ["--host", "--port"]
    # Reachable from other pods, on the port the chart's Service targets.
    assert options == {"--host": "0.0.0.0", "--port": "8000"}
    assert "EXPOSE 8000" in API.read_text()


@pytest.mark.parametrize(("name", "module"), [(n, m) for n, ms in MODULES.items() for m in ms])
def test_each_module_an_image_runs_is_in_it(name: str, module: str) -> None:
    package = module.split(".")[0]
    assert package in copied_packages(IMAGES[name])
    parts = module.split(".")
    assert (ROOT.joinpath(*parts).with_suffix(".py").is_file()
            or (ROOT.joinpath(*parts) / "__main__.py").is_file()), module


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_holds_only_its_roles(name: str) -> None:
    assert not copied_packages(IMAGES[name]) & NOT_IN[name]
    assert "contract" in copied_packages(IMAGES[name])


def test_the_training_entrypoint_the_api_submits_is_a_module_of_the_ray_image() -> None:
    launch = (ROOT / "service" / "jobs" / "scheduler" / "launch.py").read_text()
    submitted = set(re.findall(r"-m ([\w.]+)", launch))
    assert submitted and submitted <= set(MODULES["ray"]), submitted


# --- the build context ----------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            result = not negate
    return result


def test_the_build_context_is_only_what_the_images_copy() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/README.md",
                 "devstack/launcher.py", "helm/openft/Chart.yaml", ".openft/openft.db",
                 "service/__pycache__/main.cpython-311.pyc", "docs/cluster.md"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "contract/spec.py", "service/main.py",
                 "service/migrations/versions/0001_initial_schema.py", "training/driver.py",
                 "serving/deploy.py", "vllm_cpu/lora.py"):
        assert not ignored(path, patterns), path
    for path in IMAGES.values():
        for stage in stages(path):
            for copy in stage.copies:
                if copy.from_stage is None:
                    assert all(not ignored(s.strip("./"), patterns) for s in copy.sources)
