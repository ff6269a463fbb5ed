"""Deployment the Snakemake workflow catalog's way: the README's `snakedeploy
deploy-workflow` commands, run verbatim, from a GitHub-style source (a bare git repository
standing in for GitHub, reached through Snakemake's own github() source and its git cache)
and from a local clone; the deployed demo's first stages run for real. Also: the list of
files a deployment copies, the report's provenance of a deployed copy, and the rules'
conda environment."""

import ast
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from conftest import REPO
from workflow_helpers import copy_project, readme_commands, user_env

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TAG = f"v{VERSION}"
OWNER_REPO = "clipes-org/clipes"  # any owner/name: nothing is fetched from GitHub
FIRST_STAGES = "results/demo/base/cams/shard0"  # the demo's dataset, then one CAM shard


def git(cwd, *args):
    proc = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org",
                           *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


def run(cwd, command, env, check=True, timeout=900):
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, (command, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """This checkout as a release: a clone tagged v<version>, and a bare copy of it at a
    path whose last parts read github/<owner>/<repo> (how snakedeploy recognises GitHub)."""
    root = tmp_path_factory.mktemp("deploy")
    clone = copy_project(root / "clone")
    git(clone, "init", "-q", "-b", "main")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "release")
    git(clone, "tag", TAG)
    bare = root / "github" / OWNER_REPO
    bare.parent.mkdir(parents=True)
    git(root, "clone", "-q", "--bare", str(clone), str(bare))
    env = user_env()
    env.update(XDG_CACHE_HOME=str(root / "cache"), CLIPES_REPO=f"file://{bare}",
               CLIPES_CLONE=str(clone))
    return root, clone, bare, env


