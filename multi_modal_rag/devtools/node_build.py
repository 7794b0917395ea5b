"""Building the local OpenSearch 2.19.1 node folder, without Docker.

The node is assembled from Maven Central artifacts, fetched with the `mvn` client:
the core "integ-test" distribution (no JDK, no plugins), the `lang-painless` and
`analysis-common` modules (jars plus a generated plugin descriptor), then the k-NN and
neural-search plugin zips, installed with `bin/opensearch-plugin`. The k-NN zip from
Maven has no native libraries: only `"engine": "lucene"` works on this node.

Layout under the cache dir ($MMRAG_CACHE_DIR or ~/.cache/multi_modal_rag):

    artifacts/                        downloaded zips and jars (fetched once)
    opensearch-2.19.1/                the assembled node, built in a temp dir and renamed

OpenSearch refuses to run as root. When this code runs as root it creates the system
user `mmrag-opensearch` (useradd), hands the node folder to it, and adds search-only
permission (o+x, no listing) to any parent folder of the node that the user could not
otherwise enter, e.g. /root when the cache lives in ~/.cache. Running the node is
`local_node`'s job.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape as xml_escape

from ..errors import MMRagError

logger = logging.getLogger(__name__)

OPENSEARCH_VERSION = "2.19.1"

SERVICE_USER = "mmrag-opensearch"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
DOCKER_HINT = "Alternatively, run OpenSearch in Docker: `docker compose up -d` (docker-compose.yml at the repo root)."
JAVA_HINT = (
    "Install Java 17 with `apt-get install openjdk-17-jdk-headless`, "
    "or set OPENSEARCH_JAVA_HOME to a JDK 17 folder (e.g. /usr/lib/jvm/java-17-openjdk-amd64)."
)
MIN_JAVA, MAX_JAVA = 11, 23  # 2.19 needs the Security Manager, which JDK 24+ cannot enable
LOG_TAIL_LINES = 20
OnStep = Callable[[str], None]


class NodeError(MMRagError):
    """The local node could not be started, stopped or prepared; the message says why and what to do."""


# ---- artifacts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One Maven artifact, saved as `artifactId-version.packaging`."""

    group: str
    name: str
    version: str
    packaging: str = "jar"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.{self.packaging}"


@dataclass(frozen=True)
class Module:
    """A bundled module missing from the core zip: its jars and plugin descriptor."""

    name: str
    description: str
    classname: str
    jars: tuple[Artifact, ...]
    extended_plugins: str = ""
    security_policy: str | None = None


PLUGIN_VERSION = f"{OPENSEARCH_VERSION}.0"
CORE = Artifact("org.opensearch.distribution.integ-test-zip", "opensearch", OPENSEARCH_VERSION, "zip")
PLUGINS = (  # install order matters: neural-search extends opensearch-knn, which extends lang-painless
    Artifact("org.opensearch.plugin", "opensearch-knn", PLUGIN_VERSION, "zip"),
    Artifact("org.opensearch.plugin", "neural-search", PLUGIN_VERSION, "zip"),
)
MODULES = (
    Module(
        name="lang-painless",
        description="An easy, safe and fast scripting language for OpenSearch",
        classname="org.opensearch.painless.PainlessPlugin",
        jars=(
            Artifact("org.opensearch.plugin", "lang-painless", OPENSEARCH_VERSION),
            Artifact("org.opensearch.plugin", "opensearch-scripting-painless-spi", OPENSEARCH_VERSION),
            Artifact("org.antlr", "antlr4-runtime", "4.13.1"),
            *(Artifact("org.ow2.asm", name, "9.7") for name in ("asm", "asm-util", "asm-tree", "asm-commons", "asm-analysis")),
        ),
        security_policy=(
            "grant {\n"
            '  // needed to generate runtime classes\n  permission java.lang.RuntimePermission "createClassLoader";\n'
            '  // needed to find the classloader to load allowlisted classes from\n  permission java.lang.RuntimePermission "getClassLoader";\n'
            "};\n"
        ),
    ),
    Module(
        name="analysis-common",
        description='Adds "built in" analyzers to OpenSearch.',
        classname="org.opensearch.analysis.common.CommonAnalysisPlugin",
        jars=(Artifact("org.opensearch.plugin", "analysis-common", OPENSEARCH_VERSION),),
        extended_plugins="lang-painless",  # as in the official distribution: it ships a Painless extension
    ),
)
ALL_ARTIFACTS = (CORE, *PLUGINS, *(jar for module in MODULES for jar in module.jars))


def node_home(cache: Path) -> Path:
    """Where the assembled node lives in the cache dir (it may not exist yet)."""
    return cache / f"opensearch-{OPENSEARCH_VERSION}"


# ---- Java ---------------------------------------------------------------------------------------


