"""cluster/: the container image's Dockerfile (it installs what CI tests), the build context
(.dockerignore), the kind configuration and bootstrap.sh (run here against stand-ins for
docker, kind, kubectl and helm that record what they are asked to do), and the GPU guide."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
BOOTSTRAP = CLUSTER / "bootstrap.sh"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _args(instrs: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for i, a in instrs if i == "ARG" for k, _, v in [a.partition("=")]}


def _pip_installs(run: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN line."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens, commands = list(lexer), [[]]
    for t in tokens:  # split into commands at && || ; | (quotes respected)
        if t in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(t)
    out = []
    for words in commands:
        for i in range(len(words) - 1):
            if re.fullmatch(r"(.*/)?pip3?", words[i]) and words[i + 1] == "install":
                out.append(words[i + 2 :])
    return out


def _ci_install() -> list[str]:
    """The arguments of CI's `pip install` of ganops (the Makefile's set-up, run by .ci/run)."""
    for line in (REPO / "Makefile").read_text().splitlines():
        if "pip install" in line and "-c" in line:
            words = shlex.split(line.replace("$(PY)", "python"))
            return words[words.index("install") + 1 :]
    raise AssertionError("no `pip install -c ...` in the Makefile")


def _positional(args: list[str]) -> tuple[str | None, list[str]]:
    """(constraints file, the other positional arguments) of pip install arguments."""
    constraints, rest, skip = None, [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
        elif a == "-c":
            constraints, skip = args[i + 1], True
        elif a in ("--index-url", "--extra-index-url", "-i"):  # options with a value
            skip = True
        elif not a.startswith("-"):  # -e, -q...: flags
            rest.append(a)
    return constraints, rest


# --- the image -------------------------------------------------------------------------------


def test_image_installs_the_package_and_constraints_ci_tests() -> None:
    instrs = _instructions()
    runs = [a for i, a in instrs if i == "RUN"]
    installs = [args for run in runs for args in _pip_installs(run)]
    ci_constraints, ci_targets = _positional(_ci_install())
    assert ci_constraints == "constraints.txt" and [t.split("[")[0] for t in ci_targets] == ["."]
    # The ganops install: the same project directory, with the same constraints file.
    ganops = [a for a in installs if "." in _positional(a)[1]]
    assert len(ganops) == 1, installs
    assert _positional(ganops[0]) == (ci_constraints, ["."])
    # Every install is held by the constraints (torch too: only its build variant differs).
    for args in installs:
        assert _positional(args)[0] == ci_constraints, args
        assert not [a for a in args if re.match(r"^[A-Za-z0-9_.-]+[=<>~!]=", a)], (
            f"a version outside constraints.txt: {args}"
        )
    (torch,) = [a for a in installs if _positional(a)[1] == ["torch"]]
    assert "--index-url" in torch and torch[torch.index("--index-url") + 1] == "${TORCH_INDEX_URL}"
    # The files pip install . needs are copied, constraints.txt among them.
    copied = {src for i, a in instrs if i == "COPY" for src in shlex.split(a)[:-1] if not src.startswith("--")}
    assert {"pyproject.toml", "README.md", "constraints.txt", "ganops"} <= copied


def test_image_is_a_ray_gpu_image_of_the_pinned_ray_version() -> None:
    instrs = _instructions()
    args = _args(instrs)
    (base,) = [a for i, a in instrs if i == "FROM"]
    assert base == "${RAY_IMAGE}"
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", args["RAY_IMAGE"])
    assert m, args["RAY_IMAGE"]
    assert m.group(1) == _pins()["ray"]
    requires = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert (int(m.group(2)), int(m.group(3))) >= (int(requires.group(1)), int(requires.group(2)))
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")


def test_image_runs_as_a_numeric_non_root_user_and_holds_no_secrets() -> None:
    instrs = _instructions()
    users = [a for i, a in instrs if i == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users  # numeric: runAsNonRoot can check it
    assert [i for i, _ in instrs].index("USER") < [i for i, _ in instrs].index("RUN"), "installs run as the ray user"
    for kind, arg in instrs:
        if kind in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(?i)(secret|password|token|access_key|AWS_|MLFLOW_TRACKING_URI)", arg), arg
    text = DOCKERFILE.read_text()
    assert "--secret" not in text and "ADD " not in text


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exclude?, regex) in order; Docker's matching: `*` within a path
    element, `**` across them, and a pattern matching a directory matches what is inside."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.strip("/")
        rx = (
            re.escape(pat)
            .replace(r"\*\*/", "(.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        rules.append((not neg, re.compile(rx)))
    return rules


def _in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = exclude
    return not excluded


def _context_files() -> list[str]:
    rules = _dockerignore_rules()
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), REPO)
            if _in_context(rel, rules):
                out.append(rel)
    return sorted(out)


def test_build_context_holds_the_package_and_nothing_private() -> None:
    files = _context_files()
    assert {"pyproject.toml", "README.md", "constraints.txt", "ganops/__init__.py", "ganops/cli.py"} <= set(files)
    for f in files:
        assert f in ("pyproject.toml", "README.md", "constraints.txt") or f.startswith("ganops/"), f
        assert "__pycache__" not in f and not f.endswith(".pyc") and ".egg-info" not in f, f
    rules = _dockerignore_rules()
    for private in (".venv/bin/python", ".git/config", "runs/x/state.pt", "data/mnist/x.gz", "mlflow.db",
                    "tests/conftest.py", ".env", "cluster/Dockerfile", "helm/ganops/values.yaml"):  # fmt: skip
        assert not _in_context(private, rules), private


def test_the_image_build_context_builds_the_whole_package(tmp_path: Path) -> None:
    """What the Dockerfile copies from the build context, `pip install`-ed here (as a wheel):
    every module of ganops/ gets into the image."""
    ctx = tmp_path / "ctx"
    rules = _dockerignore_rules()
    copied = [s for i, a in _instructions() if i == "COPY" for s in shlex.split(a)[:-1] if not s.startswith("--")]
    for rel in _context_files():
        if any(rel == src or rel.startswith(src.rstrip("/") + "/") for src in copied) and _in_context(rel, rules):
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, ctx / rel)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ctx)],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (whl,) = (tmp_path / "dist").glob("ganops-*.whl")
    in_wheel = {n for n in zipfile.ZipFile(whl).namelist() if n.startswith("ganops/") and n.endswith(".py")}
    in_repo = {p.relative_to(REPO).as_posix() for p in (REPO / "ganops").rglob("*.py") if "__pycache__" not in p.parts}
    assert in_repo and in_wheel == in_repo


# --- kind ------------------------------------------------------------------------------------


def test_kind_cluster_runs_a_kubernetes_version_the_chart_is_validated_for() -> None:
    cfg = yaml.safe_load((CLUSTER / "kind.yaml").read_text())
    assert (cfg["kind"], cfg["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1
    for node in cfg["nodes"]:
        m = re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+(@sha256:[0-9a-f]{64})?", node["image"])
        assert m and 28 <= int(m.group(1)) <= 33, node["image"]


# --- bootstrap.sh ----------------------------------------------------------------------------

_STUB = """#!/usr/bin/env bash
# Stand-in for {name}: records its arguments (and stdin for `apply -f -`), answers like the tool.
printf '%s\\n' "{name} $*" >> "$STUB_LOG"
case "{name} $*" in
  "kind get clusters"*) [[ -n "${{STUB_CLUSTER:-}}" ]] && echo "$STUB_CLUSTER" ;;
  *"get secret"*) [[ -n "${{STUB_SECRET_EXISTS:-}}" ]] || exit 1 ;;
  *"create namespace"*"--dry-run=client"*) echo "apiVersion: v1"; echo "kind: Namespace" ;;
  *"apply -f -"*) cat >> "$STUB_STDIN" ;;