def offline(cwd, command, env, bare, check=True):
    """Run a snakemake command in a deployment whose module is github(...): Snakemake clones
    github.com/<owner>/<repo> into its git cache once; this machine has no GitHub, so the
    bare repository is cloned there instead, at the path Snakemake names, and the command
    run again (Snakemake then reads the tag from the cache, as after a real clone)."""
    proc = run(cwd, command, env, check=False)
    m = re.search(rf"Cloning github\.com/{OWNER_REPO} to (\S+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 and m:
        git(cwd, "clone", "-q", "--bare", str(bare), m.group(1))
        proc = run(cwd, command, env, check=False)
    if check:
        assert proc.returncode == 0, (command, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def readme_deploy_commands():
    cmds = readme_commands("Using the workflow elsewhere")
    remote = [c for c in cmds if "$CLIPES_REPO" in c]
    local = [c for c in cmds if "$CLIPES_CLONE" in c]
    run_demo = [c for c in cmds if c.startswith("cd my-project && snakemake")]
    assert len(remote) == 1 and len(local) == 2 and len(run_demo) == 1, cmds
    return remote[0], local, run_demo[0]


def test_the_readme_pins_the_release_of_pyproject():
    remote, local, _ = readme_deploy_commands()
    assert f"--tag {TAG}" in remote and f'tag=\\"{TAG}\\"' in local[1]
    assert f"## {VERSION} " in (REPO / "CHANGELOG.md").read_text()


def check_first_stages(project, env, bare):
    """The demo's dataset and one CAM shard, run from the copy of the workflow's files;
    afterwards nothing is out of date (the copy keeps its sources' times)."""
    done = offline(project, f"snakemake --cores 2 {FIRST_STAGES}", env, bare)
    assert "Finished" in done.stdout + done.stderr
    copies = list((project / ".snakemake" / "clipes" / "source").iterdir())
    assert len(copies) == 1, copies
    copy = copies[0]
    assert (copy / "scripts" / "cams.py").is_file() and (copy / "clipes" / "cam.py").is_file()
    log = (project / "results" / "demo" / "base" / "logs" / "cams0.log").read_text()
    assert "Traceback" not in log
    assert list((project / FIRST_STAGES).glob("*.npz")), "no CAM archives"
    again = offline(project, f"snakemake -n --cores 2 {FIRST_STAGES}", env, bare)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert not (project / "scripts").exists() and not (project / "clipes").exists()
    return copy


def deploy(work, commands, env):
    """Run the README's deployment commands verbatim in a new folder `work`: (work, the
    project folder they make, its workflow/Snakefile)."""
    work.mkdir()
    for cmd in commands:
        run(work, cmd, env)
    project = work / "my-project"
    return work, project, (project / "workflow" / "Snakefile").read_text()


@pytest.mark.slow
def test_deployed_from_a_github_style_source(release):
    root, _, bare, env = release
    remote, _, run_demo = readme_deploy_commands()
    work, project, snakefile = deploy(root / "remote", [remote], env)
    assert f'github("{OWNER_REPO}", path="workflow/Snakefile", tag="{TAG}")' in snakefile
    assert (project / "config" / "config.yaml").is_file()
    assert (project / "config" / "demo" / "clip.npz").is_file()
    assert (project / "profiles" / "default").is_dir()
    dry = offline(work, run_demo + " -n", env, bare)  # verbatim, as a dry run
    out = dry.stdout + dry.stderr
    for rule in ("prepare_dataset", "cams", "crf", "train_segmentation", "comparison_report"):
        assert re.search(rf"^{rule}\s+\d+", out, re.M), (rule, out[-3000:])
    copy = check_first_stages(project, env, bare)
    source = yaml.safe_load((copy / "SOURCE.json").read_text())
    assert source["workflow"] == f"github.com/{OWNER_REPO}/workflow/rules@{TAG}"


@pytest.mark.slow
def test_deployed_from_a_local_clone(release):
    root, clone, bare, env = release
    _, local, _ = readme_deploy_commands()
    _, project, snakefile = deploy(root / "local", local, env)
    assert f'gitfile("{clone}", path="workflow/Snakefile", tag="{TAG}")' in snakefile
    # the release, not the clone's later edits: an edit after the tag is not what runs
    (clone / "scripts" / "cams.py").write_text("raise SystemExit('not the release')\n")
    try:
        offline(project, "snakemake -n --cores 2", env, bare)
        check_first_stages(project, env, bare)
    finally:
        git(clone, "checkout", "--", "scripts/cams.py")


def test_the_source_list_names_every_file_of_the_package_and_scripts():
    """A deployment copies exactly workflow/source-files.txt: a module left out of it would
    be missing from every deployed run."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "clipes", "scripts"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout")
    want = sorted(filter(None, listed.stdout.splitlines()))
    have = (REPO / "workflow" / "source-files.txt").read_text().split()
    assert have == want, ("regenerate it: git ls-files clipes scripts > "
                          "workflow/source-files.txt", sorted(set(want) ^ set(have)))


def test_a_deployed_copy_names_its_release_in_the_report(tmp_path):
    from clipes.report.provenance import provenance

    (tmp_path / "SOURCE.json").write_text('{"workflow": "github.com/o/r/workflow/rules@v9"}')
    prov = provenance({}, repo=tmp_path)
    assert prov["git_commit"] == "github.com/o/r/workflow/rules@v9" and not prov["git_dirty"]
    (tmp_path / "SOURCE.json").write_text("[not, an object")
    assert provenance({}, repo=tmp_path)["git_commit"] != "[not, an object"


# ------------------------------------------------------------------ conda environment
# import name -> the package that provides it in the environment file
PROVIDED_BY = {"PIL": "pillow", "yaml": "pyyaml", "open_clip": "open_clip_torch",
               "pydensecrf": "pydensecrf2", "huggingface_hub": "open_clip_torch"}


def env_packages(path):
    env = yaml.safe_load(path.read_text())
    conda, pip = set(), []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            conda.add(re.split(r"[=<>]", dep)[0])
    return conda, pip


def third_party_imports():
    found = set()
    for f in [*(REPO / "clipes").rglob("*.py"), *(REPO / "scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names}
    return {m for m in found if m not in sys.stdlib_module_names and m != "clipes"}


def test_the_rules_environment_holds_what_the_code_imports_and_a_compiler():
    conda, pip = env_packages(REPO / "workflow" / "envs" / "clipes.yaml")
    names = conda | {re.split(r"[=<>]", p)[0] for p in pip}
    missing = {m for m in third_party_imports() if PROVIDED_BY.get(m, m) not in names}
    assert not missing, f"workflow/envs/clipes.yaml lacks {sorted(missing)}"
    assert {"c-compiler", "cxx-compiler"} <= conda  # pydensecrf2 builds from source
    top_conda, top_pip = env_packages(REPO / "environment.yml")
    assert conda <= top_conda and set(pip) <= set(top_pip)


@pytest.mark.slow
def test_the_rules_environment_pip_part_resolves(tmp_path):
    """pip's resolver over the environment's pip part (dry run: no install, no compile)."""
    _, pip = env_packages(REPO / "workflow" / "envs" / "clipes.yaml")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                           "--ignore-installed", "--report", str(tmp_path / "r.json"), *pip],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = yaml.safe_load((tmp_path / "r.json").read_text())
    resolved = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
                for i in report["install"]}
    assert resolved["torch"] == "2.14.1" and "pydensecrf2" in resolved and "open-clip-torch" in resolved
