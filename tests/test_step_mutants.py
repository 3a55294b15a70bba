"""The step-equivalence tests can fail: each classic training-step bug, put into a copy of
ganops one at a time, makes ``tests/test_step_equivalence.py`` fail.

A mutant is one textual change to one file of a copy of the repository (ganops/, tests/,
jobs/ and pyproject.toml); the equivalence tests of the variants that exercise it (CATCHERS)
then run on that copy in a child pytest, and each must fail.
The bugs are those a GAN step hides from tests of shapes and statuses (issue 26): D's
BatchNorm normalising real and fake together, D's forward bypassing DDP, label smoothing on
the fake side, a sign error in a loss, the EMA's weights inverted, the gradient penalty's
target. ``pytest -s`` prints which variants caught each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(900)]
EQUIVALENCE = "tests/test_step_equivalence.py::test_the_step_on_two_ddp_ranks_matches_the_papers_loop"

# name -> (file, the code as it is, the bug)
MUTANTS: dict[str, tuple[str, str, str]] = {
    "batchnorm-on-real-and-fake-together": (
        "ganops/train/step.py",
        "PartsForward(self.d, separate=has_batchnorm(self.d) or has_spectral_norm(self.d))",
        "PartsForward(self.d, separate=False)",
    ),
    "d-forward-bypasses-ddp": (
        "ganops/train/step.py",
        "logits = _full(self.d_train(parts, [y] * len(parts) if y is not None else None))\n",
        'logits = _full(getattr(self.d_train, "module", self.d_train)(parts, [y] * len(parts) if y is not None else None))\n',
    ),
    "label-smoothing-on-the-fakes": (
        "ganops/losses.py",
        """    real_t = torch.full_like(real, 1.0 - smoothing)
    return F.binary_cross_entropy_with_logits(real, real_t) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )""",
        """    real_t = torch.ones_like(real)
    return F.binary_cross_entropy_with_logits(real, real_t) + F.binary_cross_entropy_with_logits(
        fake, torch.full_like(fake, smoothing)
    )""",
    ),
    "hinge-sign-flipped": (
        "ganops/losses.py",
        "F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()",
        "F.relu(1.0 - real).mean() + F.relu(1.0 - fake).mean()",
    ),
    "ema-weight-inverted": (
        "ganops/train/step.py",
        "[p.detach() for p in self.g.parameters()], 1.0 - decay)",
        "[p.detach() for p in self.g.parameters()], decay)",
    ),
    "gradient-penalty-target-zero": (
        "ganops/losses.py",
        "((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()",
        "(grad.flatten(1).norm(2, dim=1) ** 2).mean()",
    ),
}


def _copy_with(tmp: Path, file: str, old: str, new: str) -> Path:
    root = tmp / "repo"
    for d in ("ganops", "tests", "jobs"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    path = root / file
    text = path.read_text()
    assert text.count(old) == 1, f"the mutant's anchor is not once in {file}: the code moved, update MUTANTS"
    path.write_text(text.replace(old, new))
    return root


# The variants that exercise each bug's code, the ones run against it: a mutant must fail each of
# them (the whole file takes ~30 s a mutant; these, ~10 s).
CATCHERS: dict[str, list[str]] = {
    # Spectral norm counts D's forwards too (one power iteration each, as SNGAN's code).
    "batchnorm-on-real-and-fake-together": ["bce-batch", "syncbn", "dcgan-spectral-norm"],
    "d-forward-bypasses-ddp": ["bce-none", "hinge-layer"],
    "label-smoothing-on-the-fakes": ["bce-label-smoothing"],
    "hinge-sign-flipped": ["hinge-none", "hinge-batch"],
    "ema-weight-inverted": ["ema"],
    "gradient-penalty-target-zero": ["wgan_gp-none", "wgan_gp-5-critic-steps"],
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_each_step_bug_fails_the_step_equivalence_tests(mutant: str, tmp_path: Path) -> None:
    root = _copy_with(tmp_path, *MUTANTS[mutant])
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    # The copy's ganops, not the installed one (editable installs resolve after sys.path).
    where = subprocess.run([sys.executable, "-c", "import ganops; print(ganops.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert where.startswith(str(root)), where
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *(f"{EQUIVALENCE}[{v}]" for v in CATCHERS[mutant]), "-q", "-p",
         "no:cacheprovider", "-W", "ignore", "-o", "addopts=", "--timeout=600"],
        cwd=root, env=env, capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    failed = sorted(set(re.findall(r"FAILED tests/test_step_equivalence.py::\S+\[([^\]]+)\]", done.stdout)))
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    print(f"\n{mutant}: {summary}; caught by {', '.join(failed) or 'none'}")
    assert done.returncode == 1 and failed == sorted(CATCHERS[mutant]), (
        f"{mutant} was not caught by each of {CATCHERS[mutant]}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
    )