esac
exit 0
"""


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "kind", "kubectl", "helm"):
        p = bin_dir / name
        p.write_text(_STUB.format(name=name))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return {"bin": bin_dir, "log": tmp_path / "calls.log", "stdin": tmp_path / "stdin.log"}


def _bootstrap(
    stubs: dict[str, Path], *args: str, path: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = os.environ.get("PATH", "/usr/bin:/bin")
    full = {"PATH": path if path is not None else f"{stubs['bin']}:{base}", "HOME": str(stubs["bin"].parent),
            "STUB_LOG": str(stubs["log"]), "STUB_STDIN": str(stubs["stdin"]), **env}  # fmt: skip
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(BOOTSTRAP), *args],
        env=full,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _calls(stubs: dict[str, Path]) -> list[str]:
    return stubs["log"].read_text().splitlines() if stubs["log"].exists() else []


def test_bootstrap_refuses_to_start_without_its_tools_and_names_them(stubs: dict[str, Path], tmp_path: Path) -> None:
    only = tmp_path / "only"  # a PATH with kind and helm, the script's basic utilities, no docker or kubectl
    only.mkdir()
    for tool in ("kind", "helm"):
        (only / tool).symlink_to(stubs["bin"] / tool)
    for util in ("dirname", "sed", "cat"):
        (only / util).symlink_to(shutil.which(util))
    out = _bootstrap(stubs, path=str(only))
    assert out.returncode == 1
    assert "missing: docker kubectl." in out.stderr and "https://kind.sigs.k8s.io" in out.stderr, out.stderr
    assert _calls(stubs) == []


def test_bootstrap_sets_up_kuberay_minio_mlflow_and_ganops_in_order(stubs: dict[str, Path]) -> None:
    out = _bootstrap(stubs)
    assert out.returncode == 0, out.stderr
    calls = _calls(stubs)

    def at(pattern: str) -> int:
        hits = [i for i, c in enumerate(calls) if re.search(pattern, c)]
        assert hits, f"no call matching {pattern!r} in:\n" + "\n".join(calls)
        return hits[0]

    chart_version = yaml.safe_load((REPO / "helm/ganops/Chart.yaml").read_text())["annotations"][
        "ganops.io/kuberay-version"
    ]
    ray = _pins()["ray"]
    steps = [
        at(r"^docker info"),
        at(r"^kind create cluster --name ganops --config \S+/cluster/kind.yaml"),
        at(r"^helm repo add kuberay https://ray-project.github.io/kuberay-helm/"),
        at(
            rf"^helm --kube-context kind-ganops upgrade --install kuberay-operator kuberay/kuberay-operator --version {re.escape(chart_version)} "
        ),
        at(
            rf"^docker build -f \S+/cluster/Dockerfile -t ganops:dev --build-arg RAY_IMAGE=rayproject/ray:{re.escape(ray)}-py311-cpu "
            r"--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu "
        ),
        at(r"^kind load docker-image ganops:dev --name ganops"),
        at(r"^kubectl --context kind-ganops -n ganops get secret ganops-credentials"),
        at(r"^kubectl --context kind-ganops apply --server-side -f \S+/helm/ganops/crds/"),
        at(
            r"^helm --kube-context kind-ganops upgrade --install ganops \S+/helm/ganops --namespace ganops -f \S+/cluster/kind-values.yaml "
            r"--set image.repository=ganops --set image.tag=dev "
        ),
        at(r"^kubectl --context kind-ganops -n ganops rollout status deployment/ganops-operator"),
    ]
    assert steps == sorted(steps), "\n".join(calls)
    assert not [c for c in calls if c.startswith("helm dependency")], "the chart has no dependencies to fetch"
    # The Secret went to kubectl on stdin, with fresh random keys that are printed nowhere.
    docs = [d for d in yaml.safe_load_all(stubs["stdin"].read_text()) if d and d.get("kind") == "Secret"]
    assert len(docs) == 1, stubs["stdin"].read_text()
    secret = docs[0]
    keys = secret["stringData"]
    assert set(keys) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} and len(keys["AWS_SECRET_ACCESS_KEY"]) == 40
    for value in keys.values():
        assert value not in out.stdout + out.stderr and not any(value in c for c in calls)
    # It says how to submit the MNIST job.
    assert "ganops submit jobs/mnist_dcgan.yaml --target k8s -n ganops" in out.stdout
    assert "--set spec.storage=s3://ganops/runs" in out.stdout


def test_bootstrap_run_again_keeps_the_cluster_and_the_credentials(stubs: dict[str, Path]) -> None:
    out = _bootstrap(stubs, "--gpu", STUB_CLUSTER="ganops", STUB_SECRET_EXISTS="1")
    assert out.returncode == 0, out.stderr
    calls = _calls(stubs)
    assert not [c for c in calls if c.startswith("kind create cluster")]
    assert "kind: Secret" not in (stubs["stdin"].read_text() if stubs["stdin"].exists() else "")
    (build,) = [c for c in calls if c.startswith("docker build")]
    assert f"RAY_IMAGE=rayproject/ray:{_pins()['ray']}-py311-gpu" in build and "whl/cu128" in build


def test_bootstrap_rejects_unknown_arguments(stubs: dict[str, Path]) -> None:
    out = _bootstrap(stubs, "--gpus")
    assert out.returncode == 1 and "unknown argument '--gpus'" in out.stderr
    assert _calls(stubs) == []


def test_bootstrap_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    out = subprocess.run(
        [shellcheck, "-x", "-S", "style", str(BOOTSTRAP)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout


def test_bootstrap_is_strict_bash() -> None:
    text = BOOTSTRAP.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert os.access(BOOTSTRAP, os.X_OK)
    assert subprocess.run(["bash", "-n", str(BOOTSTRAP)], check=False, capture_output=True).returncode == 0


# --- the GPU guide -----------------------------------------------------------------------------


def test_gpu_guide_names_fields_and_values_that_exist() -> None:
    from ganops.spec.models import GANJobSpec

    text = (CLUSTER / "GPU.md").read_text()
    for path in re.findall(r"`spec\.([a-z_]+\.[a-z_]+)`", text) + [
        "scaling.use_gpu",
        "cluster.node_selector",
        "cluster.tolerations",
    ]:
        section, field = path.split(".")
        assert field in GANJobSpec.model_fields[section].annotation.model_fields, path
    values = yaml.safe_load((REPO / "helm/ganops/values.yaml").read_text())
    for path in re.findall(r"`(jobs\.[A-Za-z.]+)`", text):
        node = values
        for part in path.split("."):
            node = node[part]
    for must in ("nvidia.com/gpu.product", "NoSchedule", "device plugin", "GPU Operator"):
        assert must in text, must