def find_java_home() -> Path:
    """The JDK that will run the node: $OPENSEARCH_JAVA_HOME if set, else the first Java 11-23 found (17 preferred)."""
    configured = os.environ.get("OPENSEARCH_JAVA_HOME")
    if configured:
        home = Path(configured).expanduser()
        version = _java_major(home)
        if version is None:
            raise NodeError(f"OPENSEARCH_JAVA_HOME={configured} is not a Java home (no runnable bin/java). {JAVA_HINT}")
        if not MIN_JAVA <= version <= MAX_JAVA:
            raise NodeError(f"OPENSEARCH_JAVA_HOME={configured} is Java {version}; OpenSearch {OPENSEARCH_VERSION} needs Java {MIN_JAVA}-{MAX_JAVA}. {JAVA_HINT}")
        return home
    seen: list[str] = []
    for home in _java_candidates():
        version = _java_major(home)
        if version is not None and MIN_JAVA <= version <= MAX_JAVA:
            return home
        seen.append(f"{home} (Java {version})" if version else str(home))
    found = f" (found only: {', '.join(seen)})" if seen else ""
    raise NodeError(f"OpenSearch {OPENSEARCH_VERSION} needs Java {MIN_JAVA}-{MAX_JAVA} and none was found{found}. {JAVA_HINT}")


def _java_candidates() -> list[Path]:
    """JAVA_HOME, the JDKs under /usr/lib/jvm (17 first), then the `java` on PATH."""
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    jvm_dirs = [path for path in sorted(Path("/usr/lib/jvm").glob("*")) if path.is_dir() and not path.is_symlink()]
    candidates += sorted(jvm_dirs, key=lambda path: ("17" not in path.name, "21" not in path.name, path.name))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    unique: list[Path] = []
    for path in candidates:
        if path.resolve() not in {seen.resolve() for seen in unique}:
            unique.append(path)
    return unique


def _java_major(home: Path) -> int | None:
    """The major Java version of a Java home, from its `release` file or `java -version`; None if no java."""
    java = home / "bin" / "java"
    if not (java.is_file() and os.access(java, os.X_OK)):
        return None
    text = ""
    try:
        text = (home / "release").read_text()
    except OSError:
        try:
            text = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
        except (OSError, subprocess.TimeoutExpired):
            return None
    match = re.search(r'(?:JAVA_VERSION=|version )"(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


# ---- user, permissions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The unprivileged user that runs the node when we are root."""

    name: str
    uid: int
    gid: int


def service_account() -> Account | None:
    """None when not root; as root, the `mmrag-opensearch` system user, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        _create_service_user()
        entry = pwd.getpwnam(SERVICE_USER)
    return Account(SERVICE_USER, entry.pw_uid, entry.pw_gid)


def _create_service_user() -> None:
    logger.info("creating system user %s (OpenSearch refuses to run as root)", SERVICE_USER)
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise NodeError(f"OpenSearch refuses to run as root and `useradd` is missing to create user {SERVICE_USER}; create it, or run as a normal user") from exc
    except subprocess.CalledProcessError as exc:
        raise NodeError(f"OpenSearch refuses to run as root and creating user {SERVICE_USER} failed: {exc.stderr.strip()}") from exc


def _chown_tree(root: Path, account: Account) -> None:
    os.chown(root, account.uid, account.gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), account.uid, account.gid, follow_symlinks=False)


def _can_search(path: Path, account: Account) -> bool:
    """Whether the account may enter `path` (owner, primary group, then other bits, as the kernel checks)."""
    info = path.stat()
    if info.st_uid == account.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == account.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def hand_over(home: Path, account: Account, step: OnStep) -> None:
    """Make the node folder the account's own, and reachable by it."""
    _chown_tree(home, account)
    _grant_search_access(home, account, step)


def _grant_search_access(path: Path, account: Account, step: OnStep) -> None:
    """Add o+x (enter, not list) to the parents of `path` the account cannot enter, e.g. /root (mode 700)."""
    for parent in reversed(path.parents):
        if not _can_search(parent, account):
            step(f"letting {account.name} enter {parent} (adding o+x: search only, no listing)")
            logger.warning("chmod o+x %s so that %s can reach the node", parent, account.name)
            os.chmod(parent, stat.S_IMODE(parent.stat().st_mode) | stat.S_IXOTH)


# ---- download -----------------------------------------------------------------------------------------


def download_artifacts(artifacts: Path, java_home: Path, step: OnStep) -> None:
    """Fetch the missing artifacts with `mvn dependency:copy` (one Maven run); nothing when all are there."""
    missing = [artifact for artifact in ALL_ARTIFACTS if not (artifacts / artifact.filename).is_file()]
    if not missing:
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NodeError(f"Maven (`mvn`) is needed to download OpenSearch {OPENSEARCH_VERSION}: `apt-get install maven`. {DOCKER_HINT}")
    step(f"downloading OpenSearch {OPENSEARCH_VERSION} from Maven Central ({len(missing)} artifacts, about 65 MB, once)")
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=artifacts) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(_fetch_pom(missing, work / "out"))
        _run_maven([mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(work / "pom.xml"), f"{DEPENDENCY_PLUGIN}:copy"], work, java_home)
        for artifact in missing:
            os.replace(work / "out" / artifact.filename, artifacts / artifact.filename)


def _fetch_pom(artifacts: list[Artifact], output: Path) -> str:
    """A throwaway pom whose dependency-plugin configuration lists the artifacts to copy (no transitive ones)."""
    items = "\n".join(
        f"          <artifactItem><groupId>{a.group}</groupId><artifactId>{a.name}</artifactId>"
        f"<version>{a.version}</version><type>{a.packaging}</type></artifactItem>"
        for a in artifacts
    )
    group, name, version = DEPENDENCY_PLUGIN.split(":")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.multi-modal-rag</groupId>
  <artifactId>opensearch-node-artifacts</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <build>
    <plugins>
      <plugin>
        <groupId>{group}</groupId>
        <artifactId>{name}</artifactId>
        <version>{version}</version>
        <configuration>
          <outputDirectory>{xml_escape(str(output))}</outputDirectory>
          <artifactItems>
{items}
          </artifactItems>
        </configuration>
      </plugin>
    </plugins>
  </build>
</project>
"""


def _run_maven(command: list[str], cwd: Path, java_home: Path) -> None:
    env = {**os.environ, "JAVA_HOME": str(java_home)}
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"downloading from Maven Central took over 30 minutes and was stopped. {DOCKER_HINT}") from exc
    if result.returncode != 0:
        raise NodeError(
            f"Maven could not download the OpenSearch artifacts (is Maven Central reachable from here?): "
            f"{_maven_error(result.stdout + result.stderr)}\n{DOCKER_HINT}"
        )


def _maven_error(output: str) -> str:
    """The first real [ERROR] line of Maven's output (not its generic advice)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    for line in lines:
        message = line.removeprefix("[ERROR]").strip()
        if line.startswith("[ERROR]") and message and not message.startswith(("To see", "Re-run", "For more", "[Help")):
            return message.removesuffix("-> [Help 1]").strip()
    return " / ".join(line for line in lines[-5:] if line) or "no output"


# ---- assembly -----------------------------------------------------------------------------------------


def assemble(cache: Path, java_home: Path, step: OnStep) -> Path:
    """Build cache/opensearch-VERSION once, in a temp dir renamed at the end (no half-built node after a crash)."""
    home = node_home(cache)
    if not home.is_dir():
        step("assembling node: core, lang-painless and analysis-common modules, k-NN and neural-search plugins")
        with tempfile.TemporaryDirectory(prefix=".assembling-", dir=cache) as tmp:
            staged = _unzip(cache / "artifacts" / CORE.filename, Path(tmp))
            for module in MODULES:
                _add_module(staged / "modules" / module.name, module, cache / "artifacts")
            for plugin in PLUGINS:
                step(f"installing plugin {plugin.name}")
                _install_plugin(staged, cache / "artifacts" / plugin.filename, java_home)
            os.rename(staged, home)
    return home


def _unzip(archive: Path, target: Path) -> Path:
    """Extract the core zip keeping its Unix modes (zipfile drops them); return the top folder."""
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            extracted = bundle.extract(info, target)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(extracted, mode)
    return target / f"opensearch-{OPENSEARCH_VERSION}"


def _add_module(folder: Path, module: Module, artifacts: Path) -> None:
    folder.mkdir(parents=True)
    for jar in module.jars:
        shutil.copy2(artifacts / jar.filename, folder / jar.filename)
    descriptor = {
        "description": module.description,
        "version": OPENSEARCH_VERSION,
        "name": module.name,
        "classname": module.classname,
        "java.version": "11",
        "opensearch.version": OPENSEARCH_VERSION,
        "custom.foldername": "",
        "extended.plugins": module.extended_plugins,
        "has.native.controller": "false",
    }
    (folder / "plugin-descriptor.properties").write_text("".join(f"{key}={value}\n" for key, value in descriptor.items()))
    if module.security_policy:
        (folder / "plugin-security.policy").write_text(module.security_policy)


def node_env(java_home: Path) -> dict[str, str]:
    """The environment for OpenSearch scripts: our Java, and none of the caller's OpenSearch settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENSEARCH_", "JAVA_TOOL_OPTIONS"))}
    env["OPENSEARCH_JAVA_HOME"] = str(java_home)
    return env


def _install_plugin(home: Path, archive: Path, java_home: Path) -> None:
    command = [str(home / "bin" / "opensearch-plugin"), "install", "--batch", archive.resolve().as_uri()]
    result = subprocess.run(command, cwd=home, env=node_env(java_home), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:])
        raise NodeError(f"installing plugin {archive.name} failed:\n{output}")
